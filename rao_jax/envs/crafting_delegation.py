"""How the recursive TextCraft oracle cuts an aggregated gold plan into a delegation tree.

The aggregated plan crafts every needed item once. A node's ``Work`` is a set of those items and the
"tops" it must end up holding. A node with at most ``leaf_crafts`` items crafts them itself. Otherwise,
with the node's own last craft X (when it has one top) set aside, each branch (an ingredient of X, or
each top) has a closure: the node's items it needs. Items in two or more closures are "shared": they are
crafted first (inline, or by one preparatory child when there are many). Each branch's remaining,
exclusive items go to one child whose goal is ``{branch item: units the plan makes}`` (or are crafted
inline when there are at most ``inline_crafts``); all such children run as one parallel wave; then the
node crafts X.

Why parallel children cannot spoil each other in the shared inventory: their item sets are disjoint,
and what they consume beyond their own products (shared items, base materials) was made or stocked in
exactly the totals the plan adds up. Each child's goal item is consumed by nobody but its parent, so
its gain relative to the fork is exactly what it made, and the env grades every child fairly.

Budgets follow RAO_SPEC section 1: a launch of budget n reserves n + 1 of the caller's remaining steps
and, in the worst case that the child spends all n, costs the caller n. ``Schedule.budget`` is the least
budget under which a node runs its whole schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from rao_jax.envs.crafting_plan import CraftStep


@dataclasses.dataclass(frozen=True)
class Work:
    """Craft ``items`` (keys of ``plan``) so as to end up holding ``tops``."""

    tops: tuple[str, ...]
    items: frozenset[str]
    plan: Mapping[str, CraftStep]              # the whole aggregated plan, item -> its one craft
    order: Mapping[str, int]                   # item -> position in the plan (ingredients first)

    @classmethod
    def of_plan(cls, steps: list[CraftStep], tops: list[str]) -> Work:
        plan = {step.item: step for step in steps}
        return cls(tuple(tops), frozenset(plan), plan, {step.item: k for k, step in enumerate(steps)})

    def part(self, tops: list[str], items: set[str]) -> Work:
        return Work(tuple(tops), frozenset(items), self.plan, self.order)

    def steps(self) -> list[CraftStep]:
        return [self.plan[item] for item in sorted(self.items, key=self.order.__getitem__)]

    def inputs(self, item: str) -> list[str]:
        return [name for name, _ in self.plan[item].ingredients if name in self.items]


@dataclasses.dataclass(frozen=True)
class Child:
    targets: dict[str, int]
    work: Work
    schedule: Schedule

    @property
    def budget(self) -> int:
        return self.schedule.budget


@dataclasses.dataclass(frozen=True)
class Cell:
    """One action: crafts, or one wave of children launched together."""

    crafts: tuple[CraftStep, ...] = ()
    children: tuple[Child, ...] = ()


@dataclasses.dataclass(frozen=True)
class Schedule:
    cells: tuple[Cell, ...]        # finish rides in the last cell
    budget: int                    # least budget this node needs, descendants included
    total_steps: int               # model calls of the whole sub-tree when every node runs to plan
    depth: int                     # levels of children below this node


def _craft_cells(steps: list[CraftStep], per_cell: int) -> list[Cell]:
    return [Cell(crafts=tuple(steps[i:i + per_cell])) for i in range(0, len(steps), per_cell)]


def _closure(work: Work, start: str, within: set[str]) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        item = stack.pop()
        if item in seen or item not in within:
            continue
        seen.add(item)
        stack.extend(work.inputs(item))
    return seen


def schedule(work: Work, leaf_crafts: int = 32, crafts_per_step: int = 4, inline_crafts: int = 4) -> Schedule:
    """The cells of one node and the budget they need."""
    knobs = (leaf_crafts, crafts_per_step, inline_crafts)
    if len(work.items) <= leaf_crafts:
        cells = _craft_cells(work.steps(), crafts_per_step) or [Cell()]
        return Schedule(tuple(cells), len(cells), len(cells), 0)
    if len(work.tops) == 1:
        last = [work.tops[0]]
        rest = set(work.items) - set(last)
        branches = list(dict.fromkeys(i for i in work.inputs(last[0]) if i in rest))
    else:
        last, rest, branches = [], set(work.items), list(work.tops)
    closures = {b: _closure(work, b, rest) for b in branches}
    seen_in: dict[str, int] = {}
    for members in closures.values():
        for item in members:
            seen_in[item] = seen_in.get(item, 0) + 1
    shared = {item for item, n in seen_in.items() if n > 1}
    cells: list[Cell] = []
    if shared:
        if len(shared) > leaf_crafts:
            consumed = {name for item in shared for name in work.inputs(item)}
            tops = sorted((i for i in shared if i not in consumed), key=work.order.__getitem__)
            prep = work.part(tops, shared)
            cells.append(Cell(children=(Child({i: work.plan[i].count for i in tops}, prep, schedule(prep, *knobs)),)))
        else:
            cells += _craft_cells(work.part([], shared).steps(), crafts_per_step)
    inline: list[CraftStep] = []
    wave: list[Child] = []
    for branch in branches:
        if branch in shared:
            continue
        own = closures[branch] - shared
        part = work.part([branch], own)
        if len(own) <= inline_crafts:
            inline += part.steps()
        else:
            wave.append(Child({branch: work.plan[branch].count}, part, schedule(part, *knobs)))
    cells += _craft_cells(sorted(inline, key=lambda s: work.order[s.item]), crafts_per_step)
    if wave:
        cells.append(Cell(children=tuple(wave)))
    cells += _craft_cells([work.plan[item] for item in last], crafts_per_step)
    if not cells:
        cells.append(Cell())
    spent = budget = total = depth = 0
    for cell in cells:
        total += 1
        if cell.children:
            reserved = sum(c.budget for c in cell.children)
            budget = max(budget, spent + 1 + reserved + len(cell.children))
            spent += 1 + reserved
            total += sum(c.schedule.total_steps for c in cell.children)
            depth = max(depth, 1 + max(c.schedule.depth for c in cell.children))
        else:
            spent += 1
    return Schedule(tuple(cells), max(budget, spent), total, depth)
