"""Family registry: open the right ``Episode`` for a ``Task`` record."""

from __future__ import annotations

from rao_jax.envs import chain_hop, labeled_rows
from rao_jax.envs.base import Episode, Task
from rao_jax.envs.crafting import episode_from_task

FAMILIES = ("textcraft_synth", "textcraft_minecraft", labeled_rows.FAMILY, chain_hop.FAMILY)


def open_episode(task: Task) -> Episode:
    """A fresh episode (world state) for one delegation tree on ``task``.

    Raises:
      ValueError: unknown family or a malformed task spec (the message names the task and the field).
    """
    if task.family in ("textcraft_synth", "textcraft_minecraft"):
        return episode_from_task(task)
    if task.family == labeled_rows.FAMILY:
        return labeled_rows.RowsEpisode(task)
    if task.family == chain_hop.FAMILY:
        return chain_hop.HopEpisode(task)
    raise ValueError(f"task {task.task_id}: unknown family {task.family!r}; known: {FAMILIES}")
