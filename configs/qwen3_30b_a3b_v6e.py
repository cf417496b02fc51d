"""Qwen3-30B-A3B (MoE, 128 experts / top-8), full fine-tune with the paper's settings on a v6e-64.

v6e-64 = 64 chips (32 GB each) on 16 hosts. Mesh fsdp=2 x expert=8 x tensor=4:
every weight is split 64 ways in training (experts over `expert`, their hidden over `tensor`, dense
weights' model dimension over `expert` and heads over `tensor`); the sampler's weights (SAMPLE_RULES)
32 ways, so the 16 fsdp x expert groups act as 16 sampler replicas with 4 KV heads -> 1 per chip. Context 40k as in
the paper (LabeledRows with inputs ~6x the window). Sizes come from `python -m rao_jax.plan --config
configs/qwen3_30b_a3b_v6e.py` (output in docs/tpu.md).

YOU MUST SET: the checkpoint. `model.init_checkpoint` / `tokenizer.path` name a local folder on every
host holding the Hugging Face checkpoint (config.json, safetensors, tokenizer.json);
tpu_scripts/setup.sh copies it there from `CHECKPOINT_GCS` (tpu_scripts/common.sh) and launch.sh passes
`--config.model.init_checkpoint`, `--config.tokenizer.path` and `--config.workdir` (a gs:// path: every
host writes its checkpoint shards there) from common.sh.
"""

from rao_jax.config import default_config

CHECKPOINT = "/tmp/rao/models/Qwen3-30B-A3B"  # placeholder: setup.sh puts the checkpoint here


def get_config():
    config = default_config()
    config.slice = "v6e-64"
    config.workdir = "gs://YOUR_BUCKET/rao/runs/qwen3_30b_a3b_v6e"  # placeholder: launch.sh overrides it
    config.model.config_json = "configs/models/qwen3_30b_a3b.json"  # planning; the checkpoint's own is used
    config.model.init_checkpoint = CHECKPOINT
    config.model.vocab_from_tokenizer = False
    config.model.param_dtype = "float32"  # fp32 master weights: a 3e-6 step is below bf16 resolution
    config.model.dtype = "bfloat16"
    config.tokenizer.path = CHECKPOINT
    config.tokenizer.template = "qwen3"
    config.data.family = "labeled_rows"
    config.data.knobs = {"window_tokens": 40960, "context_multiple": 6.0}

    # Paper settings: 16 tasks x 8 trees, temperature 1.0, 512 tokens per action, 40k context.
    config.rollout.tasks_per_step = 16
    config.rollout.group_size = 8
    config.rollout.temperature = 1.0
    config.rollout.max_new_tokens = 512
    config.rollout.max_context = 40960
    config.rollout.sandbox_workers = 32
    config.optim.learning_rate = 3e-6
    config.optim.b1 = 0.9
    config.optim.b2 = 0.95
    config.optim.weight_decay = 0.017
    config.optim.grad_clip = 1.0

    config.engine.max_rows = 256
    config.engine.page_size = 64
    config.engine.num_pages = 32768  # 2.1M tokens: 131k (3 full contexts) per sampler replica
    config.engine.max_seq_len = 40960
    config.engine.max_prefill_tokens = 40960
    config.engine.decode_steps = 32
    config.engine.attn_impl = "pallas"
    config.engine.cache_dtype = "bfloat16"

    config.train.steps = 200
    config.train.row_len = 40960
    config.train.micro_batch_rows = 16
    config.train.logprob_chunk = 512
    config.train.checkpoint_every = 10
    config.eval.num_tasks = 64

    config.mesh.data = 1
    config.mesh.fsdp = 2
    config.mesh.expert = 8
    config.mesh.tensor = 4
    return config
