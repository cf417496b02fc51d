"""A run's tasks: each family's built dataset, the resumable training stream and the held-out lists.

``TaskSet(config)`` builds (once, into ``data.data_dir``, by process 0) the array_record dataset of
every family of ``config.data.specs()`` and answers, per task, the settings its family runs under:
the root budget (``budgeted``), the node window (``max_context``) and the oracle's knobs
(``oracle_knobs``). One family streams its tasks as before (cursor ``{"grain": ...}``); several are
mixed by weight (``rao_jax.data.mixture.MixtureStream``, cursor ``{"draws": i, "families": {...}}``).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rao_jax.config import EvalSection, RolloutSection, TrainConfig
from rao_jax.data import datasets
from rao_jax.data.mixture import FamilySpec, MixtureStream, round_robin, spec_lookup
from rao_jax.envs.base import Task
from rao_jax.errors import ConfigError
from rao_jax.parallel import multihost
from rao_jax.paths import as_path


def budgeted(task: Task, rollout: RolloutSection, family_budget: int = 0) -> Task:
    """``task`` with the root budget its trees get: its family's ``root_budget``, else
    ``rollout.root_budget``, else the task's own ``max_steps``."""
    budget = family_budget or rollout.root_budget
    return dataclasses.replace(task, max_steps=budget) if budget else task


class TaskSet:
    """The run's families' built datasets: a resumable training stream and fixed held-out lists."""

    def __init__(self, config: TrainConfig):
        data = config.data
        self.specs: tuple[FamilySpec, ...] = data.specs()
        self.rollout = config.rollout
        self.sft_oracle_knobs = dict(config.sft.oracle_knobs)
        self.data_dir = as_path(data.data_dir) if data.data_dir else as_path(config.workdir) / "data"
        self.shuffle = data.shuffle
        self.seed = config.seed
        self.spec_of = spec_lookup(self.specs)

        def build() -> None:
            for spec in self.specs:
                try:
                    datasets.build(spec.name, self.data_dir, dict(spec.knobs))
                except (ValueError, TypeError) as err:
                    raise ConfigError(f"data: cannot build {spec.name} tasks with knobs {dict(spec.knobs)}: "
                                      f"{err}") from None

        multihost.on_primary(build)   # one process builds; the others wait, then read what it wrote
        self.train_sources = {s.name: datasets.data_source(s.name, self.data_dir, "train", dict(s.knobs))
                              for s in self.specs}
        for spec in self.specs:
            if len(self.train_sources[spec.name]) == 0:
                raise ConfigError(f"data: the {spec.name} train split is empty (knobs {dict(spec.knobs)})")

    @property
    def family(self) -> str:
        """The families' names, joined with '+' (for messages)."""
        return "+".join(s.name for s in self.specs)

    def train_iterator(self, cursor: Mapping[str, Any] | None = None):
        """An endless stream of training tasks (``take(n)``); ``state()`` is its resumable cursor."""
        if len(self.specs) == 1:
            return FamilyTaskStream(self, self.specs[0], cursor)
        if cursor is not None and "families" not in cursor:
            raise ConfigError(f"the checkpoint's task cursor is for one family; this run mixes {self.family}")
        streams = {s.name: FamilyTaskStream(self, s, None if cursor is None else cursor["families"].get(s.name))
                   for s in self.specs}
        return MixtureStream(streams, {s.name: s.weight for s in self.specs}, self.seed, cursor)

    def tasks(self, split: str, limit: int | None = None, difficulties: Sequence[str] = (),
              quota: Mapping[str, int] | None = None) -> list[Task]:
        """The first ``limit`` tasks of ``split`` (of those in ``difficulties``, when given; with ``quota``,
        ``{bucket: n}``, the first ``n`` of each bucket named, per family) in file order: the authors'
        order for their files; generated families come round-robin over difficulty buckets
        (``task_sources.iter_tasks``), so a prefix covers every bucket. Several families take turns, one
        task each (``mixture.round_robin``), so a prefix covers every family evenly."""
        lists = []
        for spec in self.specs:
            source = datasets.data_source(spec.name, self.data_dir, split, dict(spec.knobs))
            out: list[Task] = []
            taken: collections.Counter[str] = collections.Counter()
            for task in datasets.task_loader(source, shuffle=False):
                if limit is not None and len(out) >= limit:
                    break
                if quota is None:
                    keep = not difficulties or task.difficulty in difficulties
                else:
                    keep = taken[task.difficulty] < quota.get(task.difficulty, 0)
                if keep:
                    out.append(task)
                    taken[task.difficulty] += 1
                if quota is not None and all(taken[b] >= n for b, n in quota.items()):
                    break   # every bucket's share is in: the rest of the split is not read
            lists.append(out)
        return round_robin(lists, limit)

    def eval_tasks(self, ev: EvalSection, num_tasks: int | None = None) -> list[Task]:
        """The held-out tasks of ``ev``: the first ``num_tasks`` (default ``ev.num_tasks``) of its buckets,
        or with ``ev.per_difficulty`` the first ``n`` tasks of each bucket named over all families, in the
        order ``tasks`` gives (``num_tasks`` must then be left out)."""
        if not ev.per_difficulty:
            return self.tasks(ev.split, num_tasks or ev.num_tasks, ev.difficulties)
        if num_tasks is not None:
            raise ConfigError("eval.per_difficulty fixes the number of held-out tasks: leave num_tasks out")
        wanted = dict(ev.per_difficulty)
        taken: collections.Counter[str] = collections.Counter()
        out = []
        for task in self.tasks(ev.split, quota=wanted):   # families take turns: trim to the shares overall
            if taken[task.difficulty] < wanted[task.difficulty]:
                taken[task.difficulty] += 1
                out.append(task)
        short = {b: f"{taken[b]} of {n}" for b, n in wanted.items() if taken[b] < n}
        if short:
            raise ConfigError(f"eval.per_difficulty: the {ev.split} split holds too few tasks in {short}")
        return out

    def budgeted(self, task: Task) -> Task:
        """``task`` with its family's root budget (``budgeted``)."""
        return budgeted(task, self.rollout, self.spec_of(task).root_budget)

    def max_context(self, task: Task) -> int | None:
        """Its nodes' window cap in tokens: the family's ``max_context``, else ``rollout.max_context``
        (None: only the engine's and the model's limits)."""
        return self.spec_of(task).max_context or self.rollout.max_context or None

    def oracle_knobs(self, task: Task) -> dict[str, Any]:
        """Its family's oracle knobs, else ``sft.oracle_knobs``."""
        knobs = self.spec_of(task).oracle_knobs
        return dict(self.sft_oracle_knobs if knobs is None else knobs)


