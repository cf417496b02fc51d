"""Qwen3-30B-A3B (MoE, 128 experts / top-8), full fine-tune with the paper's settings on a v5p-64.

v5p-64 = 32 chips (v5p names count TensorCores, 2 per chip) on 8 hosts of 4. Learner mesh expert=8 x
tensor=4: every weight is split 32 ways in training (experts over `expert`, their hidden over
`tensor`, dense weights' model dimension over `expert` and heads over `tensor`). Sampler: one replica
per host (replica_tensor=4: all 128 experts on every chip with their hidden split 4 ways, heads and
the KV pool split 4 ways, 4 KV heads -> 1 per chip), 8 replicas of 24576 pages (1.6M tokens) each.
Context 40k as in the paper (LabeledRows with inputs ~6x the window). Sizes come from
`python -m rao_jax.plan --config configs/qwen3_30b_a3b_v5p.py` (output in docs/tpu.md).

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
        slice_name="v5p-64", model_json="configs/models/qwen3_30b_a3b.json", checkpoint=CHECKPOINT,
        workdir="gs://YOUR_BUCKET/rao/runs/qwen3_30b_a3b_v5p",  # placeholder: launch.sh overrides it
        family="labeled_rows", knobs={"window_tokens": 40960, "context_multiple": 6.0}, context=40960)
    config.engine.replica_tensor = 4
    config.engine.max_rows = 256
    config.engine.num_pages = 24576  # per replica: 1.6M tokens, 38 full 40k contexts (plan: 36 GiB per chip)
    config.train.micro_batch_rows = 8
    config.mesh.data = 1
    config.mesh.fsdp = 1
    config.mesh.expert = 8
    config.mesh.tensor = 4
    return config
