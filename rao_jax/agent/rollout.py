"""The rollout scheduler: many delegation trees at once, every live node stepping concurrently.

Each node is an asyncio task that loops: ``await policy.act(view)`` (with a model-backed policy every
live node is one request to the batched sampler, so all nodes of all trees share its batch), parse
the action, run the cell in the tree's sandbox session, record the step. A cell that awaits
``launch_subagent`` keeps its node suspended (the sampler keeps the node's KV; the node issues no
request) while the child runs as its own task; when the child ends, its finish message is the
awaited value and a note of the budget it used is added to the parent's observation, which the
policy appends to the node's sequence at its next step.

Budgets follow ``budget.BudgetTracker``; caps and flat mode come from ``RolloutConfig``. In flat mode
``launch_subagent`` is in neither the namespace nor (for model policies, which read
``view.recursive``) the prompt.

Each child is its own node with its own record, so its success is credited to it and only to it,
however many children one ``asyncio.gather`` launched.

A policy may end a node early by returning ``EndNode`` (a model-backed policy does when the node's
context window is full): no step is taken or charged, the record's ``end_reason`` is the given tag
and the parent's ``launch_subagent`` returns the given explanation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from rao_jax.agent.budget import BudgetCaps, BudgetTracker
from rao_jax.agent.policy import EndNode, NodeView, Policy, PolicyAction, StepRecord
from rao_jax.agent.protocol import format_observation, parse_action, subagent_note, subagent_unfinished
from rao_jax.agent.sandbox import SandboxPool, SandboxSession
from rao_jax.agent.trace import write_trace
from rao_jax.agent.tree import NodeRecord, StepTrace, TreeResult
from rao_jax.envs.base import ActionError, Episode, Goal, Task

RUNTIME_TOOLS = ("finish", "launch_subagent")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How trees are rolled out."""

    recursive: bool = True                # False: the flat baseline (no launch_subagent anywhere)
    caps: BudgetCaps = BudgetCaps()
    max_observation_chars: int = 4_000    # observations longer than this keep head and tail
    trace_dir: str | None = None          # if set, every finished tree is written there as JSONL
    goal_variables: bool = False          # predefine `goal` (the goal's spec) and `budget` in each namespace


GOAL_VARIABLES_DOC = "Set for you: goal (your task as a dict), budget (your steps)."


def node_tool_docs(episode: Episode, config: RolloutConfig) -> str:
    """The tools a node's system prompt documents: its episode's, plus the goal variables when set."""
    docs = episode.tool_docs(config.recursive)
    return f"{docs}\n{GOAL_VARIABLES_DOC}" if config.goal_variables else docs


@dataclasses.dataclass
class _Node:
    """Mutable state of a node while its tree runs; frozen into a NodeRecord at the end."""

    node_id: int
    parent_id: int | None
    depth: int
    fork_step: int | None
    goal: Goal
    budget: int
    start_time: float
    end_time: float = 0.0
    end_reason: str = ""
    finished: bool = False
    finish_message: Any = None
    ended_by_policy: EndNode | None = None
    success: float = 0.0
    current_step: int = 0
    children: list[int] = dataclasses.field(default_factory=list)
    step_children: list[int] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)     # child-ended notes for this step
    steps: list[StepTrace] = dataclasses.field(default_factory=list)
    views: list[StepRecord] = dataclasses.field(default_factory=list)
    tokens: list[int] | None = None
    loss_mask: list[int] | None = None
    logprobs: list[float] | None = None
    policy_version: int | None = None


@dataclasses.dataclass
class _Tree:
    tree_id: int
    task_id: str | None
    episode: Episode
    budget: BudgetTracker
    session: SandboxSession
    root_budget: int
    tool_docs: str
    max_context: int | None
    nodes: dict[int, _Node] = dataclasses.field(default_factory=dict)
    tasks: list[asyncio.Task] = dataclasses.field(default_factory=list)
    next_id: int = 1


def admit_launch(episode: Episode, ledger: BudgetTracker, parent_id: int, child_id: int, goal: Any, budget: Any,
                 context: Any) -> Goal | str:
    """A ``launch_subagent`` call checked: the child's goal, its budget now reserved from the parent's,
    or the refusal the parent's cell gets instead (bad context or goal, or the budget rules)."""
    if not isinstance(context, str):
        return f"launch_subagent refused: context must be a string, got {type(context).__name__}."
    try:
        child_goal = episode.parse_child_goal(goal, context)
    except ActionError as e:
        return f"launch_subagent refused: {e}"
    refusal = ledger.try_launch(parent_id, child_id, budget)
    return child_goal if refusal is None else refusal


