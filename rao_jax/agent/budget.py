"""Step budgets of one delegation tree (RAO_SPEC section 1).

Rules, per node v with budget B_v:

- every step of v (one policy call + one cell) costs 1: ``own_steps``;
- ``launch_subagent(goal, n)`` from v needs ``left(v) >= n + 1`` and reserves ``n + 1`` (the +1
  guarantees v a step to use the answer); otherwise the launch is refused with an explanation;
- when the child's whole subtree has ended, the reservation is released and the child's total usage
  (its own steps plus everything charged to it by its descendants) is charged to v.

Invariants (checked by ``check_invariants`` and the tests):

- ``left(v) = B_v - own_steps(v) - charged(v) - reserved(v) >= 0`` at all times;
- a child's total usage never exceeds its budget, so it never exceeds the reservation made for it;
- once every node has ended, ``total_used(root)`` equals the number of steps taken in the whole
  tree, which is therefore at most the root budget.

A node that ends while some of its children still run (possible when a cell creates a task and
finishes without awaiting it) is settled only once its last child is settled, so its parent is
always charged the final figure.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BudgetCaps:
    """Optional caps on a tree's shape (RAO_SPEC: all off by default)."""

    max_depth: int | None = None               # deepest allowed node; root = 0
    max_children_per_node: int | None = None   # launches (accepted) per node over its lifetime
    max_concurrent_nodes: int | None = None    # live nodes per tree, the root included

    def __post_init__(self):
        for name in ("max_depth", "max_children_per_node", "max_concurrent_nodes"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "max_depth" else 1):
                raise ValueError(f"BudgetCaps.{name} must be None or positive, got {value}")


@dataclasses.dataclass
class _NodeBudget:
    budget: int
    parent: int | None
    depth: int
    own_steps: int = 0
    charged: int = 0       # settled usage of ended child subtrees
    reserved: int = 0      # n + 1 for every child not yet settled
    children: int = 0      # accepted launches
    live_children: int = 0  # children not yet settled
    ended: bool = False
    settled: bool = False


class BudgetError(RuntimeError):
    """A runtime bug: a step or release that the rules forbid (never a model mistake)."""


class BudgetTracker:
    """The budget ledger of one tree; node ids are the tree's own ids."""

    def __init__(self, root_id: int, root_budget: int, caps: BudgetCaps = BudgetCaps()):
        if root_budget < 1:
            raise ValueError(f"root budget must be >= 1, got {root_budget}")
        self.caps = caps
        self._nodes: dict[int, _NodeBudget] = {root_id: _NodeBudget(root_budget, None, 0)}
        self._live = 1

    def left(self, node_id: int) -> int:
        """Steps ``node_id`` may still take or reserve."""
        n = self._nodes[node_id]
        return n.budget - n.own_steps - n.charged - n.reserved

    def budget(self, node_id: int) -> int:
        return self._nodes[node_id].budget

    def own_steps(self, node_id: int) -> int:
        return self._nodes[node_id].own_steps

    def total_used(self, node_id: int) -> int:
        """Own steps plus the usage charged by settled descendants."""
        n = self._nodes[node_id]
        return n.own_steps + n.charged

    @property
    def live_nodes(self) -> int:
        return self._live

    def take_step(self, node_id: int) -> None:
        """Charge one step to ``node_id``; the caller must have checked ``left > 0``."""
        n = self._nodes[node_id]
        if n.ended:
            raise BudgetError(f"node {node_id} took a step after it ended")
        if self.left(node_id) < 1:
            raise BudgetError(f"node {node_id} took a step with no budget left")
        n.own_steps += 1

    def try_launch(self, parent_id: int, child_id: int, budget: object) -> str | None:
        """Reserve for a child; None when accepted, else the explanation shown to the agent."""
        p = self._nodes[parent_id]
        if child_id in self._nodes:
            raise BudgetError(f"node id {child_id} used twice")
        if isinstance(budget, bool) or not isinstance(budget, int):
            return f"launch_subagent refused: budget must be a positive integer, got {budget!r}."
        if budget < 1:
            return f"launch_subagent refused: budget must be at least 1, got {budget}."
        caps = self.caps
        if caps.max_depth is not None and p.depth + 1 > caps.max_depth:
            return (f"launch_subagent refused: a subagent here would be at depth {p.depth + 1}, "
                    f"deeper than the maximum depth {caps.max_depth}. Do this part yourself.")
        if caps.max_children_per_node is not None and p.children >= caps.max_children_per_node:
            return (f"launch_subagent refused: you already launched {p.children} subagents, "
                    f"the maximum per agent. Do the rest yourself.")
        if caps.max_concurrent_nodes is not None and self._live >= caps.max_concurrent_nodes:
            return (f"launch_subagent refused: {self._live} agents are already running in this tree, "
                    f"the maximum at once. Wait for some to finish or do this part yourself.")
        left = self.left(parent_id)
        if budget + 1 > left:
            held = f" ({p.reserved} more are reserved by your running subagents)" if p.reserved else ""
            hint = (f" Launch with budget <= {left - 1}, or do it yourself." if left >= 2
                    else " You cannot launch a subagent now.")
            return (f"launch_subagent refused: budget {budget} needs {budget + 1} of your steps "
                    f"({budget} for the subagent + 1 for you to use its answer), but you have {left} left"
                    f"{held}.{hint}")
        p.reserved += budget + 1
        p.children += 1
        p.live_children += 1
        self._nodes[child_id] = _NodeBudget(budget, parent_id, p.depth + 1)
        self._live += 1
        return None

    def end(self, node_id: int) -> None:
        """Mark ``node_id`` ended; it is settled with its parent once its children are."""
        n = self._nodes[node_id]
        if n.ended:
            raise BudgetError(f"node {node_id} ended twice")
        n.ended = True
        self._live -= 1
        self._settle(node_id)

    def _settle(self, node_id: int) -> None:
        n = self._nodes[node_id]
        while n.ended and not n.settled and n.live_children == 0:
            n.settled = True
            if n.parent is None:
                return
            p = self._nodes[n.parent]
            used = n.own_steps + n.charged
            if used > n.budget:
                raise BudgetError(f"node {node_id} used {used} steps, more than its budget {n.budget}")
            p.reserved -= n.budget + 1
            p.charged += used
            p.live_children -= 1
            node_id, n = n.parent, p

    def check_invariants(self) -> None:
        """Raise BudgetError if any ledger rule is broken (used by tests and after every tree)."""
        for node_id, n in self._nodes.items():
            if self.left(node_id) < 0:
                raise BudgetError(f"node {node_id} over budget: left {self.left(node_id)}")
            if n.settled and (n.reserved or n.live_children):
                raise BudgetError(f"node {node_id} settled with reservations outstanding")
