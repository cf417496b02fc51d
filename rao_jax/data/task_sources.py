"""Root tasks of every family from knobs (generators) or files (the official TextCraft tasks), and the JSON
form ``Task`` records take in datasets."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any

from rao_jax.envs import families as registry
from rao_jax.envs.base import Task


def task_to_json(task: Task) -> str:
    """Canonical JSON (sorted keys) so a seed gives identical bytes in every process."""
    return json.dumps(dataclasses.asdict(task), sort_keys=True, separators=(",", ":"))


def task_from_json(text: str | bytes) -> Task:
    try:
        data = json.loads(text)
        return Task(**{field.name: data[field.name] for field in dataclasses.fields(Task)})
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"not a Task record: {err}") from None


def families() -> tuple[str, ...]:
    """The registered task sources (``rao_jax.envs.families``)."""
    return registry.names()


def iter_tasks(family: str, split: str, knobs: Mapping[str, Any]) -> Iterator[Task]:
    """Tasks of ``family`` and ``split`` from its registered source; ``knobs`` are the source's
    (generator fields, counts, file paths; see ``docs/task_families.md``).

    Order: the authors' files in file order; generated families round-robin over their difficulty
    buckets (one task of each bucket in turn), so the first N tasks cover every bucket evenly.

    Raises:
      ValueError: unknown family or knob (named).
    """
    source = registry.get(family)
    try:
        yield from source.tasks(split, dict(knobs))
    except TypeError as err:  # dataclass constructors name the unexpected knob
        raise ValueError(f"bad knob for {family}: {err}") from None
