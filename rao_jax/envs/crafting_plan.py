"""Gold plans for crafting tasks.

``aggregated_plan`` is the gold solver: pick one recipe (and one item per tag) for every item the
targets need, add up each item's total demand over all its consumers (in consumers-first topological
order), craft every intermediate ONCE in whole recipe executions, ingredients before products. Held
stock of an intermediate is used; held units of a target never count (the task asks for a gain). Its
length is the number of distinct items crafted, the measure the official task files call
``num_craft_steps``.

``greedy_plan`` returns the aggregated plan and falls back to ``depth_first_plan`` (obtain each need
on its own, recursing, reusing leftovers, backtracking over recipe alternatives and tag items) when a
first-choice recipe or tag item is a dead end, as happens in some Minecraft recipes.

Everything iterates over lists and recipe order, never over sets, so plans do not depend on hash order.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping

from rao_jax.envs.base import ActionError, Task
from rao_jax.envs.crafting import TAG_PREFIX, Recipe, RecipeBook, episode_from_task


@dataclasses.dataclass(frozen=True)
class CraftStep:
    """One ``craft`` call: produce ``count`` units of ``item`` from exactly ``ingredients``."""

    item: str
    count: int                                   # units produced: runs x the recipe's yield
    runs: int                                    # recipe executions
    ingredients: tuple[tuple[str, int], ...]     # totals consumed (per-run count x runs)

    def as_official(self) -> dict:
        """The step in the official ``gold_trajectory`` format (target = [item, executions])."""
        return {"action": "craft", "target": [self.item, self.runs], "ingredients": dict(self.ingredients),
                "result_count": self.count}


class Unsolvable(Exception):
    """No sequence of crafts reaches the targets from the given inventory."""


class _Search:
    def __init__(self, book: RecipeBook, inventory: Mapping[str, int], unlimited_base: bool):
        self.book = book
        self.have = dict(inventory)
        self.steps: list[CraftStep] = []
        self.unlimited_base = unlimited_base
        self.base_used: dict[str, int] = {}

    def snapshot(self):
        return dict(self.have), len(self.steps), dict(self.base_used)

    def restore(self, snap) -> None:
        self.have, n, self.base_used = dict(snap[0]), snap[1], dict(snap[2])
        del self.steps[n:]

    def obtain(self, item: str, need: int, visiting: tuple[str, ...]) -> None:
        have = self.have.get(item, 0)
        if have >= need:
            self.have[item] = have - need
            return
        short = need - have
        self.have[item] = 0
        if not self.book.can_craft(item):
            if self.unlimited_base:
                self.base_used[item] = self.base_used.get(item, 0) + short
                return
            raise Unsolvable(f"need {short} more {item} (a base material)")
        if item in visiting:
            raise Unsolvable(f"recipe cycle through {item}")
        recipes = self.book.recipes[item]
        errors = []
        for recipe in recipes:
            snap = self.snapshot()
            try:
                self._craft(recipe, short, visiting + (item,))
                return
            except Unsolvable as err:
                errors.append(str(err))
                self.restore(snap)
        raise Unsolvable(f"cannot make {short} {item}: {'; '.join(errors)}")

    def _craft(self, recipe: Recipe, short: int, visiting: tuple[str, ...]) -> None:
        runs = -(-short // recipe.yield_count)
        used: list[tuple[str, int]] = []
        for requirement, per_run in recipe.ingredients:
            need = per_run * runs
            if requirement.startswith(TAG_PREFIX):
                used.append((self._obtain_tag(requirement[len(TAG_PREFIX):], need, visiting), need))
            else:
                self.obtain(requirement, need, visiting)
                used.append((requirement, need))
        made = runs * recipe.yield_count
        self.have[recipe.output] = self.have.get(recipe.output, 0) + made - short
        self.steps.append(CraftStep(recipe.output, made, runs, tuple(used)))

    def _obtain_tag(self, tag: str, need: int, visiting: tuple[str, ...]) -> str:
        options = self.book.items_for_tag(tag)
        # Prefer what is already held (most first), then craftable items, then base items; name breaks ties.
        ranked = sorted(options, key=lambda i: (-self.have.get(i, 0), not self.book.can_craft(i), i))
        errors = []
        for option in ranked:
            snap = self.snapshot()
            try:
                self.obtain(option, need, visiting)
                return option
            except Unsolvable as err:
                errors.append(str(err))
                self.restore(snap)
        raise Unsolvable(f"no item of tag {tag} can be had ({'; '.join(errors[:3])})")


def depth_first_plan(book: RecipeBook, targets: Mapping[str, int], inventory: Mapping[str, int]) -> list[CraftStep]:
    """Obtain each need on its own (see module docstring); raises Unsolvable.

    Backtracking is local to one need, so a target served first can use up a material another target
    needs; the targets are therefore tried in every order (few: tasks have at most a handful).
    """
    errors = []
    for order in itertools.islice(itertools.permutations(list(targets)), 24):
        search = _Search(book, inventory, unlimited_base=False)
        try:
            for item in order:
                _obtain_fresh(search, item, targets[item])
            return search.steps
        except Unsolvable as err:
            errors.append(str(err))
    raise Unsolvable(errors[0])


def _obtain_fresh(search: _Search, item: str, count: int) -> None:
    held = search.have.get(item, 0)
    search.have[item] = 0                      # the task demands a gain: held target units may not count
    search.obtain(item, count, ())
    search.have[item] = search.have.get(item, 0) + held


def _choose(book: RecipeBook, item: str, stock: Mapping[str, int]) -> tuple[Recipe, list[tuple[str, int]]]:
    """The first recipe of ``item``, with each tag resolved to the most-held (else first craftable) item."""
    recipe = book.recipes[item][0]
    pairs = []
    for requirement, per_run in recipe.ingredients:
        if requirement.startswith(TAG_PREFIX):
            options = book.items_for_tag(requirement[len(TAG_PREFIX):])
            if not options:
                raise Unsolvable(f"no item satisfies {requirement}")
            requirement = sorted(options, key=lambda i: (-stock.get(i, 0), not book.can_craft(i), i))[0]
        pairs.append((requirement, per_run))
    return recipe, pairs


def aggregated_plan(book: RecipeBook, targets: Mapping[str, int], inventory: Mapping[str, int] | None,
                    ) -> list[CraftStep]:
    """The gold plan (see module docstring). ``inventory=None`` plans from unlimited base materials.

    Raises:
      Unsolvable: a recipe cycle, or base materials the inventory lacks.
    """
    stock = dict(inventory or {})
    chosen: dict[str, tuple[Recipe, list[tuple[str, int]]]] = {}
    order: list[str] = []                       # post-order: ingredients before consumers
    state: dict[str, int] = {}                  # 1 = on the DFS stack, 2 = done

    def visit(item: str) -> None:
        if state.get(item) == 2:
            return
        if state.get(item) == 1:
            raise Unsolvable(f"recipe cycle through {item}")
        state[item] = 1
        if book.can_craft(item):
            chosen[item] = _choose(book, item, stock)
            for name, _ in chosen[item][1]:
                visit(name)
        state[item] = 2
        order.append(item)

    for item in targets:
        visit(item)
    demand = {item: count for item, count in targets.items()}
    steps: dict[str, CraftStep] = {}
    for item in reversed(order):                # consumers first: an item's demand is complete here
        need = demand.get(item, 0)
        if item not in chosen:
            if inventory is not None and need > stock.get(item, 0):
                raise Unsolvable(f"need {need} {item} (a base material), have {stock.get(item, 0)}")
            continue
        held = 0 if item in targets else stock.get(item, 0)
        recipe, pairs = chosen[item]
        runs = -(-max(0, need - held) // recipe.yield_count)
        if runs:
            for name, per_run in pairs:
                demand[name] = demand.get(name, 0) + per_run * runs
            steps[item] = CraftStep(item, runs * recipe.yield_count, runs,
                                    tuple((name, per_run * runs) for name, per_run in pairs))
    return [steps[item] for item in order if item in steps]


def greedy_plan(book: RecipeBook, targets: Mapping[str, int], inventory: Mapping[str, int]) -> list[CraftStep]:
    """The gold plan for ``targets`` from ``inventory``: aggregated, else depth-first with backtracking.

    Raises:
      Unsolvable: if no plan reaches the targets.
    """
    try:
        return aggregated_plan(book, targets, inventory)
    except Unsolvable:
        return depth_first_plan(book, targets, inventory)


def base_need(book: RecipeBook, targets: Mapping[str, int]) -> tuple[list[CraftStep], dict[str, int]]:
    """The aggregated plan from base materials alone, and the base materials it consumes."""
    steps = aggregated_plan(book, targets, None)
    made = {step.item for step in steps}
    need: dict[str, int] = {}
    for step in steps:
        for name, n in step.ingredients:
            if name not in made and not book.can_craft(name):
                need[name] = need.get(name, 0) + n
    return steps, dict(sorted(need.items()))


def replay_gold_plan(task: Task, errors: str | None = None) -> tuple[bool, str]:
    """Run a task's gold plan (official format) in a fresh episode as the root node; (success, why).
    ``errors`` picks the rule set (default: the task's own)."""
    episode = episode_from_task(task, errors)
    episode.open_node(0, None, episode.root_goal())
    for k, step in enumerate(task.spec.get("gold_plan", [])):
        item, _ = step["target"]
        try:
            said = episode.craft(dict(step["ingredients"]), (item, step["result_count"]))
        except ActionError as err:
            return False, f"gold step {k}: {err}"
        if said.startswith("Error:"):
            return False, f"gold step {k}: {said}"
    if episode.node_success(0, "done") != 1.0:
        return False, f"targets not reached; inventory {episode.view_inventory()}"
    return True, "ok"
