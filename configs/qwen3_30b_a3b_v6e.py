"""Qwen3-30B-A3B (MoE, 128 experts / top-8), full fine-tune with the paper's settings on a v6e-64.

v6e-64 = 64 chips (32 GB each) on 16 hosts of 4. Learner mesh fsdp=2 x expert=8 x tensor=4: every
weight is split 64 ways in training (experts over `expert`, their hidden over `tensor`, dense weights'
model dimension over `fsdp` x `expert` and heads over `tensor`). Sampler: one replica per host
(replica_tensor=4: 15 GB of bf16 weights per chip), 16 replicas of 1536 pages (98k tokens, 2.4 full
40k contexts) each: the 30B on 32 GB chips is tight: the plan leaves 0.9 GiB over its 10% reserve and
warns (under 2 GiB is inside its error). If the first steps run out of memory, lower engine.num_pages
(1024 frees 0.75 GiB per chip) or use v6e-128, which doubles the pool (docs/tpu.md).
Context 40k as in the paper (LabeledRows with inputs ~6x the window). Sizes come from
`python -m rao_jax.plan --config configs/qwen3_30b_a3b_v6e.py` (output in docs/tpu.md).

YOU MUST SET: the checkpoint. `model.init_checkpoint` / `tokenizer.path` name a local folder on every
host holding the Hugging Face checkpoint (config.json, safetensors, tokenizer.json);
tpu_scripts/setup.sh copies it there from `CHECKPOINT_GCS` (tpu_scripts/common.sh) and launch.sh passes
`--config.model.init_checkpoint`, `--config.tokenizer.path` and `--config.workdir` (a gs:// path: every
host writes its checkpoint shards there) from common.sh.
"""

from rao_jax.recipes import qwen3_pod_config

CHECKPOINT = "/tmp/rao/models/Qwen3-30B-A3B"  # placeholder: setup.sh puts the checkpoint here


def get_config():
    config = qwen3_pod_config(
        slice_name="v6e-64", model_json="configs/models/qwen3_30b_a3b.json", checkpoint=CHECKPOINT,
        workdir="gs://YOUR_BUCKET/rao/runs/qwen3_30b_a3b_v6e",  # placeholder: launch.sh overrides it
        family="labeled_rows", knobs={"window_tokens": 40960, "context_multiple": 6.0}, context=40960)
    config.engine.replica_tensor = 4
    config.engine.max_rows = 128
    config.engine.num_pages = 1536  # per replica: 98k tokens (plan: 2.3 GiB per chip)
    config.train.micro_batch_rows = 16
    config.mesh.data = 1
    config.mesh.fsdp = 2
    config.mesh.expert = 8
    config.mesh.tensor = 4
    return config
