"""Recipe books of the crafting world: ``Recipe`` / ``RecipeBook`` (tags, crafting depth), goal text,
target checks, and the JSON form a task carries (``book_to_json`` / ``book_from_json``, ``crafting_task_spec``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from rao_jax.envs.base import ActionError

TAG_PREFIX = "tag:"
_GOAL_PREFIX = "Craft the following items:"
_GOAL_ITEM = re.compile(r"^\s*(\d+)\s*x\s+([A-Za-z0-9_:\-]+)\s*$")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One way to craft ``output``: per execution, consume ``ingredients`` and gain ``yield_count`` units."""

    output: str
    yield_count: int
    ingredients: tuple[tuple[str, int], ...]   # (item or "tag:NAME", count per execution), recipe order

    def as_json(self) -> dict[str, Any]:
        return {"ingredients": dict(self.ingredients), "result_count": self.yield_count}


@dataclasses.dataclass(frozen=True)
class RecipeBook:
    """All recipes of a world. ``tags`` maps a tag name (without ``tag:``) to the items satisfying it."""

    recipes: Mapping[str, tuple[Recipe, ...]]
    tags: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    extra_items: frozenset[str] = frozenset()   # items that occur only in inventories (distractors)

    def __post_init__(self):
        known = set(self.recipes) | set(self.extra_items)
        for recipes in self.recipes.values():
            for recipe in recipes:
                for name, _ in recipe.ingredients:
                    if name.startswith(TAG_PREFIX):
                        known.update(self.tags.get(name[len(TAG_PREFIX):], ()))
                    else:
                        known.add(name)
        object.__setattr__(self, "_known", frozenset(known))
        object.__setattr__(self, "_depth", {})

    def is_known(self, item: str) -> bool:
        return item in self._known  # type: ignore[attr-defined]

    def can_craft(self, item: str) -> bool:
        return bool(self.recipes.get(item))

    def is_base(self, item: str) -> bool:
        return self.is_known(item) and not self.can_craft(item)

    def items_for_tag(self, tag: str) -> tuple[str, ...]:
        return tuple(self.tags.get(tag, ()))

    def satisfies(self, requirement: str, item: str) -> bool:
        if requirement.startswith(TAG_PREFIX):
            return item in self.tags.get(requirement[len(TAG_PREFIX):], ())
        return requirement == item

    def depth(self, item: str) -> int:
        """Longest chain of crafts down to base items (0 for base items; cycles cut)."""
        memo: dict[str, int] = self._depth  # type: ignore[attr-defined]
        if item in memo:
            return memo[item]
        result = self._depth_of(item, frozenset())
        memo[item] = result
        return result

    def _depth_of(self, item: str, visiting: frozenset[str]) -> int:
        if item in visiting or not self.can_craft(item):
            return 0
        best = 0
        for recipe in self.recipes[item]:
            for name, _ in recipe.ingredients:
                if name.startswith(TAG_PREFIX):
                    continue  # tags are leaf-like in the official depth, keep it comparable
                best = max(best, 1 + self._depth_of(name, visiting | {item}))
        return best


def format_targets(targets: Mapping[str, int]) -> str:
    """The goal text, in the official wording: ``Craft the following items: 2x a, 1x b``."""
    return _GOAL_PREFIX + " " + ", ".join(f"{count}x {item}" for item, count in targets.items())


def parse_goal_text(text: str) -> dict[str, int]:
    """Inverse of ``format_targets``; raises ValueError naming the bad part."""
    if not text.startswith(_GOAL_PREFIX):
        raise ValueError(f"goal text must start with {_GOAL_PREFIX!r}, got {text[:60]!r}")
    targets: dict[str, int] = {}
    for part in text[len(_GOAL_PREFIX):].split(","):
        match = _GOAL_ITEM.match(part)
        if not match:
            raise ValueError(f"cannot read goal item {part.strip()!r}; expected 'Nx item'")
        targets[match.group(2)] = targets.get(match.group(2), 0) + int(match.group(1))
    return targets


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_targets(book: RecipeBook, targets: Any, what: str = "targets") -> dict[str, int]:
    """Validate a ``{item: count}`` dict against the book; raises ActionError naming the first problem."""
    if not isinstance(targets, Mapping) or not targets:
        raise ActionError(f"{what} must be a non-empty dict {{item: count}}, got {type(targets).__name__}")
    clean: dict[str, int] = {}
    for item, count in targets.items():
        if not isinstance(item, str):
            raise ActionError(f"{what}: item names must be strings, got {item!r}")
        if not book.is_known(item):
            raise ActionError(f"{what}: unknown item {item!r}")
        if not _is_count(count):
            raise ActionError(f"{what}: count of {item!r} must be a positive int, got {count!r}")
        clean[item] = count
    return clean


