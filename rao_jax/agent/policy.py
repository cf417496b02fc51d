"""The Policy interface: whatever chooses a node's next action (a language model or a script).

The runtime calls ``await policy.act(view)`` once per node step and executes the returned text as
one CodeAct action (``<thought>...</thought>\\n<python>...</python>``). A policy that cannot act
for the node any more (a model whose context window is full) returns ``EndNode`` instead: the node
ends there without taking a step, and its parent is told why. A model-backed policy renders
the view as tokens and samples; a scripted policy (the task families' oracles, test scripts) writes
the action text directly. Both go through the same parser, sandbox, budget rules and records, so a
scripted policy exercises exactly the path a trained model takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from rao_jax.envs.base import Goal


@dataclasses.dataclass(frozen=True)
class ActionTokens:
    """The exact tokens behind one action of a model-backed policy (recorded for training).

    ``prompt`` is what the policy appended to the node's token sequence before sampling (the whole
    prompt at the first step; the end of the previous turn, the observation turn and the assistant
    header afterwards); ``response`` is what was sampled and ``logprobs`` its behaviour log-probs. The
    node's full sequence is the concatenation of these segments over its steps, so every step's
    prompt extends the previous one at the token level. ``policy_version``: the oldest version of the
    sampler's weights that sampled one of ``response`` (None: unversioned, e.g. demonstrations).
    """

    prompt: tuple[int, ...]
    response: tuple[int, ...]
    logprobs: tuple[float, ...]
    policy_version: int | None = None

    def __post_init__(self):
        if len(self.response) != len(self.logprobs):
            raise ValueError(f"ActionTokens: {len(self.response)} response tokens but {len(self.logprobs)} logprobs")


@dataclasses.dataclass(frozen=True)
class PolicyAction:
    """An action with its tokens; ``Policy.act`` may return this instead of plain text."""

    text: str
    tokens: ActionTokens | None = None


@dataclasses.dataclass(frozen=True)
class EndNode:
    """Ends the node now, without a step: returned by ``Policy.act`` when no action can be produced.

    No model call is made and no step is charged. The node's record gets ``end_reason = reason``
    (instead of "finished" / "budget") and, if the node is a child, its parent's ``launch_subagent``
    returns ``message``. The node did not call ``finish``, so its success is judged as for any node
    that never did (``Episode.node_success(node_id, None)``).
    """

    reason: str     # short tag recorded as NodeRecord.end_reason, e.g. "context"
    message: str    # what happened, in words (returned to the parent)

    def __post_init__(self):
        if not self.reason or self.reason in ("finished", "budget", "error") or not self.reason.isidentifier():
            raise ValueError(f"EndNode.reason must be a new identifier-like tag, got {self.reason!r}")
        if not self.message.strip():
            raise ValueError("EndNode.message must say why the node ended")


@dataclasses.dataclass(frozen=True)
class StepRecord:
    action: str        # the text the policy returned
    observation: str   # what the node saw after running it


@dataclasses.dataclass(frozen=True)
class NodeView:
    """What a policy may know about a node when choosing its next action."""

    tree_id: int
    node_id: int
    parent_id: int | None
    depth: int                     # root = 0
    goal: Goal
    budget_left: int               # steps this node may still take (its own, excluding reservations)
    recursive: bool                # whether launch_subagent exists for this node
    steps: Sequence[StepRecord]    # earlier steps of this node, oldest first
    tool_docs: str = ""            # its tools, as the system prompt documents them (the runner fills it in)
    max_context: int | None = None  # a window cap of its task's family, in tokens (None: the policy's own)
    counts_in_text: bool = True    # its first user turn names its budget (``Episode.counts_in_text``)


class Policy(Protocol):
    async def act(self, view: NodeView) -> str | PolicyAction | EndNode:
        """The next action text for the node (a ``PolicyAction`` when the policy has its tokens), or
        ``EndNode`` when the policy cannot act for this node any more."""
        ...
