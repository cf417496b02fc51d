"""The contract between a task family and the agent runtime.

A task family turns generated or shipped data into ``Task`` records and, for each delegation tree
rolled out on a task, opens one ``Episode``: the world state that every node of that tree acts on
(TextCraft: one inventory shared by the whole tree). The runtime (``rao_jax.agent``) never looks
inside a family; it only

- asks the episode for the root ``Goal`` and for each node's tools (plain Python callables that the
  node's sandboxed cells call through a proxy; arguments and results are JSON-like values);
- turns a ``launch_subagent(goal, budget, context)`` call into a child ``Goal`` with
  ``parse_child_goal`` (a bad goal becomes the observation, not a crash), and tells the episode when
  a node opens (``open_node``: e.g. snapshot the inventory at the fork) and finishes;
- asks ``node_success`` for s_v in [0, 1] once a node has ended (RAO_SPEC section 2).

A tool signals a bad action by raising ``ActionError``; its message becomes the observation.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any


class ActionError(Exception):
    """An environment action the agent got wrong; ``str(e)`` is shown to the agent."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One root task of a family, as stored in datasets (JSON-serialisable fields only)."""

    task_id: str
    family: str                  # "textcraft_synth" | "textcraft_minecraft" | "labeled_rows" | "chain_hop"
    goal: str                    # the root goal text shown to the agent
    max_steps: int               # root step budget
    difficulty: str              # family-specific bucket, e.g. "easy" | "medium" | "hard" | "extreme"
    spec: Mapping[str, Any]      # everything the family needs to build the world and grade it


@dataclasses.dataclass(frozen=True)
class Goal:
    """What one node must do: text for the prompt and a structured form for grading."""

    text: str
    spec: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    context: str = ""            # extra text a parent passed to launch_subagent


class Episode(abc.ABC):
    """The world state of one delegation tree; all nodes of the tree share it."""

    # Whether a node's text names step counts and child ids (its budget in the first user turn, the
    # notes on its ended children). An env sets it False so that a node reads the same text at every
    # input size; the node's ``budget`` variable (``rollout.goal_variables``) still holds its budget.
    counts_in_text: bool = True

    @abc.abstractmethod
    def root_goal(self) -> Goal:
        """The goal of the tree's root node."""

    @abc.abstractmethod
    def tool_docs(self, recursive: bool) -> str:
        """System-prompt text documenting the tools (and launch_subagent's goal format if recursive)."""

    @abc.abstractmethod
    def open_node(self, node_id: int, parent_id: int | None, goal: Goal) -> None:
        """Called when a node starts, before its first step (snapshot what success is relative to)."""

    @abc.abstractmethod
    def tools(self, node_id: int) -> dict[str, Callable[..., Any]]:
        """The environment actions in node ``node_id``'s namespace, by name (``finish`` excluded:
        the runtime provides it and reports the message through ``node_success``)."""

    @abc.abstractmethod
    def parse_child_goal(self, goal: Any, context: str) -> Goal:
        """The child goal for ``launch_subagent(goal, budget, context)``; raises ActionError if bad."""

    @abc.abstractmethod
    def node_success(self, node_id: int, finish_message: Any | None) -> float:
        """s_v in [0, 1] for an ended node; ``finish_message`` is None if it never called finish."""


# Helpers of the task sources (``rao_jax.envs.families.Family.tasks``).

def take_knob(knobs: dict[str, Any], name: str, default: Any) -> Any:
    """Removes and returns ``knobs[name]`` (``default`` when absent)."""
    return knobs.pop(name) if name in knobs else default


def no_more_knobs(knobs: dict[str, Any]) -> None:
    if knobs:
        raise ValueError(f"unknown knobs {sorted(knobs)}")


def interleave(tasks: Iterable[Task]) -> Iterator[Task]:
    """``tasks`` regrouped round-robin over their difficulty buckets (buckets in order of first
    appearance, each bucket's tasks in their own order), so any prefix covers every bucket."""
    buckets: dict[str, list[Task]] = {}
    for task in tasks:
        buckets.setdefault(task.difficulty, []).append(task)
    queues = list(buckets.values())
    for row in range(max(map(len, queues), default=0)):
        yield from (queue[row] for queue in queues if row < len(queue))
