"""Training on several task families at once: each family's settings and the weighted task stream.

``data.families`` maps registered family names (``rao_jax.envs.families``) to entries, every key
optional::

    config.data.families = {
        "textcraft_synth": {"weight": 2.0, "knobs": {"preset": "tiny"}, "train_difficulties": ["t1", "t2"]},
        "labeled_rows": {"weight": 1.0, "knobs": {"window_tokens": 512}, "max_context": 512},
        "chain_hop": {"root_budget": 40, "oracle_knobs": {}},
    }

One policy and one tokenizer serve all of them. An empty ``data.families`` is the one family of
``data.family`` / ``data.knobs`` / ``data.train_difficulties`` (``single``). ``MixtureStream`` draws the
training tasks: draw ``i`` picks a family with probability weight / total from a seeded generator of
its own (``random.Random(f"{seed}/mixture/{i}")``), then takes that family's next task; the cursor is
the draw count and each family's own cursor, so a resumed run continues the same sequence.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from rao_jax.envs import families as registry
from rao_jax.envs.base import Task
from rao_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """One family of a run.

    Attributes:
        name: a registered family (``rao_jax.envs.families``).
        weight: share of the training draws (relative to the other families' weights; > 0).
        knobs: the family's generator knobs (docs/task_families.md).
        root_budget: its root step budget (0: ``rollout.root_budget``, else each task's own ``max_steps``).
        max_context: its nodes' window in tokens (0: ``rollout.max_context``, else the engine's).
        train_difficulties: RL trains only on these of its buckets (empty: all).
        oracle_knobs: keyword arguments of its oracle (None: ``sft.oracle_knobs``).
    """

    name: str
    weight: float = 1.0
    knobs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    root_budget: int = 0
    max_context: int = 0
    train_difficulties: tuple[str, ...] = ()
    oracle_knobs: Mapping[str, Any] | None = None

    def __post_init__(self):
        where = f"data.families.{self.name}"
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ConfigError(f"{where}.weight must be a finite number > 0, got {self.weight}")
        for key in ("root_budget", "max_context"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key} must be >= 0 (0 = the rollout's), got {getattr(self, key)}")

    @property
    def task_family(self) -> str:
        """The ``Task.family`` its tasks carry."""
        return registry.get(self.name).task_family


def check_families(specs: Sequence[FamilySpec]) -> tuple[FamilySpec, ...]:
    """``specs`` (``data.families``, built by ``rao_jax.config``) sorted by name: a ConfigDict sorts its
    keys anyway, and the draws depend on the order.

    Raises:
        ConfigError: two families whose tasks carry the same ``Task.family`` (a task could not tell
            which family's settings it runs under).
    """
    specs = tuple(sorted(specs, key=lambda spec: spec.name))
    seen: dict[str, str] = {}
    for spec in specs:
        other = seen.setdefault(spec.task_family, spec.name)
        if other != spec.name:
            raise ConfigError(f"data.families: {other} and {spec.name} both give {spec.task_family!r} tasks; "
                              "train on one of them")
    return specs


def single(name: str, knobs: Mapping[str, Any], train_difficulties: Sequence[str]) -> tuple[FamilySpec, ...]:
    """The one-family run of ``data.family`` (weight 1, the rollout's budget and window)."""
    return (FamilySpec(name, knobs=dict(knobs), train_difficulties=tuple(train_difficulties)),)


class FamilyStream(Protocol):
    """One family's endless training tasks with a resumable cursor."""

    def take(self, n: int) -> list[Task]: ...

    def state(self) -> dict: ...


class MixtureStream:
    """Training tasks of several families, each draw picking a family by weight (see the module
    docstring).

    Args:
        streams: ``family name -> stream`` (``FamilyStream``), in the run's family order (``check_families``).
        weights: ``family name -> weight`` (> 0).
        seed: the run's seed.
        cursor: a ``state()`` of an earlier stream of the same families (None: start).
    """

    def __init__(self, streams: Mapping[str, FamilyStream], weights: Mapping[str, float], seed: int,
                 cursor: Mapping[str, Any] | None = None):
        if set(streams) != set(weights) or not streams:
            raise ValueError(f"streams {sorted(streams)} and weights {sorted(weights)} must name the same families")
        self.streams = dict(streams)
        self.names = list(streams)
        total = sum(weights[n] for n in self.names)
        self._edges = [sum(weights[n] for n in self.names[:k + 1]) / total for k in range(len(self.names))]
        self.seed = seed
        self.draws = 0
        if cursor is not None:
            if set(cursor.get("families", {})) != set(self.names):
                raise ConfigError(f"the checkpoint's task cursor is for families {sorted(cursor.get('families', {}))}, "
                                  f"this run trains on {sorted(self.names)}")
            self.draws = int(cursor["draws"])

    def family_of_draw(self, index: int) -> str:
        """The family that draw ``index`` takes a task from (a function of the seed and index only)."""
        u = random.Random(f"{self.seed}/mixture/{index}").random()
        return next((n for n, edge in zip(self.names, self._edges, strict=True) if u < edge), self.names[-1])

    def take(self, n: int) -> list[Task]:
        out = []
        for _ in range(n):
            out.extend(self.streams[self.family_of_draw(self.draws)].take(1))
            self.draws += 1
        return out

    def state(self) -> dict:
        return {"draws": self.draws, "families": {name: s.state() for name, s in self.streams.items()}}


def round_robin(lists: Sequence[Sequence[Task]], limit: int | None = None) -> list[Task]:
    """One task of each list in turn (a list that runs out drops out), at most ``limit``: the first N
    tasks of a held-out set cover every family evenly."""
    out: list[Task] = []
    for row in range(max(map(len, lists), default=0)):
        out.extend(tasks[row] for tasks in lists if row < len(tasks))
    return out if limit is None else out[:limit]


def spec_lookup(specs: Sequence[FamilySpec]) -> Callable[[Task], FamilySpec]:
    """``task -> its FamilySpec`` (by ``Task.family``); a task of no listed family is an error."""
    by_family = {spec.task_family: spec for spec in specs}

    def lookup(task: Task) -> FamilySpec:
        try:
            return by_family[task.family]
        except KeyError:
            raise ValueError(f"task {task.task_id} is a {task.family!r} task; this run's families give "
                             f"{sorted(by_family)}") from None

    return lookup
