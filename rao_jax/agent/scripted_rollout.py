"""An in-process reference driver for checking scripted policies (oracles) against an ``Episode``.

This is NOT the agent runtime (``rao_jax.agent``: sandboxed workers, token records, batched sampler).
It exists so the task families can verify their oracles end to end before and beside that runtime: it
executes the policies' CodeAct text with Python's top-level-await compiler in a per-node namespace,
and applies the budget rule of RAO_SPEC section 1:

- every step costs the node one step of its own budget;
- ``launch_subagent(goal, budget)`` reserves ``budget + 1`` of the caller's remaining steps (a launch
  that does not fit, or a bad goal, returns an explanatory string instead of spawning); when the child
  ends, the caller gets back what the child left unused plus the one step kept for using the answer;
- a node whose rendered context (goal, tool docs, actions, observations; ~4 characters a token) would
  exceed ``context_tokens`` before a step stops there without finishing (a context-window overflow).

Every node yields to the event loop before each step (a seeded random 1-3 times), so children launched
together really interleave step by step and share the episode in varied orders, as in the runtime.
A launch counts as parallel when another launch of the same parent is in flight at the same time.

Only trusted, scripted text should run here: nothing is sandboxed.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import random
import re
from typing import Any

from rao_jax.agent.policy import NodeView, Policy, StepRecord
from rao_jax.envs.base import ActionError, Episode, Goal

_PYTHON = re.compile(r"<python>(.*?)</python>", re.S)


@dataclasses.dataclass(frozen=True)
class NodeOutcome:
    node_id: int
    parent_id: int | None
    depth: int
    success: float
    steps: int                  # the node's own model calls
    finish_message: Any
    overflow: bool              # stopped by the context window
    parallel_launches: int      # launches that ran while a sibling launch was in flight
    launches: int


@dataclasses.dataclass
class _Node:
    node_id: int
    parent_id: int | None
    depth: int
    goal: Goal
    remaining: int
    steps: list[StepRecord] = dataclasses.field(default_factory=list)
    finished: bool = False
    message: Any = None
    launches: int = 0
    in_flight: list[list[bool]] = dataclasses.field(default_factory=list)   # [parallel?] per running child
    parallel: int = 0


def _tokens(text: str) -> int:
    return -(-len(text) // 4)


class ScriptedRollout:
    """Runs one delegation tree of ``policy`` on ``episode``."""

    def __init__(self, episode: Episode, policy: Policy, recursive: bool, context_tokens: int | None = None,
                 tree_id: int = 0, interleave_seed: int = 0):
        self.episode, self.policy, self.recursive = episode, policy, recursive
        self.context_tokens, self.tree_id = context_tokens, tree_id
        self._rng = random.Random(interleave_seed)
        self.outcomes: list[NodeOutcome] = []
        self._next_id = 0

    async def run(self, budget: int) -> list[NodeOutcome]:
        await self._run_node(self.episode.root_goal(), None, 0, budget)
        return sorted(self.outcomes, key=lambda o: o.node_id)

    async def _run_node(self, goal: Goal, parent_id: int | None, depth: int, budget: int) -> _Node:
        node = _Node(self._next_id, parent_id, depth, goal, budget)
        self._next_id += 1
        self.episode.open_node(node.node_id, parent_id, goal)
        namespace = self._namespace(node)
        base_context = _tokens(goal.text + goal.context + self.episode.tool_docs(self.recursive))
        overflow = False
        while not node.finished and node.remaining > 0:
            used = base_context + sum(_tokens(s.action) + _tokens(s.observation) for s in node.steps)
            if self.context_tokens is not None and used > self.context_tokens:
                overflow = True
                break
            for _ in range(self._rng.randint(1, 3)):
                await asyncio.sleep(0)
            node.remaining -= 1
            view = NodeView(self.tree_id, node.node_id, parent_id, depth, goal, node.remaining + 1,
                            self.recursive, tuple(node.steps))
            text = await self.policy.act(view)
            observation = await self._execute(text, namespace)
            node.steps.append(StepRecord(text, observation))
        message = node.message if node.finished else None
        success = self.episode.node_success(node.node_id, message)
        self.outcomes.append(NodeOutcome(node.node_id, parent_id, depth, success, len(node.steps), message, overflow,
                                         node.parallel, node.launches))
        return node

    def _namespace(self, node: _Node) -> dict[str, Any]:
        out: list[str] = []
        namespace: dict[str, Any] = dict(self.episode.tools(node.node_id))
        namespace["asyncio"] = asyncio
        namespace["goal"], namespace["budget"] = dict(node.goal.spec), node.remaining   # as goal_variables
        namespace["__out__"] = out
        namespace["print"] = lambda *args, **kw: out.append(" ".join(str(a) for a in args))

        def finish(message: Any = "") -> str:
            node.finished, node.message = True, message
            return "finished"
        namespace["finish"] = finish
        if self.recursive:
            async def launch_subagent(goal: Any, budget: Any, context: str = "") -> Any:
                if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
                    return f"launch refused: budget must be a positive int, got {budget!r}"
                if budget + 1 > node.remaining:
                    return (f"launch refused: budget {budget} needs {budget + 1} steps, "
                            f"only {node.remaining} left")
                try:
                    child_goal = self.episode.parse_child_goal(goal, context)
                except ActionError as err:
                    return f"launch refused: {err}"
                node.remaining -= budget + 1
                node.launches += 1
                mark = [bool(node.in_flight)]
                for other in node.in_flight:
                    other[0] = True
                node.in_flight.append(mark)
                try:
                    child = await self._run_node(child_goal, node.node_id, node.depth + 1, budget)
                finally:
                    node.in_flight.remove(mark)
                    node.parallel += mark[0]
                node.remaining += child.remaining + 1
                return child.message if child.finished else "the subagent ended without calling finish"
            namespace["launch_subagent"] = launch_subagent
        return namespace

    async def _execute(self, text: str, namespace: dict[str, Any]) -> str:
        match = _PYTHON.search(text)
        if not match:
            return "Error: no <python>...</python> cell in the action"
        out: list[str] = namespace["__out__"]
        out.clear()
        try:
            code = compile(match.group(1), "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)  # noqa: S307 - trusted scripted text only (see module docstring)
            if asyncio.iscoroutine(result):
                await result
        except ActionError as err:
            out.append(f"Error: {err}")
        except Exception as err:  # the cell's own bug is an observation, as in the real runtime
            out.append(f"{type(err).__name__}: {err}")
        return "\n".join(out) or "(no output)"


def run_tree(episode: Episode, policy: Policy, budget: int, recursive: bool,
             context_tokens: int | None = None, interleave_seed: int = 0) -> list[NodeOutcome]:
    """Synchronous wrapper: the outcomes of every node, root first."""
    rollout = ScriptedRollout(episode, policy, recursive, context_tokens, interleave_seed=interleave_seed)
    return asyncio.run(rollout.run(budget))
