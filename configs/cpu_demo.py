"""The CPU demo: a tiny from-scratch policy learns to delegate in TextCraft-Synth (issue 7).

    python -m rao_jax.train --config configs/cpu_demo.py --config.workdir=runs/cpu_demo

World: the tiny TextCraft-Synth world (4 domains x 10 items per tier, tiers 0-6) with one difficulty
bucket per target tier (``t1`` .. ``t6``), a root budget of 200 steps, a 1024-token context window
per node. Warm start and RL see only targets of tiers 1-3; evaluation covers every tier, so tiers 4-6
are deeper than anything trained on.

Policy: a 4-layer, 128-wide Qwen3-shaped model with its own 1024-piece sentencepiece tokenizer.
``rollout.goal_variables`` puts each node's goal and budget in its REPL namespace, and the warm start
imitates ``oracles.ProgramCraftOracle`` (style "program"): every action is one of a few fixed program
cells (look the recipe up and print how many ingredients are crafted; delegate them, one sub-agent
each, in one ``asyncio.gather``; craft and finish), so the model never copies names or numbers (a
model this small, trained for minutes, does not learn to copy them; see the issue notes). The
demonstrator is imperfect on purpose (``mistake_rate`` 0.3): where it should delegate it crafts at
once (and fails) three times in ten, so the warm-started policy delegates too rarely and RL has a
decision to learn: delegate exactly when the lookup printed a non-zero count.

RL: 30 steps of 8 tasks x 4 trees (CISPO, lr 1e-4: at 3e-4 seed 0 learned but seed 1 collapsed after
five good steps, training success 0.97 -> 0.12 with entropy rising, and lr 1e-3 collapsed within 4
steps), with a KL penalty to the warm-start policy (``rl.kl_coef`` 0.05, k3 estimator): without it
two of six runs failed (one learned late, one collapsed with token entropy 0.05 -> 4.3; see
docs/cpu_demo/rl30/README.md). 20 steps were too few for a slow starter (docs/cpu_demo/rl20).
Rollouts and evaluation sample at temperature 1 with top-p 0.95 (nucleus sampling keeps a confident
token from being corrupted by the tail); evaluation: 210 held-out tasks, 35 per tier, before and
after RL. The flat baseline is ``configs/cpu_demo_flat.py``: the same budget, context window, warm
start recipe (flat program cells: expand one item per step, then craft one per step) and RL.

Measured (210 held-out tasks per eval; README): held-out success before -> after RL, seeds 0 / 1 / 2:
0.27 -> 0.81, 0.45 -> 0.90, 0.46 -> 0.86; deeper than trained (t4-t6 pooled) after RL 0.65 / 0.81 /
0.75; token entropy 0.03-0.10 and KL to the warm start at most 0.03 throughout. Seed 0 is README
command 1: 28 min 23 s alone on 2 cores with the install.
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
    config.rl.kl_coef = 0.05   # k3 penalty to the warm-start policy: keeps token entropy from running away
    config.optim.learning_rate = 1e-4
    config.optim.weight_decay = 0.0
    config.train.steps = 30
    config.train.row_len = 1024
    config.train.micro_batch_rows = 8
    config.train.logprob_chunk = 512
    config.train.checkpoint_every = 50
    config.train.eval_every = 30    # evaluate before RL and after it, not in between
    config.train.export_hf = True
    config.eval.num_tasks = 210
    config.eval.modes = ("recursive",)
    config.eval.temperature = 1.0
    return config
