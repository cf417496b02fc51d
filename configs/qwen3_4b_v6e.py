"""Qwen3-4B-Instruct-2507, full fine-tune with the paper's settings (RAO_SPEC section 4) on a v6e-8.

v6e-8 = 8 chips on one host (32 GB of HBM each). Learner mesh fsdp=2 x tensor=4: the training state
is split 8 ways. Sampler: two replicas of 4 chips (replica_tensor=4: bf16 weights and the KV pool
split 4 ways, 8 KV heads -> 2 per chip), 4096 pages (262k tokens) each. Sizes come from
`python -m rao_jax.plan --config configs/qwen3_4b_v6e.py` (output in docs/tpu.md).

YOU MUST SET: the checkpoint. `model.init_checkpoint` / `tokenizer.path` name a local folder on every
host holding the Hugging Face checkpoint (config.json, safetensors, tokenizer.json);
tpu_scripts/setup.sh copies it there from `CHECKPOINT_GCS` (tpu_scripts/common.sh) and launch.sh passes
`--config.model.init_checkpoint`, `--config.tokenizer.path` and `--config.workdir` (a gs:// path: every
host writes its checkpoint shards there) from common.sh.

The experiment is the paper's TextCraft-Synth protocol on the authors' task files
(``textcraft_paper_protocol``): train on their 852 medium tasks, evaluate on the first 100 val tasks
at temperature 1 (and greedily), root budget 200. `--config configs/qwen3_4b_v6e.py:hard` trains on the
544 hard tasks instead. The tasks come from the `platoon-textcraft` wheel: setup.sh copies it from
`PLATOON_WHEEL_GCS` to `PLATOON_WHEEL` on every host and launch.sh passes
`--config.data.knobs.wheel` (tpu_scripts/common.sh).
"""

from rao_jax.recipes import qwen3_pod_config, textcraft_paper_protocol

CHECKPOINT = "/tmp/rao/models/Qwen3-4B-Instruct-2507"  # placeholder: setup.sh puts the checkpoint here
WHEEL = "/tmp/rao/data/platoon_textcraft-0.3.0-py3-none-any.whl"  # placeholder: setup.sh puts the wheel here


def get_config(train_difficulty: str = "medium"):
    config = qwen3_pod_config(
        slice_name="v6e-8", model_json="configs/models/qwen3_4b.json", checkpoint=CHECKPOINT,
        workdir="gs://YOUR_BUCKET/rao/runs/qwen3_4b_v6e",  # placeholder: launch.sh overrides it
        family="textcraft_official", knobs={"wheel": WHEEL}, context=8192)
    textcraft_paper_protocol(config, wheel=WHEEL, train_difficulty=train_difficulty)
    config.engine.replica_tensor = 4
    config.engine.max_rows = 128
    config.engine.num_pages = 4096  # per replica: 262k tokens (plan: 9 GiB per chip)
    config.train.micro_batch_rows = 4
    config.mesh.data = 1
    config.mesh.fsdp = 2
    config.mesh.expert = 1
    config.mesh.tensor = 4
    return config
