"""An in-process reference driver for checking scripted policies (oracles) against an ``Episode``.

This is NOT the agent runtime (``rao_jax.agent.rollout``: sandboxed workers, token records, batched
sampler). It exists so the task families can verify their oracles end to end, and the tokenizer
corpora can be recorded, without processes: it executes the policies' CodeAct text with Python's
top-level-await compiler in a per-node namespace. What a node reads is the runtime's own: the
budget ledger (``BudgetTracker``, RAO_SPEC section 1, with its refusal texts), the action parser,
the cell's printed output, last value and cell-frame traceback (``sandbox_io``), the subagent
notes and the observation format (``protocol``). ``finish`` ends the cell, as in the sandbox.

``context_tokens``: a node whose rendered context (goal, tool docs, actions, observations) would
exceed this many tokens before a step stops there without finishing (a context-window overflow);
``count_tokens`` measures text (default: about 4 characters a token, for checks without a
tokenizer).

Every node yields to the event loop before each step (a seeded random 1-3 times), so children launched
together really interleave step by step and share the episode in varied orders, as in the runtime.
A launch counts as parallel when another launch of the same parent is in flight at the same time.

Only trusted, scripted text should run here: nothing is sandboxed.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import dataclasses
import io
import random
from collections.abc import Callable
from typing import Any

from rao_jax.agent.budget import BudgetTracker
from rao_jax.agent.policy import NodeView, Policy, StepRecord
from rao_jax.agent.protocol import format_observation, parse_action, subagent_note, subagent_unfinished
from rao_jax.agent.rollout import RolloutConfig, admit_launch
from rao_jax.agent.sandbox_io import ActionError as CellActionError
from rao_jax.agent.sandbox_io import CellFinished, compile_cell, format_error, run_compiled
from rao_jax.agent.sandbox_protocol import SandboxLimits
from rao_jax.envs.base import ActionError, Episode, Goal

_OBSERVATION_CHARS = RolloutConfig().max_observation_chars
_OUTPUT_CHARS = SandboxLimits().output_chars


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
    transcript: tuple[StepRecord, ...] = ()   # each step's action and the observation it got


@dataclasses.dataclass
class _Node:
    node_id: int
    parent_id: int | None
    depth: int
    goal: Goal
    steps: list[StepRecord] = dataclasses.field(default_factory=list)
    finished: bool = False
    message: Any = None
    launches: int = 0
    in_flight: list[list[bool]] = dataclasses.field(default_factory=list)   # [parallel?] per running child
    parallel: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)   # subagent notes for this step's observation
    cells: int = 0


def approx_tokens(text: str) -> int:
    """About 4 characters a token: the default ``count_tokens`` of checks without a tokenizer."""
    return -(-len(text) // 4)


class ScriptedRollout:
    """Runs one delegation tree of ``policy`` on ``episode``."""

    def __init__(self, episode: Episode, policy: Policy, recursive: bool, context_tokens: int | None = None,
                 tree_id: int = 0, interleave_seed: int = 0, count_tokens: Callable[[str], int] = approx_tokens):
        self.episode, self.policy, self.recursive = episode, policy, recursive
        self.context_tokens, self.tree_id, self.count_tokens = context_tokens, tree_id, count_tokens
        self._rng = random.Random(interleave_seed)
        self.outcomes: list[NodeOutcome] = []
        self.budget: BudgetTracker | None = None
        self._next_id = 0

    async def run(self, budget: int) -> list[NodeOutcome]:
        self.budget = BudgetTracker(0, budget)
        self._next_id = 1
        await self._run_node(0, self.episode.root_goal(), None, 0)
        self.budget.check_invariants()
        return sorted(self.outcomes, key=lambda o: o.node_id)

    async def _run_node(self, node_id: int, goal: Goal, parent_id: int | None, depth: int) -> _Node:
        node = _Node(node_id, parent_id, depth, goal)
        ledger = self.budget
        self.episode.open_node(node_id, parent_id, goal)
        namespace = self._namespace(node)
        tokens = self.count_tokens
        base_context = tokens(goal.text + goal.context + self.episode.tool_docs(self.recursive))
        overflow = False
        try:
            while not node.finished and ledger.left(node_id) > 0:
                used = base_context + sum(tokens(s.action) + tokens(s.observation) for s in node.steps)
                if self.context_tokens is not None and used > self.context_tokens:
                    overflow = True
                    break
                for _ in range(self._rng.randint(1, 3)):
                    await asyncio.sleep(0)
                view = NodeView(self.tree_id, node_id, parent_id, depth, goal, ledger.left(node_id),
                                self.recursive, tuple(node.steps), counts_in_text=self.episode.counts_in_text)
                ledger.take_step(node_id)
                text = await self.policy.act(view)
                text = text if isinstance(text, str) else text.text
                node.steps.append(StepRecord(text, await self._step(node, text, namespace)))
        finally:
            ledger.end(node_id)
        message = node.message if node.finished else None
        success = self.episode.node_success(node_id, message)
        self.outcomes.append(NodeOutcome(node_id, parent_id, depth, success, len(node.steps), message, overflow,
                                         node.parallel, node.launches, tuple(node.steps)))
        return node

    def _namespace(self, node: _Node) -> dict[str, Any]:
        namespace: dict[str, Any] = dict(self.episode.tools(node.node_id))
        namespace["asyncio"] = asyncio
        namespace["goal"], namespace["budget"] = dict(node.goal.spec), self.budget.left(node.node_id)

        def finish(message: Any = "") -> None:
            node.finished, node.message = True, message
            raise CellFinished
        namespace["finish"] = finish
        if self.recursive:
            async def launch_subagent(goal: Any, budget: Any, context: Any = "") -> Any:
                return await self._launch(node, goal, budget, context)
            namespace["launch_subagent"] = launch_subagent
        return namespace

    async def _launch(self, node: _Node, goal: Any, budget: Any, context: Any) -> Any:
        child_id = self._next_id
        child_goal = admit_launch(self.episode, self.budget, node.node_id, child_id, goal, budget, context)
        if isinstance(child_goal, str):
            return child_goal
        self._next_id += 1
        node.launches += 1
        mark = [bool(node.in_flight)]
        for other in node.in_flight:
            other[0] = True
        node.in_flight.append(mark)
        try:
            child = await self._run_node(child_id, child_goal, node.node_id, node.depth + 1)
        finally:
            node.in_flight.remove(mark)
            node.parallel += mark[0]
        how = "finished" if child.finished else "ran out of budget without calling finish"
        counts = self.episode.counts_in_text
        node.notes.append(subagent_note(child_id, budget, self.budget.total_used(child_id), how, counts))
        return child.message if child.finished else subagent_unfinished(child_id, budget, counts=counts)

    async def _step(self, node: _Node, text: str, namespace: dict[str, Any]) -> str:
        """One action's observation, as the runtime renders it."""
        parsed = parse_action(text)
        if parsed.code is None:
            return parsed.error
        node.notes = []
        output = io.StringIO()
        namespace["print"] = lambda *args, **kw: builtins.print(*args, **{**kw, "file": output})
        value = error = None
        try:
            filename = f"<cell {node.node_id}/{node.cells}>"
            node.cells += 1
            value = await run_compiled(compile_cell(ast.parse(parsed.code, filename), filename), namespace,
                                       _OUTPUT_CHARS)
        except CellFinished:
            pass
        except ActionError as err:   # what the sandbox's tool proxy raises for an environment's refusal
            error = format_error(_as_cell_error(err), _OUTPUT_CHARS)
        except Exception as err:  # the cell's own bug is an observation, as in the real runtime
            error = format_error(err, _OUTPUT_CHARS)
        notes = [*([parsed.note] if parsed.note else []), *node.notes]
        return format_observation(output.getvalue(), value, error, notes, _OBSERVATION_CHARS)


def _as_cell_error(err: ActionError) -> Exception:
    """The environment's refusal as the sandbox's cells see it: a ``sandbox_io.ActionError`` raised
    from the same frames."""
    cell_err = CellActionError(str(err))
    return cell_err.with_traceback(err.__traceback__)


def run_tree(episode: Episode, policy: Policy, budget: int, recursive: bool,
             context_tokens: int | None = None, interleave_seed: int = 0,
             count_tokens: Callable[[str], int] = approx_tokens) -> list[NodeOutcome]:
    """Synchronous wrapper: the outcomes of every node, root first."""
    rollout = ScriptedRollout(episode, policy, recursive, context_tokens, interleave_seed=interleave_seed,
                              count_tokens=count_tokens)
    return asyncio.run(rollout.run(budget))
