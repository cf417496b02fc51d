"""The flat baseline of the CPU demo: ``configs/cpu_demo.py`` with ``launch_subagent`` removed.

    python -m rao_jax.train --config configs/cpu_demo_flat.py --config.workdir=runs/cpu_demo_flat

Same world, tasks, tokenizer recipe, model, context window, root budget, warm-start and RL budgets
(steps, rows, trees per step) as the recursive demo; the warm start demonstrates the flat
model-observable oracle (the same lookups and crafts, depth-first in one REPL) and RL samples flat
trees. Evaluation runs the flat mode only.

Measured (2 shared CPU cores, seed 0): 11.5 min wall; warm start 250 x ~1.25 s (nll 0.109), held-out
success 1/60 before RL and 1/60 after (t1 1/10, t2-t6 0/10; 59 of 60 trees overflow the window);
12 of 15 RL steps had no signal (every tree failed) and were skipped.
"""

import importlib.util
from pathlib import Path


def _recursive_demo():
    # Loaded by path: config files are not a package, and the trainer may run from any directory.
    spec = importlib.util.spec_from_file_location("cpu_demo", Path(__file__).with_name("cpu_demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    config = _recursive_demo().get_config()
    config.workdir = "runs/cpu_demo_flat"
    config.rollout.recursive = False
    config.sft.recursive = False
    config.eval.modes = ("flat",)
    return config
