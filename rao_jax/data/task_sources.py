"""Root tasks of every family from knobs (generators) or files (the official TextCraft tasks), and the JSON
form ``Task`` records take in datasets."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
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

    Raises:
      ValueError: unknown family or knob (named).
    """
    knobs = dict(knobs)
    try:
        if family == "textcraft_synth":
            per = _take(knobs, "per_difficulty", 10)
            preset = _take(knobs, "preset", "paper")
            base = textcraft_synth.SynthConfig.tiny() if preset == "tiny" else textcraft_synth.SynthConfig.paper()
            config = dataclasses.replace(base, **{k: tuple(map(tuple, v)) if k == "difficulties" else
                                                  tuple(v) if isinstance(v, list) else v for k, v in knobs.items()})
            yield from textcraft_synth.generate_tasks(config, split, per)
        elif family in ("textcraft_official", "textcraft_minecraft"):
            files = textcraft_official.TaskFiles(_take(knobs, "wheel", None) or _missing("wheel"))
            max_steps = _take(knobs, "max_steps", None)
            _no_more(knobs)
            load = (textcraft_official.load_synth_tasks if family == "textcraft_official"
                    else textcraft_official.load_minecraft_tasks)
            yield from load(files, split, max_steps)
        elif family == "labeled_rows":
            n = _take(knobs, "num_tasks", 14)
            multiples = _take(knobs, "context_multiples", [1.0, 2.0] if split == "train" else [4.0, 8.0])
            config = labeled_rows.RowsConfig(**knobs)
            index = 0
            for multiple in multiples:
                cfg = dataclasses.replace(config, context_multiple=float(multiple))
                for _ in range(n):
                    yield labeled_rows.generate_task(cfg, split, index, difficulty=f"{multiple:g}x")
                    index += 1
        elif family == "chain_hop":
            n = _take(knobs, "num_tasks", 10)
            hops = _take(knobs, "hops", [2, 3] if split == "train" else [5, 8])
            branches = _take(knobs, "branches", [1, 2])
            config = chain_hop.HopConfig(**knobs)
            index = 0
            for k in hops:
                for b in branches:
                    for _ in range(n):
                        yield chain_hop.generate_task(config, split, index, int(k), int(b))
                        index += 1
        else:
            raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    except TypeError as err:  # dataclass constructors name the unexpected knob
        raise ValueError(f"bad knob for {family}: {err}") from None


def _missing(name: str):
    raise ValueError(f"knob {name!r} is required (path to the platoon-textcraft wheel or its data folder)")


def _no_more(knobs: dict[str, Any]) -> None:
    if knobs:
        raise ValueError(f"unknown knobs {sorted(knobs)}")
