"""The flat baseline of the ChainHop CPU demo: ``configs/cpu_demo_hop.py`` without ``launch_subagent``.

    python -m rao_jax.train --config configs/cpu_demo_hop_flat.py --config.workdir=runs/cpu_demo_hop_flat

Same tasks, tokenizer recipe, model, 1024-token window, budgets, warm-start and RL settings; the warm
start imitates the flat program cells (print the first document with numbered sentences; label its
sentences, which takes the hop's name and prints the next document; after the last hop the answer).
Every document of every chain passes through the one node's context.
"""

from pathlib import Path

from rao_jax.config import config_file


def get_config():
    config = config_file(Path(__file__).with_name("cpu_demo_hop.py"))
    config.workdir = "runs/cpu_demo_hop_flat"
    config.rollout.recursive = False
    # The flat first cell (define look and pick, print the first document) is about 250 tokens; the
    # recursive run's cells are at most about 115, so its cap of 160 never binds.
    config.rollout.max_new_tokens = 320
    config.sft.recursive = False
    config.eval.modes = ("flat",)
    return config