class RolloutRunner:
    """Runs trees with one policy over one sandbox pool."""

    def __init__(self, policy: Policy, pool: SandboxPool, config: RolloutConfig = RolloutConfig(),
                 on_node_end: Callable[[int, int], Awaitable[None]] | None = None):
        """``on_node_end(tree_id, node_id)`` is awaited once a node has taken its last step: a
        model-backed policy frees the node's KV there (``SamplingEngine.release((tree_id, node_id))``)."""
        self.policy = policy
        self.pool = pool
        self.config = config
        self.on_node_end = on_node_end
        self._tree_ids = 0

    async def run_group(self, tasks: Sequence[Task], make_episode: Callable[[Task, int], Episode],
                        group_size: int, on_tree_end: Callable[[TreeResult], None] | None = None,
                        max_context: Callable[[Task], int | None] | None = None) -> list[TreeResult]:
        """``group_size`` trees per task, all running at once; results ordered task-major.
        ``on_tree_end`` is called with each tree as it finishes (progress bars); ``max_context(task)``
        caps the window of a task's nodes (``run_tree``)."""
        async def one(task: Task, g: int) -> TreeResult:
            result = await self.run_tree(make_episode(task, g), task.max_steps, task_id=task.task_id,
                                         max_context=None if max_context is None else max_context(task))
            if on_tree_end is not None:
                on_tree_end(result)
            return result

        return list(await asyncio.gather(*(one(task, g) for task in tasks for g in range(group_size))))

    async def run_tree(self, episode: Episode, root_budget: int, task_id: str | None = None, *,
                       max_context: int | None = None) -> TreeResult:
        """Roll out one tree to the end (every node ended) and return its records. ``max_context``
        reaches the policy in every ``NodeView`` (a window cap of this tree's family)."""
        self._tree_ids += 1
        tree = _Tree(self._tree_ids, task_id, episode, BudgetTracker(0, root_budget, self.config.caps),
                     self.pool.session(), root_budget, node_tool_docs(episode, self.config), max_context)
        start = time.time()
        try:
            goal = episode.root_goal()
            episode.open_node(0, None, goal)
            tree.tasks.append(asyncio.create_task(self._run_node(tree, 0, None, goal, root_budget, 0, None)))
            # Children launched but never awaited by their parent's cell may outlive it: wait for all.
            while pending := [t for t in tree.tasks if not t.done()]:
                await asyncio.wait(pending)
            for t in tree.tasks:
                if t.exception() is not None:   # a policy or runtime bug, not a model mistake
                    raise t.exception()
        except BaseException:
            for t in tree.tasks:
                t.cancel()
            await asyncio.gather(*tree.tasks, return_exceptions=True)
            raise
        finally:
            await tree.session.close()
        tree.budget.check_invariants()
        result = TreeResult(tree.tree_id, task_id, self.config.recursive, root_budget,
                            tuple(self._record(tree, tree.nodes[i]) for i in sorted(tree.nodes)), start, time.time())
        if result.root.total_steps != result.model_calls:
            raise RuntimeError(f"tree {tree.tree_id}: budget ledger charged {result.root.total_steps} steps "
                               f"but {result.model_calls} were taken")
        if self.config.trace_dir is not None:
            write_trace(result, self.config.trace_dir)
        return result

    def _record(self, tree: _Tree, n: _Node) -> NodeRecord:
        def tup(x):
            return None if x is None else tuple(x)

        return NodeRecord(
            tree_id=tree.tree_id, node_id=n.node_id, parent_id=n.parent_id, depth=n.depth, fork_step=n.fork_step,
            goal=n.goal, budget=n.budget, own_steps=tree.budget.own_steps(n.node_id),
            total_steps=tree.budget.total_used(n.node_id), start_time=n.start_time, end_time=n.end_time,
            end_reason=n.end_reason, finish_message=n.finish_message if n.finished else None, success=n.success,
            children=tuple(n.children), steps=tuple(n.steps), tokens=tup(n.tokens), loss_mask=tup(n.loss_mask),
            logprobs=tup(n.logprobs), policy_version=n.policy_version)

    def _tools(self, tree: _Tree, node: _Node):
        env_tools = dict(tree.episode.tools(node.node_id))
        clash = set(env_tools) & set(RUNTIME_TOOLS)
        if clash:
            raise ValueError(f"Episode.tools returned runtime-owned names {sorted(clash)}")

        def finish(message=None):
            if node.finished:
                raise ActionError("finish was already called")
            node.finished, node.finish_message = True, message
            return None

        async def launch_subagent(goal, budget, context=""):
            return await self._launch(tree, node, goal, budget, context)

        sync_tools = {**env_tools, "finish": finish}
        return sync_tools, ({"launch_subagent": launch_subagent} if self.config.recursive else {})

    async def _launch(self, tree: _Tree, parent: _Node, goal: Any, budget: Any, context: Any) -> Any:
        child_id = tree.next_id
        child_goal = admit_launch(tree.episode, tree.budget, parent.node_id, child_id, goal, budget, context)
        if isinstance(child_goal, str):
            return child_goal
        tree.next_id += 1
        parent.children.append(child_id)
        parent.step_children.append(child_id)
        # Open the child at the fork itself (what its success is relative to), not when its task starts.
        tree.episode.open_node(child_id, parent.node_id, child_goal)
        task = asyncio.create_task(self._run_node(tree, child_id, parent.node_id, child_goal, budget,
                                                  parent.depth + 1, parent.current_step))
        tree.tasks.append(task)
        # shield: if the parent's cell dies (its worker was killed), the child still runs to its end.
        child = await asyncio.shield(task)
        used = tree.budget.total_used(child_id)
        if child.finished:
            how = "finished"
        elif child.ended_by_policy is not None:
            how = f"ended early ({child.ended_by_policy.reason}) without calling finish"
        else:
            how = "ran out of budget without calling finish"
        counts = tree.episode.counts_in_text
        parent.notes.append(subagent_note(child_id, budget, used, how, counts))
        if child.finished:
            return child.finish_message
        early = child.ended_by_policy
        return subagent_unfinished(child_id, budget, None if early is None else early.message, counts)

    async def _run_node(self, tree: _Tree, node_id: int, parent_id: int | None, goal: Goal, budget: int,
                        depth: int, fork_step: int | None) -> _Node:
        node = _Node(node_id, parent_id, depth, fork_step, goal, budget, time.time())
        tree.nodes[node_id] = node
        sync_tools, async_tools = self._tools(tree, node)
        try:
            if self.config.goal_variables:   # not a step: the namespace starts with the node's task as data
                await tree.session.run_cell(node_id, f"goal = {dict(goal.spec)!r}\nbudget = {budget}", {}, {})
            while not node.finished and node.ended_by_policy is None and tree.budget.left(node_id) > 0:
                await self._step(tree, node, sync_tools, async_tools)
        finally:
            node.end_time = time.time()
            if node.finished:
                node.end_reason = "finished"
            else:
                node.end_reason = "budget" if node.ended_by_policy is None else node.ended_by_policy.reason
            tree.budget.end(node_id)
            await tree.session.drop(node_id)
            if self.on_node_end is not None:
                await self.on_node_end(tree.tree_id, node_id)
        node.success = float(tree.episode.node_success(node_id, node.finish_message if node.finished else None))
        return node

    async def _step(self, tree: _Tree, node: _Node, sync_tools, async_tools) -> None:
        view = NodeView(tree.tree_id, node.node_id, node.parent_id, node.depth, node.goal,
                        tree.budget.left(node.node_id), self.config.recursive, tuple(node.views),
                        tree.tool_docs, tree.max_context, tree.episode.counts_in_text)
        started = time.time()
        action = await self.policy.act(view)
        policy_seconds = time.time() - started
        if isinstance(action, EndNode):   # no action: the node ends here, no step is charged
            node.ended_by_policy = action
            return
        tree.budget.take_step(node.node_id)
        text, tokens = (action.text, action.tokens) if isinstance(action, PolicyAction) else (action, None)
        if not isinstance(text, str):
            raise TypeError(f"policy returned {type(text).__name__}, expected str, PolicyAction or EndNode")
        self._add_tokens(node, tokens)
        node.current_step = len(node.steps)
        node.step_children, node.notes = [], []
        parsed = parse_action(text)
        cell_started = time.time()
        if parsed.code is None:
            observation = parsed.error
        else:
            result = await tree.session.run_cell(node.node_id, parsed.code, sync_tools, async_tools)
            notes = [*([parsed.note] if parsed.note else []), *node.notes, *result.notes]
            observation = format_observation(result.output, result.value, result.error, notes,
                                             self.config.max_observation_chars)
        node.steps.append(StepTrace(
            index=node.current_step, action=text, observation=observation, parsed=parsed.code is not None,
            started=started, policy_seconds=policy_seconds, cell_seconds=time.time() - cell_started,
            children=tuple(node.step_children),
            prompt_token_count=None if tokens is None else len(tokens.prompt),
            response_token_count=None if tokens is None else len(tokens.response)))
        node.views.append(StepRecord(text, observation))

    @staticmethod
    def _add_tokens(node: _Node, tokens) -> None:
        if tokens is None:
            if node.tokens is not None:
                raise ValueError(f"node {node.node_id}: policy gave tokens at earlier steps but not now")
            return
        if node.tokens is None:
            if node.steps:
                raise ValueError(f"node {node.node_id}: policy gave tokens only from step {len(node.steps)} on")
            node.tokens, node.loss_mask, node.logprobs = [], [], []
        node.tokens += [*tokens.prompt, *tokens.response]
        node.loss_mask += [0] * len(tokens.prompt) + [1] * len(tokens.response)
        node.logprobs += [0.0] * len(tokens.prompt) + list(tokens.logprobs)
        if tokens.policy_version is not None:
            v = tokens.policy_version
            node.policy_version = v if node.policy_version is None else min(node.policy_version, v)
