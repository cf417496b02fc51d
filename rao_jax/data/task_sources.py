"""Root tasks of every family from knobs (generators) or files (the official TextCraft tasks), and the JSON
form ``Task`` records take in datasets."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from rao_jax.envs import chain_hop, labeled_rows, textcraft_official, textcraft_synth
from rao_jax.envs.base import Task

FAMILIES = ("textcraft_synth", "textcraft_official", "textcraft_minecraft", "labeled_rows", "chain_hop")


def task_to_json(task: Task) -> str:
    """Canonical JSON (sorted keys) so a seed gives identical bytes in every process."""
    return json.dumps(dataclasses.asdict(task), sort_keys=True, separators=(",", ":"))


def task_from_json(text: str | bytes) -> Task:
    try:
        data = json.loads(text)
        return Task(**{field.name: data[field.name] for field in dataclasses.fields(Task)})
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"not a Task record: {err}") from None


def _take(knobs: dict[str, Any], name: str, default: Any) -> Any:
    return knobs.pop(name) if name in knobs else default


def iter_tasks(family: str, split: str, knobs: Mapping[str, Any]) -> Iterator[Task]:
    """Tasks of ``family`` and ``split``; ``knobs`` are the family config's fields plus counts.

    Order: the authors' files in file order; generated families round-robin over their difficulty
    buckets (one task of each bucket in turn), so the first N tasks cover every bucket evenly.
    ``textcraft_synth`` takes a ``preset`` (``textcraft_synth.PRESETS``, default ``paper``) whose
    knobs the given ones override. The crafting families take ``errors``: ``"return"`` (the authors'
    environment: a failed craft returns an ``Error: ...`` text and the cell goes on; the default for
    the official families) or ``"raise"`` (a failed craft raises ``ActionError``, ending the cell;
    the default for generated worlds).

    Raises:
      ValueError: unknown family or knob (named).
    """
    knobs = dict(knobs)
    try:
        if family == "textcraft_synth":
            preset = _take(knobs, "preset", "paper")
            if preset not in textcraft_synth.PRESETS:
                raise ValueError(f"unknown preset {preset!r}; known: {sorted(textcraft_synth.PRESETS)}")
            knobs = {**textcraft_synth.PRESETS[preset], **knobs}
            per = _take(knobs, "per_difficulty", None)
            errors = _errors(_take(knobs, "errors", "raise"))
            config = textcraft_synth.SynthConfig(**{k: tuple(map(tuple, v)) if k == "difficulties" else
                                                    tuple(v) if isinstance(v, list) else v for k, v in knobs.items()})
            tasks = textcraft_synth.generate_tasks(config, split, per)
            yield from _interleave(_with_errors(task, errors) for task in tasks)
        elif family in ("textcraft_official", "textcraft_minecraft"):
            files = textcraft_official.TaskFiles(_take(knobs, "wheel", None) or _missing("wheel"))
            max_steps = _take(knobs, "max_steps", None)
            errors = _errors(_take(knobs, "errors", "return"))
            _no_more(knobs)
            load = (textcraft_official.load_synth_tasks if family == "textcraft_official"
                    else textcraft_official.load_minecraft_tasks)
            yield from (_with_errors(task, errors) for task in load(files, split, max_steps))
        elif family == "labeled_rows":
            n = _take(knobs, "num_tasks", 14)
            multiples = _take(knobs, "context_multiples", [1.0, 2.0] if split == "train" else [4.0, 8.0])
            config = labeled_rows.RowsConfig(**knobs)
            yield from _interleave(
                labeled_rows.generate_task(dataclasses.replace(config, context_multiple=float(multiple)), split,
                                           index, difficulty=f"{multiple:g}x")
                for index, multiple in enumerate(m for m in multiples for _ in range(n)))
        elif family == "chain_hop":
            n = _take(knobs, "num_tasks", 10)
            hops = _take(knobs, "hops", [2, 3] if split == "train" else [5, 8])
            branches = _take(knobs, "branches", [1, 2])
            config = chain_hop.HopConfig(**knobs)
            cells = [(int(k), int(b)) for k in hops for b in branches for _ in range(n)]
            yield from _interleave(chain_hop.generate_task(config, split, index, k, b)
                                   for index, (k, b) in enumerate(cells))
        else:
            raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    except TypeError as err:  # dataclass constructors name the unexpected knob
        raise ValueError(f"bad knob for {family}: {err}") from None


def _interleave(tasks: Iterable[Task]) -> Iterator[Task]:
    """``tasks`` regrouped round-robin over their difficulty buckets (buckets in order of first
    appearance, each bucket's tasks in their own order)."""
    buckets: dict[str, list[Task]] = {}
    for task in tasks:
        buckets.setdefault(task.difficulty, []).append(task)
    queues = list(buckets.values())
    for row in range(max(map(len, queues), default=0)):
        yield from (queue[row] for queue in queues if row < len(queue))


def _errors(value: Any) -> str:
    if value not in ("return", "raise"):
        raise ValueError(f"knob errors must be 'return' or 'raise', got {value!r}")
    return value


def _with_errors(task: Task, errors: str) -> Task:
    return dataclasses.replace(task, spec={**task.spec, "errors": errors})


def _missing(name: str):
    raise ValueError(f"knob {name!r} is required (path to the platoon-textcraft wheel or its data folder)")


def _no_more(knobs: dict[str, Any]) -> None:
    if knobs:
        raise ValueError(f"unknown knobs {sorted(knobs)}")
