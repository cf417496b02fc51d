"""The flat baseline of the LabeledRows CPU demo: ``configs/cpu_demo_rows.py`` without ``launch_subagent``.

    python -m rao_jax.train --config configs/cpu_demo_rows_flat.py --config.workdir=runs/cpu_demo_rows_flat

Same tasks, tokenizer recipe, model, 640-token window, budgets, warm-start and RL settings; the warm
start imitates the flat program cells (start the rows, then label each row as it is printed, one a
turn; count and answer), whose demonstrator answers early, with rows unread, 15 times in 100 after every
8 rows. Every row passes through the one node's context, about 30 tokens a row with its label cell
after a prompt of about 200, so even a 1x input (24 rows) does not fit the window. Measured (2 cores,
each run alone, about 8 minutes): docs/cpu_demo_rows/README.md.
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
