"""Readers for the authors' TextCraft task files (the MIT-licensed ``platoon-textcraft`` package).

Nothing here downloads: point it at a wheel fetched once with

    pip download --no-deps --python-version 3.12 --only-binary=:all: platoon-textcraft -d DIR

(or at the unpacked ``platoon_textcraft/data`` folder). The package ships

- ``textcraft_synth_{train,val}.jsonl``: TextCraft-Synth tasks. Their recipe book is not shipped, but
  every gold step names its item, executions, total ingredients (in recipe order) and units made, so
  the book is rebuilt from the gold plans (``book_from_gold``), checking that every task agrees on
  every recipe. The authors' ``get_info`` reports an item's generator tier as its crafting depth; the
  tier is written in the item's name (``authors_tier``), and each task carries it;
- ``textcraft_{train,val}.jsonl`` and ``recipes/*.json``: the original Minecraft TextCraft tasks and the
  Minecraft recipe files (shaped and shapeless crafting recipes only, as in the original game set-up;
  ``minecraft_book``).

A record: ``{"id", "goal", "max_steps", "misc": {"target_items", "initial_inventory",
"gold_trajectory", ...}}``. Malformed records raise ``TaskFileError`` naming file, line and field.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rao_jax.envs.base import Task, no_more_knobs, take_knob
from rao_jax.envs.crafting import Recipe, RecipeBook, closure, crafting_task_spec, parse_goal_text, with_errors

SYNTH_FAMILY = "textcraft_synth"
MINECRAFT_FAMILY = "textcraft_minecraft"
SYNTH_FILES = {"train": "textcraft_synth_train.jsonl", "val": "textcraft_synth_val.jsonl"}
MINECRAFT_FILES = {"train": "textcraft_train.jsonl", "val": "textcraft_val.jsonl"}
_DATA_DIR = "platoon_textcraft/data/"


class TaskFileError(ValueError):
    """A task or recipe file is malformed; the message names where."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One validated task record."""

    source: str                       # "file:line"
    task_id: str
    goal: str
    max_steps: int
    targets: dict[str, int]
    inventory: dict[str, int]
    gold: tuple[dict[str, Any], ...]
    misc: dict[str, Any]


