"""A small task family and scripted policies for the runtime tests.

BagWorld: the tree shares one bag of items. A goal asks a node to add counts of items to the bag;
``pick(item)`` adds one. A node succeeds if it called ``finish`` with a non-empty message and the bag
grew by at least the asked counts since the node opened (the shape of TextCraft's success rule).
Items named ``trap*`` cannot be picked (``ActionError``), so nodes given them fail: that is how tests
make some children of one ``gather`` fail and others succeed.

SplitPolicy: a node asked for one unit picks it and finishes (2 steps); a node asked for more splits
its goal in two halves, launches both halves together with ``asyncio.gather`` and finishes with the
children's answers (2 steps plus its children). Budgets are computed so every launch fits.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence

from rao_jax.agent.policy import NodeView
from rao_jax.envs.base import ActionError, Episode, Goal


def goal_text(spec: dict[str, int]) -> str:
    return "Add to the bag: " + ", ".join(f"{n}x {k}" for k, n in sorted(spec.items()))


class BagWorld(Episode):
    """One tree's world: a shared bag; per-node snapshots at open."""

    def __init__(self, target: dict[str, int]):
        self.target = dict(target)
        self.bag: Counter[str] = Counter()
        self.snapshots: dict[int, Counter[str]] = {}
        self.goals: dict[int, Goal] = {}
        self.opened: list[tuple[int, int | None]] = []

    def root_goal(self) -> Goal:
        return Goal(goal_text(self.target), dict(self.target))

    def tool_docs(self, recursive: bool) -> str:
        doc = "pick(item: str) -> int: add one `item` to the shared bag; returns its new count.\n" \
              "view_bag() -> dict: the bag."
        if recursive:
            doc += "\nSubagent goals are dicts {item: count}."
        return doc

    def open_node(self, node_id: int, parent_id: int | None, goal: Goal) -> None:
        self.snapshots[node_id] = Counter(self.bag)
        self.goals[node_id] = goal
        self.opened.append((node_id, parent_id))

    def tools(self, node_id: int) -> dict[str, Callable]:
        def pick(item):
            if not isinstance(item, str):
                raise ActionError(f"item must be a string, got {item!r}")
            if item.startswith("trap"):
                raise ActionError(f"{item} cannot be picked")
            self.bag[item] += 1
            return self.bag[item]

        def view_bag():
            return dict(self.bag)

        return {"pick": pick, "view_bag": view_bag}

    def parse_child_goal(self, goal, context: str) -> Goal:
        if not isinstance(goal, dict) or not goal:
            raise ActionError(f"a subagent goal must be a non-empty dict {{item: count}}, got {goal!r}")
        for k, v in goal.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ActionError(f"bad goal entry {k!r}: {v!r}")
        return Goal(goal_text(goal), dict(goal), context)

    def node_success(self, node_id: int, finish_message) -> float:
        if not finish_message:
            return 0.0
        before, spec = self.snapshots[node_id], self.goals[node_id].spec
        return float(all(self.bag[k] - before[k] >= n for k, n in spec.items()))


def units(spec: dict[str, int]) -> int:
    return sum(spec.values())


def split(spec: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Two halves of a goal with at least one unit each (items first, then counts)."""
    items = sorted(spec.items())
    if len(items) > 1:
        half = len(items) // 2
        return dict(items[:half]), dict(items[half:])
    (k, n), = items
    return {k: n // 2}, {k: n - n // 2}


def budget_for(spec: dict[str, int]) -> int:
    """Steps SplitPolicy needs for a goal: 2 per node, plus the +1 reserve of every launch."""
    if units(spec) == 1:
        return 2
    a, b = split(spec)
    return 2 + budget_for(a) + 1 + budget_for(b) + 1


class SplitPolicy:
    """Divide and conquer with parallel children (see module docstring).

    ``cells`` overrides the first cell of one-unit nodes whose goal is a given item (hostile-code tests).
    """

    def __init__(self, cells: dict[str, str] | None = None):
        self.cells = cells or {}
        self.views: list[NodeView] = []

    async def act(self, view: NodeView) -> str:
        self.views.append(view)
        spec = dict(view.goal.spec)
        step = len(view.steps)
        for item, code in self.cells.items():
            if item in spec and units(spec) == 1 and step == 0:
                return f"<thought>special</thought>\n<python>\n{code}\n</python>"
        if units(spec) == 1:
            (item, _), = spec.items()
            if step == 0:
                return f"<thought>pick it</thought>\n<python>\npick({item!r})\nview_bag()\n</python>"
            return f"<thought>done</thought>\n<python>\nfinish('picked {item}')\n</python>"
        if step == 0:
            a, b = split(spec)
            code = ("import asyncio\n"
                    f"results = await asyncio.gather(launch_subagent({a!r}, {budget_for(a)}), "
                    f"launch_subagent({b!r}, {budget_for(b)}, context='second half'))\n"
                    "print(results)")
            return f"<thought>split</thought>\n<python>\n{code}\n</python>"
        return "<thought>report</thought>\n<python>\nfinish({'parts': results})\n</python>"


class ScriptPolicy:
    """Plays fixed cells per node depth: ``scripts[depth][step]``; the last entry repeats."""

    def __init__(self, scripts: Sequence[Sequence[str]]):
        self.scripts = scripts

    async def act(self, view: NodeView) -> str:
        cells = self.scripts[min(view.depth, len(self.scripts) - 1)]
        code = cells[min(len(view.steps), len(cells) - 1)]
        return f"<thought>step {len(view.steps)}</thought>\n<python>\n{code}\n</python>"


def dumps(x) -> str:
    return json.dumps(x, sort_keys=True)
