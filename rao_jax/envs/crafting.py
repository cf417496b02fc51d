"""The crafting world shared by TextCraft-Synth and the original Minecraft TextCraft (RAO_SPEC section 5).

A ``RecipeBook`` maps each craftable item to one or more recipes; a recipe turns exact ingredient counts
into ``yield_count`` units per execution. Minecraft recipes may name a tag (``tag:planks``) that any of
several items satisfies. A ``CraftingEpisode`` holds ONE inventory shared by every node of a delegation
tree; each node's success is judged against the inventory snapshot taken when it was forked, so a child
only gets credit for what the tree gained while it ran (spec section 2).

Two rule sets for a bad craft, chosen per task (``spec["errors"]``):

- ``"raise"`` (generated worlds by default): ``craft`` raises ``ActionError``, which ends the cell
  and becomes its observation; counts must be positive ints (bools rejected).
- ``"return"`` (the authors' files by default): ``craft`` behaves as the authors' environment
  (``platoon_textcraft.env``): it returns ``Error: ...`` in their wording, leaves the inventory as it
  was, and the rest of the cell runs; success reads ``Successfully crafted N item(s)``; ``get_info``
  answers for an item outside the task's world (not craftable, not a base material, depth 0) instead
  of raising.

``get_info``'s ``crafting_depth`` is the longest chain of crafts down to base materials, unless the
task carries its own (``spec["crafting_depths"]``: the authors' TextCraft-Synth reports each item's
generator tier, which is not always the longest chain).

Invariants: the inventory never holds zero or negative entries; every mutation happens under one
lock because the runtime may call tools of parallel children from several threads.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from rao_jax.envs.base import ActionError, Episode, Goal, Task
from rao_jax.envs.recipes import (  # noqa: F401  (the recipe-book API, importable from here too)
    TAG_PREFIX,
    Recipe,
    RecipeBook,
    _is_count,
    book_from_json,
    book_to_json,
    check_targets,
    closure,
    crafting_task_spec,
    format_targets,
    parse_goal_text,
)

ERROR_MODES = ("raise", "return")


class CraftingEpisode(Episode):
    """One delegation tree acting on one shared inventory."""

    def __init__(self, book: RecipeBook, targets: Mapping[str, int], inventory: Mapping[str, int],
                 goal_text: str | None = None, errors: str = "raise", depths: Mapping[str, int] | None = None):
        if errors not in ERROR_MODES:
            raise ValueError(f"errors must be one of {ERROR_MODES}, got {errors!r}")
        self.book = book
        self.errors = errors
        self._depths = dict(depths) if depths is not None else None
        self._root_targets = check_targets(book, dict(targets), "task targets")
        self._goal_text = goal_text or format_targets(self._root_targets)
        self._lock = threading.Lock()
        self._inventory: dict[str, int] = {}
        for item, count in inventory.items():
            if not isinstance(item, str) or not _is_count(count):
                raise ValueError(f"initial inventory entry {item!r}: {count!r} is not (str, positive int)")
            self._inventory[item] = count
        self._nodes: dict[int, tuple[dict[str, int], dict[str, int]]] = {}  # node -> (targets, fork inventory)

    # -- contract -------------------------------------------------------------------------------------
    def root_goal(self) -> Goal:
        return Goal(text=self._goal_text, spec={"targets": dict(self._root_targets)})

    def tool_docs(self, recursive: bool) -> str:
        failure = ("a failed craft returns a text starting with 'Error:' and changes nothing" if self.errors == "return"
                   else "a failed craft raises an error that ends the cell")
        docs = [
            "craft(ingredients: dict, target: (item, count)) -> str: craft `count` units of `item`. `count` must "
            "be a multiple of the recipe's result_count, and `ingredients` must name exactly the recipe's "
            "ingredients, each with its recipe count times count / result_count (a tag ingredient is satisfied "
            f"by any one item listed for it); {failure}.",
            "get_info(items: list[str]) -> list[dict]: for each item its recipes, crafting depth, whether it "
            "can be crafted, whether it is a base material, and how many units are in the inventory.",
            "view_inventory() -> dict: the shared inventory {item: count}.",
            "finish(message) -> ends this agent; you succeed if every target count was gained (relative to the "
            "inventory when you started) and the message is not empty.",
        ]
        if recursive:
            docs.append(
                "await launch_subagent(targets: dict, budget: int, context: str = '') -> result: a copy of "
                "you crafts `targets` ({item: count}) in the same shared inventory within `budget` steps and "
                "returns its finish message. Launching reserves budget + 1 of your steps until it returns. "
                "Run several at once with `await asyncio.gather(...)`.")
        return "\n".join(docs)

    def open_node(self, node_id: int, parent_id: int | None, goal: Goal) -> None:
        targets = dict(goal.spec.get("targets", {})) if parent_id is not None else dict(self._root_targets)
        with self._lock:
            self._nodes[node_id] = (targets, dict(self._inventory))

    def tools(self, node_id: int) -> dict[str, Callable[..., Any]]:
        return {"craft": self.craft, "get_info": self.get_info, "view_inventory": self.view_inventory}

    def parse_child_goal(self, goal: Any, context: str) -> Goal:
        if isinstance(goal, str):
            try:
                goal = parse_goal_text(goal)
            except ValueError as err:
                raise ActionError(f"launch_subagent: {err}") from None
        targets = check_targets(self.book, goal, "launch_subagent targets")
        return Goal(text=format_targets(targets), spec={"targets": targets}, context=str(context or ""))

    def node_success(self, node_id: int, finish_message: Any | None) -> float:
        if node_id not in self._nodes:
            raise KeyError(f"node {node_id} was never opened")
        if not finish_message:   # None, "", {}: as the authors' grader; "   " is a message
            return 0.0
        targets, fork = self._nodes[node_id]
        with self._lock:
            gained = {item: self._inventory.get(item, 0) - fork.get(item, 0) for item in targets}
        return float(all(gained[item] >= count for item, count in targets.items()))

    # -- tools ----------------------------------------------------------------------------------------
    def view_inventory(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._inventory.items()))

    def get_info(self, items: Any) -> list[dict[str, Any]]:
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list | tuple) or not items or not all(isinstance(i, str) for i in items):
            raise ActionError("get_info takes a non-empty list of item names")
        unknown = [item for item in items if not self.book.is_known(item)]
        if unknown and self.errors == "raise":
            raise ActionError(f"get_info: unknown item(s) {', '.join(map(repr, unknown))}")
        with self._lock:
            have = {item: self._inventory.get(item, 0) for item in items}
        out = []
        for item in items:
            if not self.book.is_known(item):   # as the authors answer for a name with no recipe
                out.append({"item": item, "can_craft": False, "is_base": False, "in_inventory": have[item],
                            "crafting_depth": 0, "recipes": []})
                continue
            recipes = []
            for recipe in self.book.recipes.get(item, ()):
                entry = recipe.as_json()
                for name in list(entry["ingredients"]):
                    if name.startswith(TAG_PREFIX):
                        entry["ingredients"][name] = {"count": entry["ingredients"][name],
                                                      "use_one_of": sorted(self.book.items_for_tag(name[4:]))}
                recipes.append(entry)
            out.append({"item": item, "can_craft": self.book.can_craft(item), "is_base": self.book.is_base(item),
                        "in_inventory": have[item], "crafting_depth": self.depth(item), "recipes": recipes})
        return out

    def depth(self, item: str) -> int:
        """``get_info``'s crafting depth: the task's own figure where it carries one, else the longest chain."""
        if self._depths is not None and item in self._depths:
            return self._depths[item]
        return self.book.depth(item)

    def craft(self, ingredients: Any, target: Any) -> str:
        if self.errors == "return":
            return self._craft_returning(ingredients, target)
        item, count, provided = self._check_craft_args(ingredients, target)
        errors = []
        with self._lock:
            for index, recipe in enumerate(self.book.recipes[item], start=1):
                try:
                    use = self._match(recipe, count, provided)
                except ActionError as err:
                    errors.append(f"recipe {index}: {err}")
                    continue
                short = [f"{name}: need {n}, have {self._inventory.get(name, 0)}"
                         for name, n in use.items() if self._inventory.get(name, 0) < n]
                if short:
                    errors.append(f"recipe {index}: not enough in inventory ({'; '.join(short)})")
                    continue
                self._apply(use, item, count)
                return f"Crafted {count} {item}."
        raise ActionError(f"cannot craft {count} {item}: " + " | ".join(errors))

    def _apply(self, use: Mapping[str, int], item: str, count: int) -> None:
        """Consume ``use`` and add ``count`` x ``item`` (the caller holds the lock and checked stock)."""
        for name, n in use.items():
            left = self._inventory[name] - n
            if left:
                self._inventory[name] = left
            else:
                del self._inventory[name]
        self._inventory[item] = self._inventory.get(item, 0) + count

    # -- the authors' craft ("return" mode) -----------------------------------------------------------
    def _craft_returning(self, ingredients: Any, target: Any) -> str:
        """``craft`` as the authors' environment runs it: the same checks in the same order, their texts."""
        problem = _authors_argument_problem(ingredients, target)
        if problem:
            return f"Error: {problem}"
        item, count = target
        recipes = self.book.recipes.get(item, ())
        if not recipes:
            return f"Error: No recipe found for {item}"
        errors = []
        with self._lock:
            for number, recipe in enumerate(recipes, start=1):
                problem, use = self._authors_match(recipe, count, ingredients)
                if problem:
                    errors.append(f"Recipe {number}: {problem}")
                    continue
                self._apply(use, item, count)
                return f"Successfully crafted {count} {item}(s)"
        return f"Error: All {len(recipes)} recipe(s) failed for {item}. Errors:\n" + "\n".join(errors)

    def _authors_match(self, recipe: Recipe, count: int, provided: Mapping[str, int]) -> tuple[str, dict[str, int]]:
        """(the authors' complaint about this recipe or "", the items it would consume); lock held."""
        if count % recipe.yield_count:
            return (f"Target count {count} is not divisible by recipe result count {recipe.yield_count}", {})
        runs = count // recipe.yield_count
        use: dict[str, int] = {}
        for requirement, per_run in recipe.ingredients:
            need = per_run * runs
            if requirement.startswith(TAG_PREFIX):
                members = sorted(self.book.items_for_tag(requirement[len(TAG_PREFIX):]))
                name = next((n for n, k in provided.items() if n in members and k == need), None)
                if name is None:
                    return f"No ingredient provided for {requirement}. Expected one of: {members}", {}
            elif requirement not in provided:
                return f"Missing required ingredient {requirement}", {}
            elif provided[requirement] != need:
                return f"Wrong amount of {requirement}. Need {need}, provided {provided[requirement]}", {}
            else:
                name = requirement
            use[name] = use.get(name, 0) + need
        extra = [name for name in provided if name not in use]
        if extra:
            return f"Extra ingredients not required: {', '.join(extra)}", {}
        short = [f"{name}: need {n}, have {self._inventory.get(name, 0)}" for name, n in use.items()
                 if self._inventory.get(name, 0) < n]
        if short:
            return f"Insufficient ingredients in inventory: {', '.join(short)}", {}
        return "", use

    def _check_craft_args(self, ingredients: Any, target: Any) -> tuple[str, int, dict[str, int]]:
        if not isinstance(target, list | tuple) or len(target) != 2:
            raise ActionError(f"craft: target must be (item, count), got {target!r}")
        item, count = target
        if not isinstance(item, str):
            raise ActionError(f"craft: target item must be a string, got {item!r}")
        if not _is_count(count):
            raise ActionError(f"craft: target count must be a positive int, got {count!r}")
        if not self.book.is_known(item):
            raise ActionError(f"craft: unknown item {item!r}")
        if not self.book.can_craft(item):
            raise ActionError(f"craft: {item!r} is a base material and cannot be crafted")
        if not isinstance(ingredients, Mapping) or not ingredients:
            raise ActionError("craft: ingredients must be a non-empty dict {item: count}")
        provided: dict[str, int] = {}
        for name, n in ingredients.items():
            if not isinstance(name, str) or not self.book.is_known(name):
                raise ActionError(f"craft: unknown ingredient {name!r}")
            if not _is_count(n):
                raise ActionError(f"craft: count of ingredient {name!r} must be a positive int, got {n!r}")
            provided[name] = n
        return item, count, provided

    def _match(self, recipe: Recipe, count: int, provided: dict[str, int]) -> dict[str, int]:
        """The exact items and counts ``provided`` must use for ``count`` units by ``recipe``."""
        if count % recipe.yield_count:
            raise ActionError(f"count {count} is not a multiple of the result count {recipe.yield_count}")
        runs = count // recipe.yield_count
        use: dict[str, int] = {}
        for requirement, per_run in recipe.ingredients:
            need = per_run * runs
            options = [name for name in provided if name not in use and self.book.satisfies(requirement, name)]
            if not options:
                raise ActionError(f"missing ingredient {requirement} (need {need})")
            exact = [name for name in options if provided[name] == need]
            if not exact:
                raise ActionError(f"wrong amount of {options[0]}: need {need}, got {provided[options[0]]}")
            use[exact[0]] = need
        extra = [name for name in provided if name not in use]
        if extra:
            raise ActionError(f"ingredients not in the recipe: {', '.join(extra)}")
        return use


