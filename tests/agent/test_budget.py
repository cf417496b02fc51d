"""The budget ledger: reserve n+1, release on end, refuse with an explanation, caps."""

from __future__ import annotations

import pytest

from rao_jax.agent.budget import BudgetCaps, BudgetError, BudgetTracker


def test_launch_reserves_n_plus_one_and_charges_actual_use_on_end():
    b = BudgetTracker(0, 20)
    b.take_step(0)
    assert b.left(0) == 19
    assert b.try_launch(0, 1, 10) is None
    assert b.left(0) == 8                      # 19 - 11 reserved
    for _ in range(4):
        b.take_step(1)
    assert b.left(1) == 6
    b.end(1)
    assert b.left(0) == 15 and b.total_used(0) == 5   # the 4 steps used are charged, the rest returns
    b.check_invariants()


def test_refusals_explain_and_change_nothing():
    b = BudgetTracker(0, 10)
    b.take_step(0)
    msg = b.try_launch(0, 1, 9)
    assert msg.startswith("launch_subagent refused") and "needs 10" in msg and "you have 9 left" in msg
    assert "budget <= 8" in msg
    assert b.left(0) == 9 and b.live_nodes == 1
    assert "positive integer" in b.try_launch(0, 1, "5")
    assert "positive integer" in b.try_launch(0, 1, True)
    assert "at least 1" in b.try_launch(0, 1, 0)
    assert b.try_launch(0, 1, 3) is None
    msg = b.try_launch(0, 2, 5)
    assert "4 more are reserved" in msg


def test_caps():
    b = BudgetTracker(0, 100, BudgetCaps(max_depth=1, max_children_per_node=2, max_concurrent_nodes=3))
    assert b.try_launch(0, 1, 10) is None
    assert "maximum depth 1" in b.try_launch(1, 2, 2)
    assert b.try_launch(0, 2, 10) is None
    assert "launched 2 subagents" in b.try_launch(0, 3, 1)
    b2 = BudgetTracker(0, 100, BudgetCaps(max_concurrent_nodes=2))
    assert b2.try_launch(0, 1, 10) is None
    assert "2 agents are already running" in b2.try_launch(1, 2, 2)
    b2.end(1)
    assert b2.try_launch(0, 2, 10) is None
    with pytest.raises(ValueError, match="max_depth"):
        BudgetCaps(max_depth=-1)


def test_a_parent_ended_before_its_child_is_settled_after_it():
    b = BudgetTracker(0, 30)
    b.take_step(0)
    assert b.try_launch(0, 1, 10) is None
    b.take_step(1)
    assert b.try_launch(1, 2, 5) is None
    b.take_step(2)
    b.end(1)                                   # child 1 ends while grandchild 2 still runs
    assert b.left(0) == 30 - 1 - 11            # nothing settled with the root yet
    b.take_step(2)
    b.end(2)
    assert b.total_used(1) == 3 and b.total_used(0) == 4 and b.left(0) == 26
    b.end(0)
    b.check_invariants()


def test_runtime_bugs_raise():
    b = BudgetTracker(0, 1)
    b.take_step(0)
    with pytest.raises(BudgetError, match="no budget left"):
        b.take_step(0)
    b.end(0)
    with pytest.raises(BudgetError, match="ended twice"):
        b.end(0)
    with pytest.raises(ValueError, match="root budget"):
        BudgetTracker(0, 0)