class TaskFiles:
    """The data files of a ``platoon-textcraft`` wheel (zip) or of its unpacked data folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_file():
            with zipfile.ZipFile(self.path) as wheel:
                self._files = {name[len(_DATA_DIR):]: wheel.read(name) for name in wheel.namelist()
                               if name.startswith(_DATA_DIR) and not name.endswith("/")}
        elif self.path.is_dir():
            root = self.path / _DATA_DIR if (self.path / _DATA_DIR).is_dir() else self.path
            self._files = {str(p.relative_to(root)).replace("\\", "/"): p.read_bytes()
                           for p in sorted(root.rglob("*")) if p.is_file()}
        else:
            raise FileNotFoundError(f"no wheel or data folder at {self.path}")
        if not self._files:
            raise TaskFileError(f"{self.path} holds no {_DATA_DIR} files")

    def names(self) -> list[str]:
        return sorted(self._files)

    def read(self, name: str) -> bytes:
        if name not in self._files:
            raise TaskFileError(f"{self.path} has no {name} (has: {', '.join(self.names()[:8])} ...)")
        return self._files[name]

    def records(self, name: str) -> list[Record]:
        return read_records(self.read(name), name)

    def recipe_files(self) -> dict[str, Any]:
        out = {}
        for name in self.names():
            if name.startswith("recipes/") and name.endswith(".json"):
                try:
                    out[name[len("recipes/"):-5]] = json.loads(self.read(name))
                except json.JSONDecodeError as err:
                    raise TaskFileError(f"{name}: not JSON ({err})") from None
        return out


def read_records(data: bytes, source: str) -> list[Record]:
    """Parse and validate a JSONL task file."""
    records = []
    for lineno, line in enumerate(io.BytesIO(data), start=1):
        if line.strip():
            records.append(parse_record(line, f"{source}:{lineno}"))
    return records


def _counts(value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise TaskFileError(f"{where} must be a dict of item -> count")
    for item, count in value.items():
        if not isinstance(item, str) or not isinstance(count, int) or isinstance(count, bool) or count <= 0:
            raise TaskFileError(f"{where}: entry {item!r}: {count!r} is not (str, positive int)")
    return dict(value)


def parse_record(line: bytes | str, source: str) -> Record:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as err:
        raise TaskFileError(f"{source}: not JSON ({err})") from None
    if not isinstance(raw, dict):
        raise TaskFileError(f"{source}: a record must be a JSON object")
    for key, kind in (("id", str), ("goal", str), ("max_steps", int), ("misc", dict)):
        if not isinstance(raw.get(key), kind):
            raise TaskFileError(f"{source}: field {key!r} missing or not {kind.__name__}")
    misc = raw["misc"]
    targets = _counts(misc.get("target_items"), f"{source}: misc.target_items")
    inventory = _counts(misc.get("initial_inventory"), f"{source}: misc.initial_inventory")
    if not targets:
        raise TaskFileError(f"{source}: misc.target_items is empty")
    try:
        if parse_goal_text(raw["goal"]) != targets:
            raise TaskFileError(f"{source}: goal text {raw['goal']!r} disagrees with target_items {targets}")
    except ValueError as err:
        raise TaskFileError(f"{source}: {err}") from None
    gold = misc.get("gold_trajectory", [])
    if not isinstance(gold, list):
        raise TaskFileError(f"{source}: misc.gold_trajectory must be a list")
    for k, step in enumerate(gold):
        where = f"{source}: gold step {k}"
        if not isinstance(step, dict) or step.get("action") != "craft":
            raise TaskFileError(f"{where} is not a craft step")
        target = step.get("target")
        if (not isinstance(target, list) or len(target) != 2 or not isinstance(target[0], str)
                or not isinstance(target[1], int) or target[1] <= 0):
            raise TaskFileError(f"{where}: target must be [item, executions]")
        _counts(step.get("ingredients"), f"{where}: ingredients")
        if not isinstance(step.get("result_count"), int) or step["result_count"] <= 0:
            raise TaskFileError(f"{where}: result_count must be a positive int")
    return Record(source, raw["id"], raw["goal"], raw["max_steps"], targets, inventory, tuple(gold), dict(misc))


def book_from_gold(records: Iterable[Record]) -> RecipeBook:
    """The synthetic recipe book implied by the gold plans; raises TaskFileError on any disagreement."""
    recipes: dict[str, tuple[Recipe, str]] = {}
    extra: set[str] = set()
    for record in records:
        extra.update(record.inventory)
        for k, step in enumerate(record.gold):
            item, runs = step["target"]
            where = f"{record.source}: gold step {k} ({item})"
            if step["result_count"] % runs:
                raise TaskFileError(f"{where}: result_count {step['result_count']} not a multiple of {runs} runs")
            pairs = []
            for name, total in step["ingredients"].items():
                if total % runs:
                    raise TaskFileError(f"{where}: {total} {name} not a multiple of {runs} runs")
                pairs.append((name, total // runs))
            recipe = Recipe(item, step["result_count"] // runs, tuple(pairs))   # the authors' recipe order
            seen = recipes.get(item)
            if seen is None:
                recipes[item] = (recipe, where)
            elif (seen[0].yield_count, sorted(seen[0].ingredients)) != (recipe.yield_count, sorted(pairs)):
                raise TaskFileError(f"{where}: recipe {recipe} disagrees with {seen[1]}: {seen[0]}")
    return RecipeBook({item: (recipe,) for item, (recipe, _) in sorted(recipes.items())},
                      extra_items=frozenset(extra))


# The authors' generator names a base material ``raw_<prefix>`` or ``<prefix>_ore`` (tier 0), an item of
# tier t ``<prefix>_i<t>`` (with ``_<t>`` and/or ``_<k>`` appended to keep names unique) and a
# cross-domain item ``x<t>_<domains>``.
_TIERED = re.compile(r"^(?:[a-z]+\d*_i(\d+)(?:_\d+)*|x(\d+)_[a-z]+)$")
_BASE = re.compile(r"^(?:raw_[a-z]+\d*|[a-z]+\d*_ore)$")


def authors_tier(item: str) -> int | None:
    """The generator tier of an authors' TextCraft-Synth item, read from its name (None: not their naming)."""
    if _BASE.match(item):
        return 0
    match = _TIERED.match(item)
    return int(match.group(1) or match.group(2)) if match else None


def _mc_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise TaskFileError(f"{where}: item name must be a non-empty string, got {value!r}")
    return value.split(":", 1)[1] if ":" in value else value


def _mc_ingredient(entry: Any, where: str, lists: str) -> str | None:
    """An ingredient key: an item, ``tag:NAME``, ``tag:one_of:a|b`` for a list of alternatives, or None."""
    if isinstance(entry, list):
        if lists == "drop":
            return None
        return "tag:one_of:" + "|".join(str(_mc_ingredient(e, where, "drop")) for e in entry)
    if isinstance(entry, dict) and "item" in entry:
        return _mc_name(entry["item"], where)
    if isinstance(entry, dict) and "tag" in entry:
        return "tag:" + _mc_name(entry["tag"], where)
    raise TaskFileError(f"{where}: cannot read ingredient {entry!r}")