def _authors_argument_problem(ingredients: Any, target: Any) -> str:
    """The authors' argument checks, in their order and words ("" when the arguments pass)."""
    if not isinstance(ingredients, dict):
        return f"ingredients must be a dict, got {type(ingredients).__name__}"
    if not isinstance(target, tuple | list) or len(target) != 2:
        return "target must be a tuple of (item_name, count)"
    item, count = target
    if not isinstance(item, str):
        return f"target item must be a string, got {type(item).__name__}"
    if not isinstance(count, int):
        return f"target count must be an int, got {type(count).__name__}"
    if count <= 0:
        return f"target count must be positive, got {count}"
    for name, n in ingredients.items():
        if not isinstance(name, str):
            return f"ingredient name must be a string, got {type(name).__name__}"
        if not isinstance(n, int):
            return f"ingredient count for {name} must be an int, got {type(n).__name__}"
        if n <= 0:
            return f"ingredient count for {name} must be positive, got {n}"
    return ""


def episode_from_task(task: Task, errors: str | None = None) -> CraftingEpisode:
    """Open a fresh episode for a crafting task; raises ValueError naming what is malformed.
    ``errors`` overrides the task's rule set for a bad craft (``spec["errors"]``, default "raise")."""
    spec = task.spec
    try:
        targets, inventory, book_json = spec["targets"], spec["initial_inventory"], spec["book"]
    except (KeyError, TypeError):
        raise ValueError(f"task {task.task_id}: spec needs targets, initial_inventory and book") from None
    if not isinstance(inventory, Mapping):
        raise ValueError(f"task {task.task_id}: initial_inventory must be a dict")
    book = book_from_json(book_json, frozenset(str(k) for k in inventory))
    errors = errors or spec.get("errors", "raise")
    depths = spec.get("crafting_depths")
    if depths is not None and not (isinstance(depths, Mapping) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in depths.items())):
        raise ValueError(f"task {task.task_id}: crafting_depths must map item names to ints")
    try:
        return CraftingEpisode(book, targets, inventory, goal_text=task.goal, errors=errors, depths=depths)
    except ActionError as err:
        raise ValueError(f"task {task.task_id}: {err}") from None
    except ValueError as err:
        raise ValueError(f"task {task.task_id}: {err}") from None


def with_errors(tasks: Iterable[Task], errors: Any) -> Iterator[Task]:
    """``tasks`` whose failed crafts ``"return"`` an ``Error: ...`` text (the authors' environment: the
    cell goes on) or ``"raise"`` ``ActionError`` (ending the cell)."""
    if errors not in ERROR_MODES:
        raise ValueError(f"knob errors must be 'return' or 'raise', got {errors!r}")
    return (dataclasses.replace(task, spec={**task.spec, "errors": errors}) for task in tasks)
