"""rao_jax.metrics on hand-built trees: every figure checked against a hand computation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from rao_jax.agent.tree import NodeRecord, TreeResult
from rao_jax.envs.base import Goal, Task
from rao_jax.metrics import difference_interval, format_table, summarize, to_json, wilson_interval


def make_node(node_id: int, parent_id: int | None, depth: int, fork_step: int | None, own_steps: int,
              success: float, end_reason: str = "finished", children: tuple[int, ...] = (),
              tokens: tuple[int, int] | None = None) -> NodeRecord:
    """A node record; ``tokens`` = (prompt-side count, response count) or None for a text policy."""
    token_fields = {}
    if tokens is not None:
        prompt, response = tokens
        mask = (0,) * prompt + (1,) * response
        token_fields = {"tokens": (7,) * len(mask), "loss_mask": mask, "logprobs": (0.0,) * len(mask)}
    return NodeRecord(tree_id=0, node_id=node_id, parent_id=parent_id, depth=depth, fork_step=fork_step,
                      goal=Goal(f"goal of node {node_id}"), budget=10, own_steps=own_steps, total_steps=own_steps,
                      start_time=0.0, end_time=1.0, end_reason=end_reason, finish_message=None, success=success,
                      children=children, steps=(), **token_fields)


def make_tree(tree_id: int, task_id: str, nodes: list[NodeRecord], start: float, end: float,
              recursive: bool = True) -> TreeResult:
    return TreeResult(tree_id=tree_id, task_id=task_id, recursive=recursive, root_budget=20, nodes=tuple(nodes),
                      start_time=start, end_time=end)


# Recursive agent that solved an easy task alone: depth 0, 3 calls, 2 s.
SINGLE = make_tree(0, "easy-1", [make_node(0, None, 0, None, 3, 1.0, tokens=(100, 20))], 0.0, 2.0)

# Depth 3. Root (5 steps) launches nodes 1 and 2 together at step 1, node 3 alone at step 3; node 1
# launches 4 at its step 2, node 4 launches 5 at its step 0. Node 2 overflowed its context.
#   critical path: n5 = 1, n4 = 2 + 1 = 3, n1 = 4 + 3 = 7, root = 5 + max(7, 3) + 2 = 14; calls 17.
DEEP = make_tree(1, "hard-1", [
    make_node(0, None, 0, None, 5, 1.0, children=(1, 2, 3), tokens=(300, 50)),
    make_node(1, 0, 1, 1, 4, 1.0, children=(4,), tokens=(200, 40)),
    make_node(2, 0, 1, 1, 3, 0.0, end_reason="context", tokens=(400, 30)),
    make_node(3, 0, 1, 3, 2, 1.0, tokens=(100, 20)),
    make_node(4, 1, 2, 2, 2, 1.0, children=(5,), tokens=(80, 20)),
    make_node(5, 4, 3, 0, 1, 1.0, tokens=(20, 10)),
], 10.0, 40.0)

# Depth 1: the root ran out of budget after its child (who errored but was graded a success).
SMALL = make_tree(2, "hard-2", [
    make_node(0, None, 0, None, 2, 0.0, end_reason="budget", children=(1,), tokens=(60, 15)),
    make_node(1, 0, 1, 0, 1, 1.0, end_reason="error", tokens=(40, 5)),
], 5.0, 9.0)

# Flat agent: no launches, no token counts.
FLAT_HARD = make_tree(0, "hard-1", [make_node(0, None, 0, None, 7, 0.0, end_reason="budget")], 0.0, 6.0,
                      recursive=False)
FLAT_EASY = make_tree(1, "easy-1", [make_node(0, None, 0, None, 4, 1.0)], 0.0, 3.0, recursive=False)

TASKS = {task_id: Task(task_id, "textcraft_synth", f"craft for {task_id}", 20, task_id.split("-")[0], {})
         for task_id in ("easy-1", "hard-1", "hard-2")}
RECURSIVE = [SINGLE, DEEP, SMALL]


def test_difference_interval_matches_newcombe_1998():
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score)
    np.testing.assert_allclose(difference_interval(56, 70, 48, 80), (0.0524, 0.3339), atol=1e-4)
    np.testing.assert_allclose(difference_interval(9, 10, 3, 10), (0.1705, 0.8090), atol=1e-4)
    np.testing.assert_allclose(difference_interval(5, 56, 0, 29), (-0.0381, 0.1926), atol=1e-4)
    lo, hi = difference_interval(3, 10, 9, 10)  # swapping the samples mirrors the interval
    np.testing.assert_allclose((lo, hi), (-0.8090, -0.1705), atol=1e-4)


def test_wilson_interval_known_values():
    # Standard table values for z = 1.96.
    np.testing.assert_allclose(wilson_interval(0, 10), (0.0, 0.2775), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(1, 10), (0.0179, 0.4042), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(5, 10), (0.2366, 0.7634), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(10, 10), (0.7225, 1.0), atol=1e-4)
    lo, hi = wilson_interval(1, 1)
    assert 0.0 < lo < 1.0 and hi == 1.0
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_critical_path_of_fixture_matches_hand_count():
    assert (DEEP.critical_path(), DEEP.model_calls, DEEP.max_depth) == (14, 17, 3)


def test_children_awaited_one_after_another_in_one_cell_are_sequential():
    """One root cell: a chain of three hops awaited in turn (each child ends before the next starts),
    then two children gathered at once; the hops are not parallel and their calls add up."""
    def child(node_id, start, end, steps=2):
        return dataclasses.replace(make_node(node_id, 0, 1, 0, steps, 1.0), start_time=start, end_time=end)
    nodes = [make_node(0, None, 0, None, 1, 1.0, children=(1, 2, 3, 4, 5)),
             child(1, 0.0, 1.0), child(2, 1.5, 2.0), child(3, 2.5, 3.0),
             child(4, 3.5, 5.0, steps=3), child(5, 3.6, 4.0)]
    tree = make_tree(0, "easy-1", nodes, 0.0, 5.0)
    assert tree.critical_path() == 1 + 2 + 2 + 2 + 3
    bucket = summarize([tree])["all"]
    assert bucket["parallel_fraction"] == pytest.approx(2 / 5) and bucket["launches"] == 5
    # Two chains of three hops side by side (a fork), their hops staggered so that each overlaps the
    # other chain's neighbours: every launch is parallel, and the critical path is one chain's.
    fork = [make_node(0, None, 0, None, 1, 1.0, children=tuple(range(1, 7))),
            child(1, 0.0, 1.0), child(2, 1.1, 2.0), child(3, 2.1, 3.0),
            child(4, 0.5, 1.5), child(5, 1.6, 2.5), child(6, 2.6, 3.5)]
    forked = make_tree(1, "easy-1", fork, 0.0, 4.0)
    assert forked.critical_path() == 1 + 3 * 2
    assert summarize([forked])["all"]["parallel_fraction"] == 1.0


def test_summarize_recursive_all_bucket():
    bucket = summarize(RECURSIVE, TASKS)["all"]
    assert bucket["trees"] == 3
    assert bucket["success"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(bucket["success_ci95"], wilson_interval(2, 3))
    assert bucket["mean_reward"] == pytest.approx(2 / 3)   # lam = 0: R_root = s_root
    assert bucket["depth_max"] == 3
    assert bucket["depth_mean"] == pytest.approx((0 + 3 + 1) / 3)
    # 9 nodes, 6 children; 4 nodes have children (DEEP's 0, 1, 4 and SMALL's root).
    assert bucket["launches"] == 6
    assert bucket["children_per_node"] == pytest.approx(6 / 9)
    assert bucket["children_per_parent"] == pytest.approx(6 / 4)
    # Only DEEP's nodes 1 and 2 were launched in one step together.
    assert bucket["parallel_fraction"] == pytest.approx(2 / 6)
    assert bucket["model_calls"] == pytest.approx((3 + 17 + 3) / 3)
    assert bucket["critical_path"] == pytest.approx((3 + 14 + 3) / 3)
    assert bucket["critical_over_total"] == pytest.approx((1 + 14 / 17 + 1) / 3)
    assert bucket["wall_seconds"] == pytest.approx((2 + 30 + 4) / 3)
    assert bucket["prompt_tokens"] == pytest.approx((100 + (300 + 200 + 400 + 100 + 80 + 20) + (60 + 40)) / 3)
    assert bucket["response_tokens"] == pytest.approx((20 + (50 + 40 + 30 + 20 + 20 + 10) + (15 + 5)) / 3)
    assert bucket["context_overflows"] == 1
    assert bucket["context_overflows_per_tree"] == pytest.approx(1 / 3)
    assert bucket["end_reasons"] == {"budget": 1, "finished": 2}


def test_summarize_buckets_by_difficulty_and_depth():
    summary = summarize(RECURSIVE, TASKS)
    assert list(summary["by_difficulty"]) == ["easy", "hard"]
    easy, hard = summary["by_difficulty"]["easy"], summary["by_difficulty"]["hard"]
    assert (easy["trees"], easy["success"], easy["launches"]) == (1, 1.0, 0)
    assert easy["parallel_fraction"] is None and easy["children_per_parent"] is None
    assert easy["children_per_node"] == 0.0
    assert (hard["trees"], hard["success"], hard["depth_max"], hard["depth_mean"]) == (2, 0.5, 3, 2.0)
    assert hard["parallel_fraction"] == pytest.approx(2 / 6)
    assert hard["children_per_node"] == pytest.approx(6 / 8)
    assert hard["critical_over_total"] == pytest.approx((14 / 17 + 1) / 2)
    assert hard["wall_seconds"] == pytest.approx(17.0)

    assert list(summary["by_depth"]) == [0, 1, 3]
    assert [summary["by_depth"][d]["trees"] for d in (0, 1, 3)] == [1, 1, 1]
    depth_one = summary["by_depth"][1]
    assert (depth_one["success"], depth_one["launches"], depth_one["parallel_fraction"]) == (0.0, 1, 0.0)
    assert depth_one["critical_path"] == 3 and depth_one["end_reasons"] == {"budget": 1}
    assert summary["by_depth"][3]["context_overflows"] == 1


def test_summarize_reward_bonuses_credit_each_child():
    # Roots: SINGLE has no children; DEEP's children succeed 1, 0, 1; SMALL's only child succeeds.
    mean_bonus = summarize(RECURSIVE, bonus="mean", lam=0.5)
    assert mean_bonus["all"]["mean_reward"] == pytest.approx((1 + (1 + 0.5 * 2 / 3) + (0 + 0.5)) / 3)
    capped = summarize(RECURSIVE, bonus="capped_sum", beta=0.2, cap=0.4)
    assert capped["all"]["mean_reward"] == pytest.approx((1 + 1.4 + 0.2) / 3)
    capped_low = summarize([DEEP], bonus="capped_sum", beta=0.3, cap=0.5)
    assert capped_low["all"]["mean_reward"] == pytest.approx(1.5)


def test_summarize_flat_and_missing_tokens():
    summary = summarize([FLAT_HARD, FLAT_EASY], TASKS)
    bucket = summary["all"]
    assert (bucket["trees"], bucket["success"], bucket["depth_max"], bucket["launches"]) == (2, 0.5, 0, 0)
    assert bucket["parallel_fraction"] is None and bucket["children_per_parent"] is None
    assert bucket["model_calls"] == pytest.approx(5.5) and bucket["critical_over_total"] == pytest.approx(1.0)
    assert bucket["prompt_tokens"] is None and bucket["response_tokens"] is None
    assert bucket["end_reasons"] == {"budget": 1, "finished": 1}
    # One tree without token counts makes the bucket's token figures undefined.
    assert summarize([SINGLE, FLAT_EASY])["all"]["prompt_tokens"] is None


def test_summarize_without_tasks_and_with_unknown_task():
    assert summarize(RECURSIVE)["by_difficulty"] == {}
    with pytest.raises(ValueError, match="not among the given tasks"):
        summarize(RECURSIVE, {"easy-1": TASKS["easy-1"]})
    with pytest.raises(ValueError):
        summarize([])


def test_difficulties_in_natural_order():
    tasks = {name: Task(name, "f", "g", 20, name, {}) for name in ("k10", "hard", "k2", "easy")}
    trees = [make_tree(i, name, [make_node(0, None, 0, None, 1, 1.0)], 0.0, 1.0) for i, name in enumerate(tasks)]
    assert list(summarize(trees, tasks)["by_difficulty"]) == ["easy", "hard", "k2", "k10"]


def test_trees_of_several_families_are_bucketed_per_family_and_family_difficulty():
    specs = [("rows.1", "rows", "4x", 1.0), ("rows.2", "rows", "32x", 0.0), ("hop.1", "hop", "k2", 1.0),
             ("craft.1", "craft", "hard", 0.0), ("craft.2", "craft", "easy", 1.0)]
    tasks = {tid: Task(tid, family, "g", 20, difficulty, {}) for tid, family, difficulty, _ in specs}
    trees = [make_tree(i, tid, [make_node(0, None, 0, None, 1, s)], 0.0, 1.0) for i, (tid, _, _, s) in enumerate(specs)]
    summary = summarize(trees, tasks)
    assert list(summary["by_difficulty"]) == ["craft/easy", "craft/hard", "hop/k2", "rows/4x", "rows/32x"]
    assert {f: (b["trees"], b["success"]) for f, b in summary["by_family"].items()} == {
        "craft": (2, 0.5), "hop": (1, 1.0), "rows": (2, 0.5)}
    assert "rows/*" in format_table({"recursive": summary})
    assert "by_family" not in summarize(trees[:2], tasks)   # one family: plain difficulty keys
    assert list(summarize(trees[:2], tasks)["by_difficulty"]) == ["4x", "32x"]


def test_format_table_lists_modes_and_buckets():
    results = {"recursive": summarize(RECURSIVE, TASKS), "flat": summarize([FLAT_HARD, FLAT_EASY], TASKS)}
    table = format_table(results)
    lines = table.splitlines()
    assert all(len(line) <= 120 for line in lines), max(map(len, lines))
    assert lines[0].split()[:3] == ["mode", "bucket", "trees"]
    rows = [line.split() for line in lines[2:8]]
    labels = [line[:16].split() for line in lines[2:8]]
    assert labels == [["recursive", "all"], ["easy"], ["hard"], ["flat", "all"], ["easy"], ["hard"]]
    recursive_all = rows[0]
    assert recursive_all[2:5] == ["3", "0.667", "[0.21,0.94]"]
    assert recursive_all[5:] == ["0.667", "3/1.33", "0.67/1.50", "0.33", "7.7", "6.7", "(0.94)", "433/70", "12.0", "1"]
    assert rows[3][7:9] == ["0.00/-", "-"]  # flat: no parent node, no launch
    assert rows[3][-3] == "-"  # flat: no token counts
    depth_table = format_table(results, by="depth")
    assert "depth 3" in depth_table and "depth 1" in depth_table
    with pytest.raises(ValueError):
        format_table(results, by="family")


def test_to_json_round_trips_and_is_strict():
    results = {"recursive": summarize(RECURSIVE, TASKS), "flat": summarize([FLAT_HARD, FLAT_EASY], TASKS)}
    text = to_json(results)
    loaded = json.loads(text)
    assert loaded["recursive"]["by_depth"]["3"]["trees"] == 1
    assert loaded["recursive"]["all"]["success"] == pytest.approx(2 / 3)
    assert loaded["flat"]["all"]["parallel_fraction"] is None
    assert json.loads(to_json(loaded)) == loaded
    odd = {"a": np.float32(0.5), "b": float("nan"), "c": np.int64(3), "d": (np.bool_(True), float("inf")), 4: 1}
    assert json.loads(to_json(odd)) == {"a": 0.5, "b": None, "c": 3, "d": [True, None], "4": 1}