def _mc_recipe(name: str, data: Any, lists: str) -> Recipe | None:
    where = f"recipes/{name}.json"
    if not isinstance(data, dict):
        raise TaskFileError(f"{where}: must be a JSON object")
    kind = data.get("type")
    if kind not in ("minecraft:crafting_shaped", "minecraft:crafting_shapeless"):
        return None  # smelting, stonecutting, special recipes: not part of TextCraft's crafting
    result = data.get("result")
    if isinstance(result, dict):
        output, count = _mc_name(result.get("item"), where), result.get("count", 1)
    else:
        output, count = _mc_name(result, where), 1
    counts: dict[str, int] = {}
    if kind == "minecraft:crafting_shapeless":
        entries = data.get("ingredients")
        if not isinstance(entries, list) or not entries:
            raise TaskFileError(f"{where}: shapeless recipe needs a non-empty ingredients list")
        for entry in entries:
            key = _mc_ingredient(entry, where, lists)
            if key is not None:
                counts[key] = counts.get(key, 0) + 1
    else:
        pattern, key = data.get("pattern"), data.get("key")
        if not isinstance(pattern, list) or not isinstance(key, dict):
            raise TaskFileError(f"{where}: shaped recipe needs pattern and key")
        for row in pattern:
            for symbol in row:
                if symbol == " ":
                    continue
                if symbol not in key:
                    raise TaskFileError(f"{where}: pattern symbol {symbol!r} missing from key")
                name_ = _mc_ingredient(key[symbol], where, lists)
                if name_ is not None:
                    counts[name_] = counts.get(name_, 0) + 1
    if not isinstance(count, int) or count <= 0:
        raise TaskFileError(f"{where}: bad result count {count!r}")
    if not counts:
        return None  # every ingredient was a dropped list: a free recipe would be nonsense
    return Recipe(output, count, tuple(counts.items()))


_WOODS = ("oak", "spruce", "birch", "jungle", "acacia", "dark_oak", "crimson", "warped")


def _tag_members(tag: str, items: set[str]) -> list[str]:
    """Items satisfying a Minecraft tag, written from the game's tag definitions for the tags TextCraft uses."""
    if tag.startswith("one_of:"):
        return [i.split(":", 1)[1] if i.startswith("tag:") else i for i in tag[len("one_of:"):].split("|")]
    trunks = ("_log", "_wood", "_stem", "_hyphae")
    fixed = {"coals": ["coal", "charcoal"], "soul_fire_base_blocks": ["soul_sand", "soul_soil"],
             "stone_tool_materials": ["cobblestone", "blackstone", "cobbled_deepslate"],
             "stone_crafting_materials": ["cobblestone", "blackstone", "cobbled_deepslate"]}
    if tag in fixed:
        return fixed[tag]
    if tag == "planks":
        return [i for i in items if i.endswith("_planks")]
    if tag == "wool":
        return [i for i in items if i.endswith("_wool")]
    if tag == "wooden_slabs":
        return [f"{w}_slab" for w in _WOODS]
    if tag == "logs":
        return [i for i in items if i.removeprefix("stripped_").endswith(trunks)
                and i.removeprefix("stripped_").rsplit("_", 1)[0] in _WOODS]
    for suffix, kinds in (("_logs", ("_log", "_wood")), ("_stems", ("_stem", "_hyphae"))):
        if tag.endswith(suffix) and tag[: -len(suffix)] in _WOODS:
            wood = tag[: -len(suffix)]
            return [f"{prefix}{wood}{kind}" for prefix in ("", "stripped_") for kind in kinds]
    raise TaskFileError(f"unknown Minecraft tag {tag!r}")


