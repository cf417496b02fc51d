"""The CPU demo: a tiny from-scratch policy learns to delegate in TextCraft-Synth (issue 7).

    python -m rao_jax.train --config configs/cpu_demo.py --config.workdir=runs/cpu_demo

World: the tiny TextCraft-Synth world (2 domains, tiers 0-6) with one difficulty bucket per target
tier (``t1`` .. ``t6``), a root budget of 200 steps. Training (warm start and RL) sees only targets of
tiers 1-3; evaluation covers every tier, so tiers 4-6 are deeper than anything trained on.

Warm start: supervised on trees of the model-observable oracle (``oracles.ObservableCraftOracle``:
look the recipe up with ``get_info``, launch one sub-agent per crafted ingredient with an equal share
of the budget, craft, finish), whose every action is a function of what the node sees, so the model
can imitate it. Then RAO RL. The flat baseline is ``configs/cpu_demo_flat.py``: the same budget, a
flat warm start and flat RL, and a context window its deep tasks do not fit.

Measured on 2 shared CPU cores (load ~2-4 from other jobs), seed 0: 19.5 min wall in all. Warm start
250 steps x ~2.2 s (nll 0.036); eval of 60 held-out tasks (10 per tier) ~1.5 min recursive + ~1 min
flat, before and after RL; RL 15 steps x ~22 s (rollout 11-25 s, update 1-13 s). Held-out success:
observable oracle 100% on t1-t5, ~80% on t6 (base material or budget short); warm start 12/60
(t1 10/10, t2 2/10, t3-t6 0/10); after RL (lr 5e-5) 14/60 (t1 10/10, t2 2/10, t3 2/10, t4-t6 0/10),
within noise; with lr 3e-4, 10/60. Flat mode of this policy: 0/60. The warm start does not yet
generalise past tier 2, so RL has little to work with and the deeper-than-trained tiers stay at 0.
"""

from rao_jax.config import default_config

TIERS = tuple((f"t{t}", t, t) for t in range(1, 7))
TRAINED = ("t1", "t2", "t3")


def get_config():
    config = default_config()
    config.workdir = "runs/cpu_demo"
    config.model.config_json = "configs/models/tiny_qwen3.json"
    config.tokenizer.vocab_size = 1024
    config.tokenizer.corpus_tasks = 48
    # The tiny world widened to 4 domains x 10 items per tier: with few distinct items a tiny model
    # memorises whole demonstrations instead of learning to copy names and numbers from its context.
    config.data.knobs = {"preset": "tiny", "per_difficulty": 100, "difficulties": [list(d) for d in TIERS],
                         "items_per_tier": 10, "domains": ["metal", "wood", "stone", "glass"],
                         "inventory_buffer": 1.0, "max_steps": 200}
    config.data.train_difficulties = TRAINED

    config.rollout.brief_prompt = True
    config.rollout.goal_variables = True
    config.rollout.recursive = True
    config.rollout.tasks_per_step = 8
    config.rollout.group_size = 4
    config.rollout.temperature = 1.0
    config.rollout.top_p = 0.95   # nucleus sampling: a confident token is not corrupted by the tail
    config.rollout.max_new_tokens = 128
    config.rollout.sandbox_workers = 2
    config.engine.max_rows = 32
    config.engine.num_pages = 2048
    config.engine.page_size = 16
    config.engine.max_seq_len = 1024
    config.engine.decode_steps = 16

    config.sft.steps = 80
    config.sft.learning_rate = 3e-3
    config.sft.rows = 8
    config.sft.num_tasks = 300
    config.sft.difficulties = TRAINED
    config.sft.recursive = True
    config.sft.oracle_knobs = {"style": "program", "goal_variables": True, "mistake_rate": 0.3}

    config.rl.drop_zero_signal = True
    config.optim.learning_rate = 3e-4
    config.optim.weight_decay = 0.0
    config.train.steps = 20
    config.train.row_len = 1024
    config.train.micro_batch_rows = 8
    config.train.logprob_chunk = 512
    config.train.checkpoint_every = 50
    config.train.eval_every = 20
    config.train.export_hf = True
    config.eval.num_tasks = 210
    config.eval.modes = ("recursive",)
    config.eval.temperature = 1.0
    return config
