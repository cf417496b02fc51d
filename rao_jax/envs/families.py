"""The task-family registry: one ``Family`` per source of root tasks (``config.data.family``).

A family is its task source (``tasks(split, knobs)``: the root tasks of a split, in order, from
generator knobs or files) and how a task's ``Episode`` opens. The data build, the trainer's config
check, ``open_episode`` and the statistics look families up here; the scripted experts register their
oracles per ``Task.family`` in ``rao_jax.agent.oracles``. A new family is one module plus a
``register(Family(...))`` call (and ``register_oracle`` for an oracle).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from rao_jax.envs import chain_hop, crafting, labeled_rows, textcraft_official, textcraft_synth
from rao_jax.envs.base import Episode, Task


@dataclasses.dataclass(frozen=True)
class Family:
    """A source of root tasks.

    Attributes:
      name: the ``config.data.family`` / ``python -m rao_jax.data.build --family`` value.
      tasks: ``(split, knobs) -> tasks`` in their order; a knob it does not know raises TypeError or
        ValueError naming it (knobs arrive as a fresh dict the source may consume).
      episode: a fresh ``Episode`` for one delegation tree on a task.
      task_family: the ``Task.family`` its tasks carry (default: ``name``); several sources may share one
        (the authors' TextCraft-Synth files give ``textcraft_synth`` tasks).
    """

    name: str
    tasks: Callable[[str, dict[str, Any]], Iterable[Task]]
    episode: Callable[[Task], Episode]
    task_family: str = ""

    def __post_init__(self):
        if not self.task_family:
            object.__setattr__(self, "task_family", self.name)


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Adds ``family`` (replacing one of the same name)."""
    _REGISTRY[family.name] = family
    return family


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str) -> Family:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; known: {names()}") from None


def open_episode(task: Task) -> Episode:
    """A fresh episode (world state) for one delegation tree on ``task``.

    Raises:
      ValueError: unknown family or a malformed task spec (the message names the task and the field).
    """
    for family in _REGISTRY.values():
        if family.task_family == task.family:
            return family.episode(task)
    known = sorted({f.task_family for f in _REGISTRY.values()})
    raise ValueError(f"task {task.task_id}: unknown family {task.family!r}; known: {tuple(known)}")


register(Family("textcraft_synth", textcraft_synth.tasks_from_knobs, crafting.episode_from_task))
register(Family("textcraft_official", textcraft_official.synth_tasks_from_knobs, crafting.episode_from_task,
                task_family=textcraft_official.SYNTH_FAMILY))
register(Family("textcraft_minecraft", textcraft_official.minecraft_tasks_from_knobs, crafting.episode_from_task))
register(Family(labeled_rows.FAMILY, labeled_rows.tasks_from_knobs, labeled_rows.RowsEpisode))
register(Family(chain_hop.FAMILY, chain_hop.tasks_from_knobs, chain_hop.HopEpisode))
