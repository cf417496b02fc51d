"""The smallest end-to-end run, for tests: a few seconds per RL step on 2 CPU cores.

    python -m rao_jax.train --config configs/tiny_test.py --config.workdir=/tmp/rao_tiny
"""

from rao_jax.config import default_config


def get_config():
    config = default_config()
    config.workdir = "runs/tiny_test"
    config.model.config_json = "configs/models/tiny_qwen3.json"
    config.tokenizer.vocab_size = 1024
    config.tokenizer.corpus_tasks = 16
    config.data.knobs = {"preset": "tiny", "per_difficulty": 6}
    config.rollout.tasks_per_step = 1
    config.rollout.group_size = 2
    config.rollout.root_budget = 1
    config.rollout.max_new_tokens = 16
    config.rollout.sandbox_workers = 1
    config.engine.max_rows = 8
    config.engine.num_pages = 256
    config.engine.max_seq_len = 1024
    config.rl.drop_zero_signal = False   # a random policy rarely succeeds: keep its (zero-advantage) nodes
    config.optim.learning_rate = 1e-4
    config.train.steps = 4
    config.train.row_len = 1024
    config.train.micro_batch_rows = 4
    config.train.checkpoint_every = 1
    config.train.export_hf = False
    config.eval.num_tasks = 1
    config.eval.modes = ("recursive",)
    return config