class FamilyTaskStream:
    """One family's training tasks in a seeded order over endless epochs, filtered by difficulty; resumable."""

    def __init__(self, tasks: TaskSet, spec: FamilySpec, cursor: Mapping[str, Any] | None):
        loader = datasets.task_loader(tasks.train_sources[spec.name], seed=tasks.seed, shuffle=tasks.shuffle,
                                      num_epochs=None)
        self.spec = spec
        self._keep = set(spec.train_difficulties)
        self._it = iter(loader)
        if cursor is not None:
            if "grain" not in cursor:
                raise ConfigError(f"the checkpoint's task cursor mixes families {sorted(cursor.get('families', {}))}; "
                                  f"this run trains on {spec.name} alone")
            self._it.set_state(cursor["grain"].encode() if isinstance(cursor["grain"], str) else cursor["grain"])

    def take(self, n: int) -> list[Task]:
        out: list[Task] = []
        misses = 0
        while len(out) < n:
            task = next(self._it)
            if not self._keep or task.difficulty in self._keep:
                out.append(task)
                misses = 0
            else:
                misses += 1
                if misses > 100_000:
                    raise ConfigError(f"{self.spec.name}: train_difficulties {sorted(self._keep)} match no "
                                      "training task (data.train_difficulties, or its data.families entry)")
        return out

    def state(self) -> dict:
        state = self._it.get_state()
        return {"grain": state.decode() if isinstance(state, bytes) else state}
