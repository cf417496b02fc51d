"""Qwen3-4B-Instruct-2507, full fine-tune with the paper's settings (RAO_SPEC section 4) on a v5p-16.

v5p-16 = 8 chips (v5p names count TensorCores, 2 per chip) on 2 hosts. Mesh fsdp=2 x tensor=4: the
training state is split 8 ways; the sampler's weights (SAMPLE_RULES) are split 4 ways over `tensor`
(8 KV heads -> 2 per chip) and the two fsdp rows act as two sampler replicas. Sizes come from
`python -m rao_jax.plan --config configs/qwen3_4b_v5p.py` (output in docs/tpu.md).

YOU MUST SET: the checkpoint. `model.init_checkpoint` / `tokenizer.path` name a local folder on every
host holding the Hugging Face checkpoint (config.json, safetensors, tokenizer.json);
tpu_scripts/setup.sh copies it there from `CHECKPOINT_GCS` (tpu_scripts/common.sh) and launch.sh passes
`--config.model.init_checkpoint`, `--config.tokenizer.path` and `--config.workdir` (a gs:// path: every
host writes its checkpoint shards there) from common.sh.
"""

from rao_jax.config import default_config

CHECKPOINT = "/tmp/rao/models/Qwen3-4B-Instruct-2507"  # placeholder: setup.sh puts the checkpoint here


def get_config():
    config = default_config()
    config.slice = "v5p-16"
    config.workdir = "gs://YOUR_BUCKET/rao/runs/qwen3_4b_v5p"  # placeholder: launch.sh overrides it
    config.model.config_json = "configs/models/qwen3_4b.json"  # planning; the checkpoint's own is used
    config.model.init_checkpoint = CHECKPOINT
    config.model.vocab_from_tokenizer = False
    config.model.param_dtype = "float32"  # fp32 master weights: a 3e-6 step is below bf16 resolution
    config.model.dtype = "bfloat16"
    config.tokenizer.path = CHECKPOINT
    config.tokenizer.template = "qwen3"
    config.data.family = "textcraft_synth"
    config.data.knobs = {"preset": "paper"}

    # Paper settings: 16 tasks x 8 trees, temperature 1.0, 512 tokens per action, 8k context.
    config.rollout.tasks_per_step = 16
    config.rollout.group_size = 8
    config.rollout.temperature = 1.0
    config.rollout.max_new_tokens = 512
    config.rollout.max_context = 8192
    config.rollout.sandbox_workers = 32
    config.optim.learning_rate = 3e-6
    config.optim.b1 = 0.9
    config.optim.b2 = 0.95
    config.optim.weight_decay = 0.017
    config.optim.grad_clip = 1.0

    config.engine.max_rows = 256
    config.engine.page_size = 64
    config.engine.num_pages = 16384  # 1M tokens: 512k per sampler replica (plan: 18 GiB per chip)
    config.engine.max_seq_len = 8192
    config.engine.max_prefill_tokens = 8192
    config.engine.decode_steps = 32
    config.engine.attn_impl = "pallas"
    config.engine.cache_dtype = "bfloat16"

    config.train.steps = 200
    config.train.row_len = 8192
    config.train.micro_batch_rows = 16
    config.train.logprob_chunk = 512
    config.train.checkpoint_every = 10
    config.eval.num_tasks = 64

    config.mesh.data = 1
    config.mesh.fsdp = 2
    config.mesh.expert = 1
    config.mesh.tensor = 4
    return config
