"""The flat baseline of the LabeledRows CPU demo: ``configs/cpu_demo_rows.py`` without ``launch_subagent``.

    python -m rao_jax.train --config configs/cpu_demo_rows_flat.py --config.workdir=runs/cpu_demo_rows_flat

Same tasks, tokenizer recipe, model, 640-token window, budgets, warm-start and RL settings; the warm
start imitates the flat program cells (read the next 8 rows, write their labels, repeat; answer),
whose demonstrator answers early, with rows unread, 3 times in 10. Every row passes through the one
node's context, so inputs from about the window's size up do not fit.
"""

from pathlib import Path

from rao_jax.config import config_file


def get_config():
    config = config_file(Path(__file__).with_name("cpu_demo_rows.py"))
    config.workdir = "runs/cpu_demo_rows_flat"
    config.rollout.recursive = False
    config.sft.recursive = False
    config.eval.modes = ("flat",)
    return config