def book_to_json(book: RecipeBook, items: list[str] | None = None) -> dict[str, Any]:
    """JSON form of the book (or of the recipes of ``items`` only); inverse of ``book_from_json``."""
    names = sorted(book.recipes) if items is None else sorted(set(items) & set(book.recipes))
    tags = {}
    for name in names:
        for recipe in book.recipes[name]:
            for ingredient, _ in recipe.ingredients:
                if ingredient.startswith(TAG_PREFIX):
                    tags[ingredient[4:]] = list(book.items_for_tag(ingredient[4:]))
    return {
        "recipes": {name: [{"ingredients": [list(pair) for pair in r.ingredients], "result_count": r.yield_count}
                           for r in book.recipes[name]] for name in names},
        "tags": dict(sorted(tags.items())),
    }


def book_from_json(data: Any, extra_items: frozenset[str] = frozenset()) -> RecipeBook:
    """Rebuild a book from ``book_to_json`` output; raises ValueError naming a malformed entry."""
    if not isinstance(data, Mapping) or not isinstance(data.get("recipes"), Mapping):
        raise ValueError("recipe book must be a dict with a 'recipes' dict")
    recipes = {}
    for item, entries in data["recipes"].items():
        if not isinstance(item, str) or not isinstance(entries, list) or not entries:
            raise ValueError(f"recipes of {item!r} must be a non-empty list")
        parsed = []
        for entry in entries:
            pairs = entry.get("ingredients") if isinstance(entry, Mapping) else None
            yield_count = entry.get("result_count") if isinstance(entry, Mapping) else None
            if (not isinstance(pairs, list) or not pairs or not _is_count(yield_count)
                    or not all(isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str)
                               and _is_count(p[1]) for p in pairs)):
                raise ValueError(f"malformed recipe for {item!r}: {entry!r} (need ingredients [[name, count], ...] "
                                 "and a positive result_count)")
            parsed.append(Recipe(item, yield_count, tuple((name, n) for name, n in pairs)))
        recipes[item] = tuple(parsed)
    tags = data.get("tags") or {}
    if not isinstance(tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, list | tuple) and all(isinstance(i, str) for i in v)
            for k, v in tags.items()):
        raise ValueError("recipe book 'tags' must map tag names to lists of item names")
    return RecipeBook(recipes, {tag: tuple(items) for tag, items in tags.items()}, extra_items)


def closure(book: RecipeBook, items: list[str]) -> list[str]:
    """Every item reachable from ``items`` through recipes (tag options included), sorted."""
    seen: set[str] = set()
    stack = list(items)
    while stack:
        item = stack.pop()
        if item in seen:
            continue
        seen.add(item)
        for recipe in book.recipes.get(item, ()):
            for name, _ in recipe.ingredients:
                stack.extend(book.items_for_tag(name[4:]) if name.startswith(TAG_PREFIX) else [name])
    return sorted(seen)


def crafting_task_spec(book: RecipeBook, targets: Mapping[str, int], inventory: Mapping[str, int],
                       gold: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """A self-contained, JSON-able ``Task.spec``: the recipes the task can touch travel with it."""
    needed = closure(book, list(targets) + list(inventory))
    spec: dict[str, Any] = {"targets": dict(targets), "initial_inventory": dict(inventory),
                            "book": book_to_json(book, needed)}
    if gold is not None:
        spec["gold_plan"] = gold
    spec.update(extra)
    return spec
