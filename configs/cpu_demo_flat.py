"""The flat baseline of the CPU demo: ``configs/cpu_demo.py`` with ``launch_subagent`` removed.

    python -m rao_jax.train --config configs/cpu_demo_flat.py --config.workdir=runs/cpu_demo_flat

Same world, tasks, tokenizer recipe, model, context window (1024 tokens), root budget, warm-start and
RL budgets (steps, rows, trees per step, learning rate, KL penalty) as the recursive demo; the warm
start imitates the flat program oracle (one item expanded per step onto a to-do stack, then one
crafted per step, with the same 0.3 mistake rate) and RL samples flat trees. Evaluation runs the flat
mode only. A flat episode grows with the whole crafting tree (about 300 tokens for a tier-1 target,
700-900 for tier 3, 900-1700 for tier 4 and more beyond), so deeper targets do not fit its window.

Measured (210 held-out tasks per eval) with the current config (KL penalty ``rl.kl_coef`` 0.05,
inherited from the recursive demo since af670b2), seeds 0 / 1: 0.18 -> 0.21 and 0.30 -> 0.47; after
RL tier 4 0 / 4 of 35, tiers 5-6 0. Before af670b2, without the penalty, 30 RL steps (seeds 0 / 1 /
2): 0.19 -> 0.15, 0.27 -> 0.44 (tiers 2 / 3 up to 0.86 / 0.74) and 0.15 -> 0.25, 1 of 630 deeper-tier
tasks solved over the six evaluations; 20 RL steps: warm start 0.10 / 0.18 / 0.17 (tier 3 at most
0.09, tiers 4-6 0), after RL 0.15 / 0.18 / 0.16 (tiers 4-6 still 0). At the recursive demo's former
lr 3e-4 RL collapsed it to 0 everywhere.
"""

from pathlib import Path

from rao_jax.config import config_file


def get_config():
    config = config_file(Path(__file__).with_name("cpu_demo.py"))
    config.workdir = "runs/cpu_demo_flat"
    config.rollout.recursive = False
    config.sft.recursive = False
    config.eval.modes = ("flat",)
    return config
