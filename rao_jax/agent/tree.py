"""Per-node records of a finished delegation tree (RAO_SPEC section 1).

A node's record carries what the learner needs (tokens, behaviour log-probs, loss mask, own
success, parent / depth for the tree reward) and what a user needs to see what the agent did (the
steps, timings, finish message). Token fields are None when the node was driven by a policy that
works on text (scripted policies, oracles); a model-backed policy fills them through
``PolicyAction.tokens``.

Token layout of one node: the concatenation, step by step, of the prompt segment the policy fed
(whole prompt at step 0, observation turn + assistant header later) and the sampled response. The
loss mask is 1 on response tokens only; ``logprobs`` holds the behaviour log-prob of each response
token and 0.0 elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from rao_jax.envs.base import Goal


@dataclasses.dataclass(frozen=True)
class StepTrace:
    """One step of one node: the action, what it produced, and where the time went."""

    index: int                     # 0-based step index within the node
    action: str
    observation: str
    parsed: bool                   # False when the action text had no usable <python> cell
    started: float                 # wall-clock seconds (time.time()) when the policy was asked
    policy_seconds: float          # waiting for the policy (sampler queueing included)
    cell_seconds: float            # running the cell, awaiting subagents included
    children: tuple[int, ...] = ()  # node ids launched by this step's cell
    prompt_token_count: int | None = None
    response_token_count: int | None = None


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """Everything recorded about one node; frozen once its tree has ended."""

    tree_id: int
    node_id: int
    parent_id: int | None
    depth: int
    fork_step: int | None          # index of the parent's step whose cell launched this node
    goal: Goal
    budget: int
    own_steps: int                 # steps (policy calls) this node took itself
    total_steps: int               # own steps plus all descendants' steps
    start_time: float
    end_time: float
    end_reason: str                # "finished" | "budget" | "error" | an EndNode reason, e.g. "context"
    finish_message: Any | None     # what the node passed to finish(), None if it never did
    success: float                 # s_v from Episode.node_success
    children: tuple[int, ...]
    steps: tuple[StepTrace, ...]
    tokens: tuple[int, ...] | None = None
    loss_mask: tuple[int, ...] | None = None
    logprobs: tuple[float, ...] | None = None
    policy_version: int | None = None   # the oldest sampler weights version behind its tokens
    token_counts: tuple[int, int] | None = None  # (prompt, response) once the token lists are dropped

    def __post_init__(self):
        if self.tokens is not None:
            n = len(self.tokens)
            if self.loss_mask is None or self.logprobs is None:
                raise ValueError(f"node {self.node_id}: tokens given without loss_mask / logprobs")
            if len(self.loss_mask) != n or len(self.logprobs) != n:
                raise ValueError(f"node {self.node_id}: tokens ({n}), loss_mask ({len(self.loss_mask)}) and "
                                 f"logprobs ({len(self.logprobs)}) differ in length")

    @property
    def prompt_token_count(self) -> int | None:
        if self.loss_mask is None:
            return None if self.token_counts is None else self.token_counts[0]
        return len(self.loss_mask) - sum(self.loss_mask)

    @property
    def response_token_count(self) -> int | None:
        if self.loss_mask is None:
            return None if self.token_counts is None else self.token_counts[1]
        return sum(self.loss_mask)

    def without_tokens(self) -> NodeRecord:
        """The record without its token lists (what evaluation gathers across hosts), counts kept."""
        if self.tokens is None:
            return self
        counts = (self.prompt_token_count, self.response_token_count)
        return dataclasses.replace(self, tokens=None, loss_mask=None, logprobs=None, token_counts=counts)


def overlaps_a_sibling(node: NodeRecord, siblings: list[NodeRecord]) -> bool:
    """Whether ``node`` ran at the same time as another child of its parent step (one ``asyncio.gather``);
    children awaited one after another inside one cell (a chain of hops in a loop) never overlap."""
    return any(s.node_id != node.node_id and s.start_time < node.end_time and node.start_time < s.end_time
               for s in siblings)


def sequential_length(siblings: list[NodeRecord], length: Callable[[NodeRecord], int]) -> int:
    """The calls of the longest run of children of one step that ran one after another (each started
    after the one before it ended), each child counting ``length(child)``: the step's share of a
    critical path. Children that overlap count as one (the longest)."""
    best: dict[int, int] = {}
    ordered = sorted(siblings, key=lambda n: (n.start_time, n.node_id))
    for node in ordered:
        before = [best[p.node_id] for p in ordered if p.end_time <= node.start_time and p.node_id in best]
        best[node.node_id] = length(node) + max(before, default=0)
    return max(best.values(), default=0)


def children_by_step(nodes) -> dict[tuple[int, int | None], list[NodeRecord]]:
    """``{(parent id, fork step): children it launched there}`` over one tree's nodes."""
    by_step: dict[tuple[int, int | None], list[NodeRecord]] = {}
    for n in nodes:
        if n.parent_id is not None:
            by_step.setdefault((n.parent_id, n.fork_step), []).append(n)
    return by_step


@dataclasses.dataclass(frozen=True)
class TreeResult:
    """A finished tree: its nodes ordered by node id (root first) and tree-level facts."""

    tree_id: int
    task_id: str | None
    recursive: bool
    root_budget: int
    nodes: tuple[NodeRecord, ...]
    start_time: float
    end_time: float

    @property
    def root(self) -> NodeRecord:
        return self.nodes[0]

    def without_tokens(self) -> TreeResult:
        return dataclasses.replace(self, nodes=tuple(n.without_tokens() for n in self.nodes))

    def node(self, node_id: int) -> NodeRecord:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"tree {self.tree_id} has no node {node_id}")

    @property
    def max_depth(self) -> int:
        return max(n.depth for n in self.nodes)

    @property
    def model_calls(self) -> int:
        return sum(n.own_steps for n in self.nodes)

    def critical_path(self) -> int:
        """Longest chain of sequential policy calls: a node's steps plus, at each step, its children's
        longest run one after another (``sequential_length``; children of one gather run side by side)."""
        steps_of: dict[int, list[list[NodeRecord]]] = {}
        for (parent_id, _), siblings in children_by_step(self.nodes).items():
            steps_of.setdefault(parent_id, []).append(siblings)

        def length(node: NodeRecord) -> int:
            steps = steps_of.get(node.node_id, [])
            return node.own_steps + sum(sequential_length(siblings, length) for siblings in steps)

        return length(self.root)
