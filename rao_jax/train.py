"""RAO training: ``python -m rao_jax.train --config configs/x.py [--config.a.b=v ...]``.

One RL step (RAO_SPEC sections 1-4; see docs in ``rao_jax.config``):

1. draw ``rollout.tasks_per_step`` root tasks from the resumable task stream (every process draws
   the same ones and rolls out its own share of them);
2. roll out ``rollout.group_size`` trees per task, every live node of every tree decoding together
   on this process's sampler replicas (with ``rl.staleness = 0`` the replicas hold the parameters
   being updated: the trees are sampled by the policy being updated);
3. node rewards, shared-root leave-one-out advantages (one vectorised call), packed rows; all G
   trees of a task are on one process, so this is local;
4. the processes agree on a row count, and one optimizer update (CISPO by default) runs over the
   global batch, micro-batched to bound memory; the new parameters are resharded into every
   sampler replica (``weight_sync_s``).

Optionally the run starts with a supervised warm start (``sft.steps``) on oracle demonstrations
packed the same way. Held-out evaluation runs every ``train.eval_every`` steps and at the end.

Resuming: checkpoints (Orbax, atomic) hold the parameters, the optimizer state, the phase and step,
the task stream's cursor and the rng derivation (the sampler is reseeded from ``(seed, step)`` at
every step). Re-running the same command continues from the latest checkpoint: the next step sees
the tasks an uninterrupted run would have seen, and ``metrics.jsonl`` is cut back to the restored
step so it tells one history. Outputs in ``workdir`` (a local folder or a URL, ``rao_jax.paths``):
``checkpoints/``, ``metrics.jsonl``, ``tb/`` (TensorBoard), ``eval/step_N.json``,
``tokenizer.model`` (trained tokenizers), ``hf/`` (export), ``report/``. Process 0 writes all
but the checkpoints, which every process writes its shards of.

Preemption: SIGTERM (on a pod: on any host, through JAX's preemption sync point) makes the run save
a checkpoint at the next step boundary and exit with ``PREEMPTED_EXIT_CODE`` (75); the same command
then resumes from it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import json
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from rao_jax import host_memory, metrics
from rao_jax.agent.sandbox import SandboxError
from rao_jax.checkpoint.orbax_io import CheckpointStore, restore_into, save_model_checkpoint
from rao_jax.config import TrainConfig, from_config_dict, to_dict
from rao_jax.config_libs import advantage_config, loss_config, rl_optim_config, sft_optim_config
from rao_jax.errors import ConfigError
from rao_jax.evaluate import evaluate
from rao_jax.models.qwen3 import Qwen3
from rao_jax.parallel import multihost
from rao_jax.parallel.mesh import batch_shards, process_batch_rows
from rao_jax.parallel.sharding import global_batch
from rao_jax.paths import as_path
from rao_jax.rl.batch import build_batch, pack_padded
from rao_jax.rl.learner import batch_arrays, make_optimizer, reference_logprobs, train_step
from rao_jax.rl.losses import LossConfig
from rao_jax.rl.packing import NodeSequence, PackedBatch, pack_sequences
from rao_jax.runtime import Runtime
from rao_jax.train_log import (
    MetricsLog,
    export_policy,
    family_stats,
    merge_stats,
    scalars,
    tree_stats,
    write_example_trees,
    write_final_report,
)

log = logging.getLogger("rao_jax.train")

PREEMPTED_EXIT_CODE = 75  # sysexits' EX_TEMPFAIL: checkpointed after a preemption notice; run it again


class Preempted(Exception):
    """The run saved a checkpoint after a preemption notice and stopped; re-running resumes."""

    def __init__(self, step: int):
        super().__init__(f"preempted: saved a checkpoint of step {step}; run the same command to resume")
        self.step = step


@dataclasses.dataclass
class _Pending:
    """The rollout of one RL step, in flight."""

    rl_step: int              # 1-based RL step these trees will train
    tasks: list               # every process's tasks of the step
    cursor: dict              # the task stream's cursor right after drawing ``tasks``
    started: float
    trees: asyncio.Future     # this process's share


def sampler_seed(seed: int, global_step: int) -> int:
    """seed * 1_000_003 + global step: the sampler's seed at a step (a resumed run samples as the
    uninterrupted one would)."""
    return seed * 1_000_003 + global_step


def make_optimizers(config: TrainConfig) -> Callable[[Qwen3], tuple]:
    """``model -> (rl optimizer[, sft optimizer])``: what the learner state holds besides the model."""
    configs = [rl_optim_config(config)] + ([sft_optim_config(config)] if config.sft.steps else [])
    return lambda model: tuple(make_optimizer(model, c) for c in configs)


class Trainer:
    """The training loop over one ``Runtime`` (see the module docstring)."""

    def __init__(self, config: TrainConfig, *, progress: bool = True):
        self.config = config
        self.workdir = as_path(config.workdir)
        self.runtime = Runtime.create(config, make_optimizers(config))
        self.model = self.runtime.model
        self.rl_optimizer, *sft = self.runtime.optimizers
        self.sft_optimizer = sft[0] if sft else None
        self.store = CheckpointStore(self.workdir / "checkpoints", max_to_keep=config.train.keep_checkpoints,
                                     async_save=False)
        self.progress = progress and multihost.is_primary()
        self.sft_done = 0
        self.rl_done = 0
        self.ref_model = None
        self._sigterm = False
        self._saved_step: int | None = None
        cursor = self._resume()
        self.stream = self.runtime.tasks.train_iterator(cursor)
        self._cursor = self.stream.state()  # the cursor after the tasks of the last trained step
        self.log = MetricsLog(self.workdir, self.global_step if cursor is not None or self.sft_done else None)
        self.adv = advantage_config(config.rl)
        if multihost.is_primary():
            (self.workdir / "config.json").write_text(json.dumps(to_dict(config), indent=1))

    @property
    def global_step(self) -> int:
        return self.sft_done + self.rl_done

    # ---- checkpoints ------------------------------------------------------------------------

    def _resume(self) -> dict | None:
        step = self.store.latest_step()
        if step is None:
            return None
        meta = self.store.metadata(step)
        phase = meta.get("phase")
        optimizer = self.sft_optimizer if phase == "sft" else self.rl_optimizer
        if optimizer is None:
            raise ConfigError(f"the checkpoint at {self.store.directory} (step {step}) is in the SFT phase but "
                              "sft.steps is 0 in this config")
        try:
            restore_into(self.store, step, self.model, optimizer)
        except (ValueError, KeyError) as err:
            raise ConfigError(f"cannot resume from {self.store.directory} step {step}: its shapes do not match "
                              f"this config's model / optimizer ({err})") from None
        self.sft_done, self.rl_done = meta["sft_step"], meta["rl_step"]
        self._saved_step = step
        self.runtime.learner_updated()
        self.runtime.sync_sampler()   # rollouts after a resume come from the restored policy
        log.info("resumed from %s step %d (sft %d, rl %d)", self.store.directory, step, self.sft_done, self.rl_done)
        if multihost.is_primary():
            print(f"resumed from step {step} (sft {self.sft_done}, rl {self.rl_done})", file=sys.stderr)
        return meta.get("cursor")

    def _checkpoint(self, phase: str) -> None:
        """Saves the current step (every process writes its shards)."""
        optimizer = self.sft_optimizer if phase == "sft" else self.rl_optimizer
        meta = {"phase": phase, "sft_step": self.sft_done, "rl_step": self.rl_done, "cursor": self._cursor,
                "rng": {"seed": self.config.seed, "sampler_seed": sampler_seed.__doc__},
                "config": to_dict(self.config)}
        save_model_checkpoint(self.store, self.global_step, self.model,
                              opt_state=nnx.to_pure_dict(nnx.state(optimizer)), metadata=meta)
        self._saved_step = self.global_step

    def _step_boundary(self, phase: str, every: int, last: bool) -> None:
        """After each step: the regular checkpoint, and on a preemption notice a checkpoint of this
        step and ``Preempted``. Every process passes here with the same step numbers."""
        done = self.sft_done if phase == "sft" else self.rl_done
        if done % every == 0 or last:
            self._checkpoint(phase)
        if self._preempted():
            if self._saved_step != self.global_step:
                self._checkpoint(phase)
            raise Preempted(self.global_step)

    def _preempted(self) -> bool:
        if jax.distributed.is_initialized():
            return multihost.preemption_point(self.global_step)
        return self._sigterm

    # ---- the update -------------------------------------------------------------------------

    @property
    def _micro_rows(self) -> int:
        """Rows per micro-batch: ``train.micro_batch_rows`` rounded up to a multiple of the mesh's batch
        axes. Every batch is padded to a multiple of it, so all micro-batches share one shape."""
        return math.lcm(self.config.train.micro_batch_rows, batch_shards(self.runtime.mesh))

    def _update(self, local: PackedBatch, rows: int, optimizer, *, loss: str) -> dict[str, float]:
        """One optimizer update over a global batch of ``rows`` rows, of which ``local`` holds this
        process's block (``rao_jax.parallel.sharding.global_batch``)."""
        micro = rows // self._micro_rows
        chunk = self.config.train.logprob_chunk
        batch = global_batch(batch_arrays(local), self.runtime.mesh, rows)
        rl = self.config.rl
        cfg = LossConfig(loss="sft") if loss == "sft" else loss_config(rl)
        if rl.staleness == 0:   # nothing samples during a synchronous update: free the replicas' copies
            self.runtime.release_sampler_weights()
        # Under the mesh, MoE blocks run expert-parallel over the `expert` axis (rao_jax.models.moe).
        with jax.set_mesh(self.runtime.mesh):
            if loss != "sft" and rl.kl_coef > 0:
                batch["ref_logp"] = reference_logprobs(self._reference(), batch, chunk, micro)
            out = train_step(self.model, optimizer, batch, loss=cfg, micro_batches=micro, chunk=chunk)
        self.runtime.learner_updated()
        return scalars(out) | {"rows": float(rows)}

    def _process_block(self, packed: PackedBatch) -> PackedBatch:
        """This process's rows of a batch every process holds whole (the warm start's)."""
        start, stop = process_batch_rows(self.runtime.mesh, len(packed.tokens))
        return PackedBatch(**{f.name: getattr(packed, f.name)[start:stop] for f in dataclasses.fields(packed)})

    def _reference(self):
        """The KL reference: the policy as RL began (after any warm start), kept in ``<workdir>/reference``."""
        if self.ref_model is None:
            store = CheckpointStore(self.workdir / "reference", max_to_keep=1, async_save=False)
            self.ref_model = nnx.clone(self.model)
            if store.latest_step() is None:
                save_model_checkpoint(store, 0, self.ref_model)
            else:
                restore_into(store, 0, self.ref_model)
            store.close()
        return self.ref_model

    # ---- phases -----------------------------------------------------------------------------

    async def _demonstrations(self) -> list[NodeSequence]:
        """The warm start's node demonstrations, the same list on every process (each records the
        oracle trees of its share of the tasks; the shares are gathered)."""
        sft = self.config.sft
        tasks = self.runtime.tasks.tasks("train", sft.num_tasks, sft.difficulties)
        trees = await self.runtime.scripted_rollout(multihost.share(tasks), recursive=sft.recursive,
                                                    record_tokens=True)
        mine = [[(np.asarray(n.tokens, np.int32), np.asarray(n.loss_mask, np.float32))
                 for n in tree.nodes if n.tokens and any(n.loss_mask) and len(n.tokens) <= self.config.train.row_len]
                for tree in trees]
        parts = multihost.gather((mine, sum(t.root.success for t in trees)))
        per_tree = multihost.unshare([p[0] for p in parts])
        sequences = [NodeSequence(tokens, mask, np.zeros(len(tokens), np.float32), 1.0)
                     for nodes in per_tree for tokens, mask in nodes]
        if multihost.is_primary():
            print(f"warm start: {len(sequences)} node demonstrations from {len(tasks)} oracle trees "
                  f"({sum(p[1] for p in parts):.0f} solved)", file=sys.stderr)
        if not sequences:
            raise ConfigError("sft: the oracle produced no demonstrations that fit train.row_len")
        return sequences

    async def _sft(self) -> None:
        sft, train = self.config.sft, self.config.train
        demos = await self._demonstrations()
        order = list(range(len(demos)))
        random.Random(self.config.seed).shuffle(order)
        per_row = max(1, train.row_len // max(1, int(np.mean([len(d.tokens) for d in demos]))))
        take = max(1, sft.rows * per_row * 3 // 4)   # demonstrations per step, to fill ~sft.rows rows
        bar = tqdm(total=sft.steps, initial=self.sft_done, desc="warm start", disable=not self.progress)
        while self.sft_done < sft.steps:
            start = (self.sft_done * take) % len(order)
            chosen = [demos[order[(start + i) % len(order)]] for i in range(min(take, len(order)))]
            packed = pack_padded(chosen, train.row_len, self._micro_rows)
            out = self._update(self._process_block(packed), len(packed.tokens), self.sft_optimizer, loss="sft")
            self.sft_done += 1
            bar.update(1)
            bar.set_postfix(nll=f"{out['loss']:.3f}")
            self.log.write({"kind": "sft", "step": self.global_step, **out})
            last = self.sft_done == sft.steps
            self._step_boundary("sft" if not last else "rl", train.checkpoint_every, last)
        bar.close()

    def _launch(self, rl_step: int) -> _Pending:
        """Draws the tasks of RL step ``rl_step`` and starts rolling out this process's share."""
        cfg = self.config
        tasks = self.stream.take(cfg.rollout.tasks_per_step)
        if cfg.rl.staleness == 0:  # synchronous: the sampler's rng depends on the step alone
            self.runtime.sampler.reseed(sampler_seed(cfg.seed, self.sft_done + rl_step - 1))
        rollout = self.runtime.rollout(multihost.share(tasks), cfg.rollout.group_size,
                                       recursive=cfg.rollout.recursive, temperature=cfg.rollout.temperature,
                                       name=f"step{rl_step}")
        return _Pending(rl_step, tasks, self.stream.state(), time.time(), asyncio.ensure_future(rollout))

    async def _finish(self, pending: _Pending) -> dict[str, Any]:
        """Waits for a step's trees, then rewards, advantages and one update over every process's rows."""
        cfg = self.config
        groups = await pending.trees
        rollout_seconds = time.time() - pending.started
        if cfg.train.save_trees:
            from rao_jax.agent.trace import write_trace

            step_dir = self.workdir / "trees" / f"step_{self.sft_done + pending.rl_step}"
            folder = step_dir / f"process_{jax.process_index()}"
            for tree in (t for g in groups for t in g):
                write_trace(tree, folder, include_tokens=True)
        multiple = self._micro_rows // jax.process_count()   # each process holds its share of every micro-batch
        step = build_batch(groups, self.adv, row_len=cfg.train.row_len, row_multiple=multiple)
        # How many updates behind the learner (as it is now, before this step's update) the weights
        # that sampled each node were.
        lags = [self.runtime.learner_version - n.policy_version for g in groups for t in g for n in t.nodes
                if n.policy_version is not None]
        specs = self.runtime.tasks.specs
        if len(specs) > 1:
            family_of = {t.task_id: t.family for t in pending.tasks}
            per_family = family_stats(groups, family_of, [s.task_family for s in specs])
        else:
            per_family = {}
        local_stats = {**step.stats, **tree_stats(groups), **per_family, "policy_lag": float(max(lags, default=0)),
                       "policy_lag_mean": float(np.mean(lags)) if lags else 0.0,
                       "rollout_seconds": rollout_seconds}
        local_rows = 0 if step.batch is None else len(step.batch.tokens)
        rolled_out = [g[0].task_id for g in groups]
        parts = multihost.gather((local_rows, local_stats, rolled_out))
        rows_each = max(p[0] for p in parts)
        stats = merge_stats([p[1] for p in parts])
        stats["rollout_seconds"] = max(p[1]["rollout_seconds"] for p in parts)
        record: dict[str, Any] = {"kind": "train", "step": self.sft_done + pending.rl_step, "rl_step": pending.rl_step,
                                  "tasks": [t.task_id for t in pending.tasks], **stats}
        if len(parts) > 1:   # which process rolled out which tasks (from its trees)
            record["tasks_by_process"] = [p[2] for p in parts]
        if rows_each:
            local = step.batch
            if local_rows != rows_each:   # this process pads to the agreed rows (zero loss mask)
                local = pack_sequences(step.sequences, cfg.train.row_len, num_rows=rows_each)
            start = time.time()
            update = functools.partial(self._update, local, rows_each * jax.process_count(), self.rl_optimizer,
                                       loss=cfg.rl.loss)
            if cfg.rl.staleness:  # in a thread, so the rollouts already in flight keep going
                record.update(await asyncio.get_running_loop().run_in_executor(None, update))
            else:
                record.update(update())
            record["update_seconds"] = time.time() - start
            record["weight_sync_s"] = self.runtime.sync_sampler()
        else:
            record["skipped_update"] = 1.0  # every group was zero-signal: nothing to learn from
        self.rl_done += 1
        self._cursor = pending.cursor
        return record

    async def _evaluate(self) -> dict[str, Any]:
        ev = self.config.eval
        self.runtime.sync_sampler()
        tasks = self.runtime.tasks.eval_tasks(ev)
        summaries, trees = await evaluate(self.runtime, tasks, ev.modes, temperature=ev.temperature,
                                          tag=f"eval{self.global_step}", progress=self.progress)
        if multihost.is_primary():
            out = self.workdir / "eval"
            out.mkdir(parents=True, exist_ok=True)
            (out / f"step_{self.global_step}.json").write_text(metrics.to_json(summaries))
            write_example_trees(out, self.global_step, trees)
            tqdm.write(f"eval at step {self.global_step}:\n{metrics.format_table(summaries)}")
        record = {"kind": "eval", "step": self.global_step}
        for mode, summary in summaries.items():
            record[f"{mode}_success"] = summary["all"]["success"]
            for name, bucket in [*summary.get("by_family", {}).items(), *summary["by_difficulty"].items()]:
                record[f"{mode}_success_{name}"] = bucket["success"]
        self.log.write(record)
        return summaries

    async def run(self) -> dict[str, Any]:
        cfg = self.config
        async with self.runtime.sandboxes():
            if self.sft_done < cfg.sft.steps:
                await self._sft()
                self.runtime.sync_sampler()   # the replicas take the warm-started policy
            if self.rl_done == 0 and cfg.train.eval_every and not self._evaluated_initial():
                await self._evaluate()
            bar = tqdm(total=cfg.train.steps, initial=self.rl_done, desc="RAO", disable=not self.progress)
            last: dict[str, Any] = {}
            if cfg.rl.staleness:
                self.runtime.sampler.reseed(sampler_seed(cfg.seed, self.global_step))
            # Up to 1 + staleness steps' rollouts are in flight: with staleness s, the trees a step
            # trains on were sampled by a policy at most s updates older than the one being updated.
            inflight: collections.deque[_Pending] = collections.deque()
            next_step = self.rl_done + 1
            try:
                while self.rl_done < cfg.train.steps:
                    while next_step <= cfg.train.steps and len(inflight) <= cfg.rl.staleness:
                        inflight.append(self._launch(next_step))
                        next_step += 1
                    last = await self._finish(inflight.popleft())
                    self.log.write(last)
                    bar.update(1)
                    # A step with nothing to train on (e.g. every group had one outcome) has no update and no loss.
                    loss = f"{last['loss']:.3f}" if "loss" in last else "skipped"
                    bar.set_postfix(success=f"{last['success']:.2f}", reward=f"{last['root_reward']:.2f}", loss=loss)
                    self._step_boundary("rl", cfg.train.checkpoint_every, self.rl_done == cfg.train.steps)
                    if cfg.train.eval_every and self.rl_done % cfg.train.eval_every == 0 and \
                            self.rl_done != cfg.train.steps:
                        await self._evaluate()
            finally:
                for pending in inflight:   # a preempted run abandons the steps it had not trained on
                    pending.trees.cancel()
                await asyncio.gather(*(p.trees for p in inflight), return_exceptions=True)
            bar.close()
            summaries = await self._evaluate()
        if cfg.train.export_hf:
            export_policy(self.workdir, cfg, self.model, self.runtime)
        self.close()
        if multihost.is_primary():
            write_final_report(self.workdir, self.global_step)
        return {"last_step": last, "eval": summaries}

    def close(self) -> None:
        """Waits for the checkpoint writer and closes the logs (idempotent)."""
        self.store.close()
        self.log.close()

    def _evaluated_initial(self) -> bool:
        done = (self.workdir / "eval" / f"step_{self.global_step}.json").exists() if multihost.is_primary() else False
        return multihost.gather(done)[0]

    def watch_sigterm(self) -> Callable[[], None]:
        """Makes SIGTERM ask for a checkpoint at the next step boundary (one process; a pod uses
        JAX's preemption sync point instead); returns the function that restores the old handler."""
        if jax.distributed.is_initialized():
            return lambda: None
        old = signal.signal(signal.SIGTERM, lambda signum, frame: setattr(self, "_sigterm", True))
        return lambda: signal.signal(signal.SIGTERM, old)


def train(config: TrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Runs (or resumes) training as configured; returns the last step's metrics and the final eval.

    Raises:
        Preempted: SIGTERM (or a pod's preemption notice) arrived; a checkpoint of the step reached
            was saved.
    """
    trainer = Trainer(config, progress=progress)
    restore = trainer.watch_sigterm()
    try:
        return asyncio.run(trainer.run())
    finally:
        restore()
        trainer.close()


def _define_flags():
    config = config_flags.DEFINE_config_file("config", None, "trainer config file (configs/*.py)", lock_config=True)
    multihost.define_flags()
    flags.DEFINE_bool("progress", True, "show progress bars")
    flags.mark_flag_as_required("config")
    return config


def main(argv: list[str], config_flag) -> None:
    del argv
    host_memory.apply_default()   # before JAX's backend starts (rao_jax.host_memory)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)   # Orbax logs every checkpoint step at INFO
    multihost.initialize_from_flags()
    try:
        config = from_config_dict(config_flag.value)
        train(config, progress=flags.FLAGS.progress)
    except ConfigError as err:
        print(f"train: config error: {err}", file=sys.stderr)
        sys.exit(2)
    except SandboxError as err:
        print(f"train: sandbox: {err}", file=sys.stderr)
        sys.exit(2)
    except Preempted as stop:
        print(f"train: {stop}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    _flag = _define_flags()
    app.run(lambda argv: main(argv, _flag))
