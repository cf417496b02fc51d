"""Plans for crafting tasks: the greedy gold solver and the delegation tree the recursive oracle follows.

``greedy_plan`` obtains each needed unit depth-first: take what the (simulated) inventory holds, craft
the shortfall in whole recipe executions, recurse into ingredients first, and keep leftovers for later
needs. Steps come out in an executable order. Recipe alternatives and tag choices are tried in a fixed
order with backtracking, so the result never depends on set or hash order.

``delegation_plan`` splits a target the way a recursive agent would: a node whose flat plan is short
does it itself; otherwise it launches one child per crafted ingredient of the target's recipe (all in
one ``asyncio.gather``), then crafts the target. Children plan from base materials only, so parallel
siblings never compete for intermediate items; each child's budget is the exact need of its sub-tree
under the spec's reservation rule (launching with budget n reserves n + 1 of the caller's steps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from rao_jax.envs.crafting import TAG_PREFIX, Recipe, RecipeBook


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


def greedy_plan(book: RecipeBook, targets: Mapping[str, int], inventory: Mapping[str, int]) -> list[CraftStep]:
    """Crafts that turn ``inventory`` into one holding ``targets`` on top of it (the gold plan).

    Raises:
      Unsolvable: if the inventory's base materials do not suffice.
    """
    search = _Search(book, inventory, unlimited_base=False)
    # The task demands a gain over the starting inventory, so held target units may not count.
    for item, count in targets.items():
        _obtain_fresh(search, item, count)
    return search.steps


def _obtain_fresh(search: _Search, item: str, count: int) -> None:
    held = search.have.get(item, 0)
    search.have[item] = 0
    search.obtain(item, count, ())
    search.have[item] = search.have.get(item, 0) + held


def base_need(book: RecipeBook, targets: Mapping[str, int]) -> tuple[list[CraftStep], dict[str, int]]:
    """The greedy plan from base materials alone, and the base materials it consumes."""
    search = _Search(book, {}, unlimited_base=True)
    for item, count in targets.items():
        _obtain_fresh(search, item, count)
    return search.steps, dict(sorted(search.base_used.items()))


@dataclasses.dataclass(frozen=True)
class NodePlan:
    """What one node of the recursive oracle does: its children, then its own crafts, then finish."""

    targets: tuple[tuple[str, int], ...]
    children: tuple[NodePlan, ...]
    crafts: tuple[CraftStep, ...]
    budget: int                                      # steps this node needs, descendants included

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def base_materials(self, book: RecipeBook) -> dict[str, int]:
        """Base materials all crafts of the sub-tree consume."""
        total: dict[str, int] = {}
        for node in self.walk():
            for step in node.crafts:
                for name, n in step.ingredients:
                    if not book.can_craft(name):
                        total[name] = total.get(name, 0) + n
        return dict(sorted(total.items()))


def craft_steps_needed(n_crafts: int, crafts_per_step: int) -> int:
    return -(-n_crafts // crafts_per_step)


def delegation_plan(book: RecipeBook, targets: Mapping[str, int], leaf_crafts: int = 8,
                    crafts_per_step: int = 1) -> NodePlan:
    """The recursive oracle's tree for ``targets`` (planned from base materials).

    Args:
      leaf_crafts: a node whose flat plan has at most this many crafts does it itself.
      crafts_per_step: how many ``craft`` calls the oracle puts in one cell.
    """
    steps, _ = base_need(book, targets)
    if len(steps) <= leaf_crafts:
        return NodePlan(tuple(targets.items()), (), tuple(steps),
                        craft_steps_needed(len(steps), crafts_per_step) + 1)
    children: list[NodePlan] = []
    own: list[CraftStep] = []
    if len(targets) > 1:
        children = [delegation_plan(book, {item: count}, leaf_crafts, crafts_per_step)
                    for item, count in targets.items()]
    else:
        (item, count), = targets.items()
        recipe = book.recipes[item][0]
        runs = -(-count // recipe.yield_count)
        used = []
        for requirement, per_run in recipe.ingredients:
            name = requirement
            if name.startswith(TAG_PREFIX):
                name = book.items_for_tag(name[len(TAG_PREFIX):])[0]
            used.append((name, per_run * runs))
            if book.can_craft(name):
                children.append(delegation_plan(book, {name: per_run * runs}, leaf_crafts, crafts_per_step))
        own = [CraftStep(item, runs * recipe.yield_count, runs, tuple(used))]
    reserved = sum(child.budget for child in children)
    own_steps = craft_steps_needed(len(own), crafts_per_step) + 1          # crafts, then finish
    budget = reserved + max(1 + own_steps, 1 + len(children))               # launch step + the larger need
    return NodePlan(tuple(targets.items()), tuple(children), tuple(own), budget)
