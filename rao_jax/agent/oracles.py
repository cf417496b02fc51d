"""Oracle policies: scripted experts for every family, flat and recursive, behind the ``Policy`` interface.

An oracle knows its task's world (recipe book, rows, knowledge base) and writes one CodeAct action per
step, ``<thought>...</thought>\n<python>...</python>``, that calls the env tools, ``finish(...)``,
``await launch_subagent(...)`` and ``await asyncio.gather(...)`` exactly as a model would. It paces itself
(one read / search / view per step; ``crafts_per_step`` crafts per TextCraft cell), so the flat oracle
runs out of steps or context where its pace makes it, and the recursive oracle is the upper bound of the
evaluation tables and a source of warm-start demonstrations.

An oracle decides each action from the node's goal (``view.goal.spec``) and how many steps the node has
taken. ONE oracle object must serve every node of the trees of its task: the TextCraft oracle hands
each child its share of the gold plan through that object, keyed by (tree, parent, goal).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from rao_jax.agent.craft_oracles import (  # noqa: F401  (the crafting oracles, importable from here too)
    ObservableCraftOracle,
    ProgramCraftOracle,
    TextCraftOracle,
    crafting_oracle,
)
from rao_jax.agent.policy import NodeView
from rao_jax.agent.protocol import format_action
from rao_jax.envs import chain_hop, labeled_rows
from rao_jax.envs.base import Task

action = format_action   # the CodeAct text of one step: <thought>...</thought> and a <python> cell


class RowsOracle:
    """Reads every row itself (flat), or splits the rows over a tree of children that count by group."""

    def __init__(self, task: Task, recursive: bool, fan_out: int = 8):
        self.rows = task.spec["rows"]
        self.question = task.spec["question"]
        self.max_read = int(task.spec["max_read"])
        self.recursive, self.fan_out = recursive, fan_out

    def _reads(self, start: int, stop: int) -> list[str]:
        return [action("Read the next rows.", f"print(read_rows({a}, {min(stop, a + self.max_read)}))")
                for a in range(start, stop, self.max_read)]

    def _ranges(self, start: int, stop: int) -> list[tuple[int, int]]:
        chunks = math.ceil((stop - start) / self.max_read)
        per = math.ceil(chunks / min(self.fan_out, chunks)) * self.max_read
        return [(a, min(stop, a + per)) for a in range(start, stop, per)]

    def budget(self, start: int, stop: int) -> int:
        """Steps the recursive oracle needs to count rows start..stop-1 (descendants included)."""
        if stop - start <= self.max_read:
            return 2
        children = [self.budget(a, b) for a, b in self._ranges(start, stop)]
        return sum(children) + max(2, 1 + len(children))

    def _delegate(self, start: int, stop: int, count_by: tuple[str, ...], combine: str) -> list[str]:
        calls = ",\n    ".join(f"launch_subagent({{'rows': [{a}, {b}], 'count_by': {list(count_by)!r}}}, "
                               f"{self.budget(a, b)})" for a, b in self._ranges(start, stop))
        merge = ("counts = {}\nfor part in parts:\n    for key, n in part.items():\n"
                 "        counts[key] = counts.get(key, 0) + n\n")
        launch = f"import asyncio\nparts = await asyncio.gather(\n    {calls},\n)"
        return [action("Split the rows among children.", launch),
                action("Merge the partial counts and answer.", merge + combine)]

    async def act(self, view: NodeView) -> str:
        spec = view.goal.spec
        if "rows" in spec:  # a child: count its range
            start, stop = spec["rows"]
            count_by = tuple(spec["count_by"])
            if stop - start <= self.max_read or not view.recursive:
                truth = labeled_rows.group_counts(self.rows[start:stop], count_by)
                script = self._reads(start, stop) + [action("Counted.", f"finish({truth!r})")]
            else:
                script = self._delegate(start, stop, count_by, "finish(counts)")
        elif self.recursive and view.recursive:
            count_by = labeled_rows.grouping_for(self.question["kind"])
            script = self._delegate(0, len(self.rows), count_by, _combine_code(self.question))
        else:
            gold = labeled_rows.answer(self.rows, self.question)
            script = self._reads(0, len(self.rows)) + [action("I have read every row.", f"finish({gold!r})")]
        return script[min(len(view.steps), len(script) - 1)]


def _combine_code(q: dict[str, Any]) -> str:
    """Code that turns merged ``counts`` into the answer of question ``q``."""
    labels = list(labeled_rows.LABELS)
    kind, label = q["kind"], q["label"]
    if kind == "count_label":
        return f"finish(counts.get({label!r}, 0))"
    if kind in ("most_frequent", "least_frequent"):
        pick = "-1" if kind == "most_frequent" else "0"
        return f"finish(sorted({labels!r}, key=lambda lab: (counts.get(lab, 0), lab))[{pick}])"
    if kind == "compare":
        return (f"a, b = counts.get({label!r}, 0), counts.get({q['other']!r}, 0)\n"
                "finish('more' if a > b else 'less' if a < b else 'same')")
    if kind == "users_with_label":
        return f"finish(sorted({{k.split('|')[0] for k in counts if k.split('|')[1] == {label!r}}}))"
    key = f"{q['user']}|{label}" if kind == "user_label" else f"{q['month']}|{label}"
    return f"finish(counts.get({key!r}, 0))"


class HopOracle:
    """Searches and views each hop's document itself (flat), or launches one child per hop (recursive),
    chaining hops through a REPL variable and running independent branches with ``asyncio.gather``."""

    def __init__(self, task: Task, recursive: bool):
        self.entities = task.spec["kb"]["entities"]
        self.doc_of = {text.split(" is a ")[0]: d for d, text in task.spec["kb"]["docs"].items()}
        self.chains = task.spec["chains"]
        self.recursive = recursive

    def _hop_steps(self, entity: str) -> list[str]:
        return [action(f"Find {entity}'s document.", f"print(search({entity!r}))"),
                action("Read it.", f"print(view({self.doc_of[entity]!r}))")]

    async def act(self, view: NodeView) -> str:
        spec = view.goal.spec
        if "entity" in spec:  # a one-hop child
            answer = self.entities[spec["entity"]]["relations"][spec["relation"]]
            script = self._hop_steps(spec["entity"]) + [action("Found it.", f"finish({answer!r})")]
        elif self.recursive and view.recursive:
            helper = ("import asyncio\n\n"
                      "async def follow(name, relations):\n    for rel in relations:\n"
                      "        name = await launch_subagent({'entity': name, 'relation': rel}, 3)\n    return name\n")
            calls = ", ".join(f"follow({c['start']!r}, {c['relations']!r})" for c in self.chains)
            final = "finish(answers[0])" if len(self.chains) == 1 else "finish(list(answers))"
            script = [action("One child per hop; independent chains run in parallel.",
                             helper + f"answers = await asyncio.gather({calls})\n{final}")]
        else:
            script = []
            answers = []
            for chain in self.chains:
                name = chain["start"]
                for rel in chain["relations"]:
                    script += self._hop_steps(name)
                    name = self.entities[name]["relations"][rel]
                answers.append(name)
            final = answers[0] if len(answers) == 1 else answers
            script.append(action("Followed every hop.", f"finish({final!r})"))
        return script[min(len(view.steps), len(script) - 1)]


def rows_oracle(task: Task, recursive: bool, style: str = "plan", **knobs: Any):
    """The LabeledRows oracle of ``style``: ``plan`` (``RowsOracle``: counts written in, any question)
    or ``program`` (``rows_program.RowsProgramOracle``: program cells, the model labels what it read)."""
    if style == "program":
        from rao_jax.agent.rows_program import RowsProgramOracle
        return RowsProgramOracle(task, recursive, **knobs)
    if style != "plan":
        raise ValueError(f"LabeledRows oracle style must be 'plan' or 'program', got {style!r}")
    return RowsOracle(task, recursive, **knobs)


def hop_oracle(task: Task, recursive: bool, style: str = "plan", **knobs: Any):
    """The ChainHop oracle of ``style``: ``plan`` (``HopOracle``: names written in) or ``program``
    (``hop_program.HopProgramOracle``: program cells, the model labels the sentences it read)."""
    if style == "program":
        from rao_jax.agent.hop_program import HopProgramOracle
        return HopProgramOracle(task, recursive, **knobs)
    if style != "plan" or knobs:
        raise ValueError(f"ChainHop oracle style must be 'plan' (no knobs) or 'program', got {style!r} {knobs}")
    return HopOracle(task, recursive)


# Oracle factories by ``Task.family``: ``(task, recursive, **knobs) -> Policy``.
_ORACLES: dict[str, Callable[..., Any]] = {
    "textcraft_synth": crafting_oracle,
    "textcraft_minecraft": crafting_oracle,
    labeled_rows.FAMILY: lambda task, recursive, **knobs: rows_oracle(task, recursive, **knobs),
    chain_hop.FAMILY: lambda task, recursive, **knobs: hop_oracle(task, recursive, **knobs),
}


def register_oracle(task_family: str, factory: Callable[..., Any]) -> None:
    """Makes ``factory(task, recursive, **knobs)`` the oracle of tasks whose ``Task.family`` is ``task_family``."""
    _ORACLES[task_family] = factory


def make_oracle(task: Task, recursive: bool, **knobs: Any):
    """The oracle policy of ``task``'s family (knobs: the family oracle's, e.g. ``style``, ``mistake_rate``)."""
    try:
        factory = _ORACLES[task.family]
    except KeyError:
        raise ValueError(f"no oracle for family {task.family!r}; known: {sorted(_ORACLES)}") from None
    return factory(task, recursive, **knobs)