def minecraft_book(recipe_files: Mapping[str, Any], task_items: Iterable[str] = (),
                   list_ingredients: str = "drop") -> RecipeBook:
    """The crafting recipes of the Minecraft recipe files, alternatives in file-name order.

    Args:
      list_ingredients: what to do with an ingredient given as a list of alternatives (e.g. coal or
        charcoal in ``torch``). "drop" leaves it out, as the environment the official tasks and gold
        plans were made with does (a torch then needs only a stick); "one_of" accepts any listed item.
    """
    if list_ingredients not in ("drop", "one_of"):
        raise ValueError(f"list_ingredients must be 'drop' or 'one_of', got {list_ingredients!r}")
    by_item: dict[str, list[Recipe]] = {}
    for name in sorted(recipe_files):
        recipe = _mc_recipe(name, recipe_files[name], list_ingredients)
        if recipe is not None:
            by_item.setdefault(recipe.output, []).append(recipe)
    items = set(by_item) | set(task_items)
    for recipes in by_item.values():
        for recipe in recipes:
            items.update(n for n, _ in recipe.ingredients if not n.startswith("tag:"))
    tags = {}
    for recipes in by_item.values():
        for recipe in recipes:
            for n, _ in recipe.ingredients:
                if n.startswith("tag:") and n[4:] not in tags:
                    tags[n[4:]] = tuple(sorted(set(_tag_members(n[4:], items))))
    return RecipeBook({k: tuple(v) for k, v in sorted(by_item.items())}, tags, frozenset(task_items))


def record_to_task(record: Record, book: RecipeBook, family: str, max_steps: int | None = None,
                   tiers: bool = False) -> Task:
    """A ``Task`` carrying the part of ``book`` the record can touch; ``max_steps`` overrides the file's;
    ``tiers``: the task carries each item's ``authors_tier`` as its crafting depth."""
    unknown = sorted(i for i in record.targets if not book.can_craft(i))
    if unknown:
        raise TaskFileError(f"{record.source}: target(s) {unknown} have no recipe")
    gold = [dict(step) for step in record.gold]
    misc = record.misc
    difficulty = str(misc.get("difficulty") or ("mixed" if family == MINECRAFT_FAMILY else "unknown"))
    extra = {k: misc[k] for k in ("max_depth", "num_craft_steps") if k in misc}
    if tiers:
        items = closure(book, list(record.targets) + list(record.inventory))
        extra["crafting_depths"] = {item: authors_tier(item) for item in items}
    spec = crafting_task_spec(book, record.targets, record.inventory, gold, source=record.source, **extra)
    return Task(task_id=record.task_id, family=family, goal=record.goal,
                max_steps=max_steps if max_steps is not None else record.max_steps,
                difficulty=difficulty, spec=spec)


def load_synth_tasks(files: TaskFiles, split: str, max_steps: int | None = None) -> list[Task]:
    """TextCraft-Synth tasks of ``split``; the book is rebuilt from the gold plans of BOTH splits."""
    records = {name: files.records(fname) for name, fname in SYNTH_FILES.items()}
    book = book_from_gold(records["train"] + records["val"])
    names = {name for recipes in book.recipes.values() for r in recipes for name, _ in r.ingredients}
    names |= set(book.recipes) | set(book.extra_items)
    named = all(authors_tier(name) is not None for name in names)   # else (not the authors' files): longest chain
    return [record_to_task(r, book, SYNTH_FAMILY, max_steps, tiers=named) for r in records[_split(split)]]


def load_minecraft_tasks(files: TaskFiles, split: str, max_steps: int | None = None,
                         list_ingredients: str = "drop") -> list[Task]:
    """Original Minecraft TextCraft tasks of ``split`` over the shipped Minecraft recipes."""
    records = files.records(MINECRAFT_FILES[_split(split)])
    items = {i for r in records for i in list(r.inventory) + list(r.targets)}
    book = minecraft_book(files.recipe_files(), items, list_ingredients)
    return [record_to_task(r, book, MINECRAFT_FAMILY, max_steps) for r in records]


def _split(split: str) -> str:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return split


def _tasks_from_knobs(load, split: str, knobs: dict[str, Any]) -> Iterator[Task]:
    wheel = take_knob(knobs, "wheel", None)
    if not wheel:
        raise ValueError("knob 'wheel' is required (path to the platoon-textcraft wheel or its data folder)")
    max_steps = take_knob(knobs, "max_steps", None)
    errors = take_knob(knobs, "errors", "return")
    no_more_knobs(knobs)
    return with_errors(load(TaskFiles(wheel), split, max_steps), errors)


def synth_tasks_from_knobs(split: str, knobs: dict[str, Any]) -> Iterator[Task]:
    """The ``textcraft_official`` task source (the authors' TextCraft-Synth files, in file order): knobs
    ``wheel`` (required), ``max_steps`` (default: the file's), ``errors`` (default "return")."""
    return _tasks_from_knobs(load_synth_tasks, split, knobs)


def minecraft_tasks_from_knobs(split: str, knobs: dict[str, Any]) -> Iterator[Task]:
    """The ``textcraft_minecraft`` task source (the authors' Minecraft files, in file order); knobs as
    ``synth_tasks_from_knobs``."""
    return _tasks_from_knobs(load_minecraft_tasks, split, knobs)
