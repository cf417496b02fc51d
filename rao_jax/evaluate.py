"""Held-out evaluation: recursive mode, flat mode and the oracle, tabulated by difficulty and depth.

    python -m rao_jax.evaluate --config configs/x.py --checkpoint runs/x/checkpoints [--step N]
        [--modes recursive,recursive_greedy,flat,oracle] [--num_tasks 200] [--out results.json]

Loads the policy saved at ``--checkpoint`` (the trainer's checkpoint folder; default step: the
latest), rolls out one tree per held-out task in each mode (at ``eval.temperature``; the ``_greedy``
modes at 0)
and prints RAO_SPEC section 6's table: success (with a 95% interval), reward, tree depth, children
per node, parallel fraction, model calls vs critical path, tokens, wall clock and context overflows,
per difficulty; the same figures go to a JSON file. The trainer calls ``evaluate`` every
``train.eval_every`` steps.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags
from tqdm import tqdm

from rao_jax import host_memory, metrics
from rao_jax.agent.sandbox import SandboxError
from rao_jax.agent.tree import TreeResult
from rao_jax.config import EVAL_MODES, TrainConfig, from_config_dict
from rao_jax.envs.base import Task
from rao_jax.errors import ConfigError
from rao_jax.parallel import multihost
from rao_jax.paths import as_path


async def rollout_mode(runtime, tasks: Sequence[Task], mode: str, temperature: float, tag: str,
                       progress: bool = False) -> list[TreeResult]:
    """One tree per task in ``mode`` (``recursive``, ``flat``, either with ``_greedy``: decoded at
    temperature 0 instead of ``temperature``, or ``oracle``: each task's family's oracle with that
    family's oracle knobs, else ``sft.oracle_knobs``: the one the warm start imitates); ``progress``
    shows a bar of finished trees with their running success rate."""
    label = mode
    if mode.endswith("_greedy"):
        mode, temperature = mode.removesuffix("_greedy"), 0.0
    if mode == "oracle":  # the oracle the warm start imitates, when one is configured
        return await runtime.scripted_rollout(tasks, recursive=True)
    bar = tqdm(total=len(tasks), desc=f"eval {label}", leave=False, disable=not progress)
    solved, finished = [0.0], [0]

    def done(tree: TreeResult) -> None:
        solved[0] += tree.root.success
        finished[0] += 1
        bar.update(1)
        bar.set_postfix(success=f"{solved[0] / finished[0]:.2f}")

    try:
        groups = await runtime.rollout(tasks, 1, recursive=mode == "recursive", temperature=temperature,
                                       name=f"{tag}-{label}", on_tree_end=done)
    finally:
        bar.close()
    return [g[0] for g in groups]


async def evaluate(runtime, tasks: Sequence[Task], modes: Sequence[str], *, temperature: float,
                   tag: str = "eval", progress: bool = False) -> tuple[dict[str, Any], dict[str, list[TreeResult]]]:
    """Summaries per mode (``metrics.summarize``) and the trees behind them.

    On several processes each rolls out its share of ``tasks`` on its own replicas; the trees (their
    token lists dropped, counts kept) are then gathered, so every process returns the same summaries
    and trees, in the order of ``tasks``. A collective: every process calls it.
    """
    bad = [m for m in modes if m not in EVAL_MODES]
    if bad:
        raise ConfigError(f"unknown eval mode(s) {bad}; use {', '.join(EVAL_MODES)}")
    rl = runtime.config.rl
    by_id = {t.task_id: t for t in tasks}
    summaries, trees = {}, {}
    for mode in modes:
        start = time.time()
        mine = await rollout_mode(runtime, multihost.share(list(tasks)), mode, temperature, tag, progress)
        if jax.process_count() == 1:
            trees[mode] = mine
        else:
            trees[mode] = multihost.unshare(multihost.gather([t.without_tokens() for t in mine]))
        summaries[mode] = metrics.summarize(trees[mode], by_id, bonus=rl.bonus, lam=rl.lam, beta=rl.beta,
                                            cap=rl.cap)
        summaries[mode]["eval_seconds"] = time.time() - start
    return summaries, trees


def _restore_policy(runtime, checkpoint: str, step: int | None) -> int:
    from rao_jax.checkpoint.orbax_io import CheckpointStore, restore_into

    with CheckpointStore(checkpoint, create=False) as store:
        restored = restore_into(store, step, runtime.model)
    runtime.learner_updated()
    runtime.sync_sampler()   # the replicas sample the restored policy
    return restored.step


def run(config: TrainConfig, checkpoint: str | None, *, step: int | None = None, modes: Sequence[str] = (),
        num_tasks: int | None = None, out: str | None = None) -> dict[str, Any]:
    from rao_jax.runtime import Runtime

    runtime = Runtime.create(config)
    loaded = _restore_policy(runtime, checkpoint, step) if checkpoint else None
    ev = config.eval
    tasks = runtime.tasks.eval_tasks(ev, num_tasks)


    async def main():
        async with runtime.sandboxes():
            return await evaluate(runtime, tasks, modes or ev.modes, temperature=ev.temperature, progress=True)

    summaries, _ = asyncio.run(main())
    if multihost.is_primary():
        print(f"checkpoint step {loaded} · {len(tasks)} {ev.split} tasks · temperature {ev.temperature}")
        print(metrics.format_table(summaries))
        name = f"eval_step{loaded if loaded is not None else 'init'}.json"
        path = as_path(out) if out else as_path(config.workdir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(metrics.to_json(summaries))
        print(f"wrote {path}")
    return summaries


def _define_flags():
    config = config_flags.DEFINE_config_file("config", None, "trainer config file (configs/*.py)", lock_config=True)
    flags.DEFINE_string("checkpoint", None, "checkpoint folder (the trainer's <workdir>/checkpoints); none: the "
                        "initial policy")
    flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
    flags.DEFINE_list("modes", [], "modes to evaluate: recursive, flat, recursive_greedy, flat_greedy, oracle "
                      "(default: eval.modes)")
    flags.DEFINE_integer("num_tasks", None, "held-out tasks (default: eval.num_tasks)")
    flags.DEFINE_string("out", None, "JSON output (default: <workdir>/eval_step<N>.json)")
    multihost.define_flags()
    flags.mark_flag_as_required("config")
    return config


def main(argv: list[str], config_flag) -> None:
    del argv
    host_memory.apply_default()   # before JAX's backend starts (rao_jax.host_memory)
    FLAGS = flags.FLAGS
    absl_logging.set_verbosity(absl_logging.WARNING)
    multihost.initialize_from_flags()
    try:
        config = from_config_dict(config_flag.value)
        run(config, FLAGS.checkpoint, step=FLAGS.step, modes=FLAGS.modes, num_tasks=FLAGS.num_tasks, out=FLAGS.out)
    except (ConfigError, FileNotFoundError, SandboxError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _flag = _define_flags()
    app.run(lambda argv: main(argv, _flag))
