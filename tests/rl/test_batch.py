"""Trees -> per-node arrays -> rewards / advantages -> packed rows (rao_jax.rl.batch)."""

from __future__ import annotations

import numpy as np
import pytest

from rao_jax.agent.tree import NodeRecord, TreeResult
from rao_jax.envs.base import Goal
from rao_jax.rl.batch import AdvantageConfig, build_batch, node_table, rewards_and_advantages


def _node(node_id, parent, success, n_tokens=6, depth=0):
    tokens = tuple(range(1, n_tokens + 1))
    mask = (0, 0) + (1,) * (n_tokens - 2)
    return NodeRecord(tree_id=0, node_id=node_id, parent_id=parent, depth=depth, fork_step=None if parent is None
                      else 0, goal=Goal("g"), budget=5, own_steps=1, total_steps=1, start_time=0.0, end_time=1.0,
                      end_reason="finished", finish_message="ok", success=success, children=(), steps=(),
                      tokens=tokens, loss_mask=mask, logprobs=tuple(-0.5 * m for m in mask))


def _tree(*nodes):
    return TreeResult(tree_id=0, task_id="t", recursive=True, root_budget=5, nodes=tuple(nodes), start_time=0.0,
                      end_time=1.0)


# Task 0: tree a = root(1) with children (1, 0); tree b = lone root (0). Task 1: two lone roots (1, 1).
GROUPS = [[_tree(_node(0, None, 1.0), _node(1, 0, 1.0, depth=1), _node(2, 0, 0.0, depth=1)),
           _tree(_node(0, None, 0.0))],
          [_tree(_node(0, None, 1.0)), _tree(_node(0, None, 1.0))]]


def test_node_table_flattens_parents_to_rows():
    table = node_table(GROUPS)
    np.testing.assert_array_equal(table.parent, [-1, 0, 0, -1, -1, -1])
    np.testing.assert_array_equal(table.tree, [0, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(table.task, [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(table.is_root, [True, False, False, True, True, True])


def test_rewards_and_advantages_match_hand_computation():
    cfg = AdvantageConfig(lam=0.5, drop_zero_signal=True)
    reward, advantage, keep = rewards_and_advantages(node_table(GROUPS), cfg)
    # R = s + 0.5 * mean(children): root a 1 + 0.5 * 0.5 = 1.25; leaves keep s.
    np.testing.assert_allclose(reward, [1.25, 1.0, 0.0, 0.0, 1.0, 1.0])
    # Leave-one-out over the task's other root: tree a's baseline is b's root (0), b's is a's (1.25).
    np.testing.assert_allclose(advantage, [1.25, 1.0, 0.0, -1.25, 0.0, 0.0])
    np.testing.assert_array_equal(keep, [True, True, True, True, False, False])  # task 1 carries no signal


def test_build_batch_packs_only_nodes_with_signal():
    out = build_batch(GROUPS, AdvantageConfig(lam=0.5), row_len=16)
    assert out.stats["trained_nodes"] == 4 and out.stats["dropped_zero_signal"] == 2
    assert out.stats["success"] == pytest.approx(0.75)
    batch = out.batch
    assert batch.tokens.shape[1] == 16
    # Each trained token carries its node's advantage; the advantages present are those of the kept nodes.
    trained = batch.loss_mask > 0
    assert sorted(set(np.round(batch.advantage[trained], 4))) == [-1.25, 0.0, 1.0, 1.25]
    assert trained.sum() == 4 * 4


def test_rows_are_padded_to_a_multiple_of_row_multiple():
    needed = build_batch(GROUPS, AdvantageConfig(lam=0.5), row_len=16).batch.tokens.shape[0]
    for multiple in (1, 2, 3, 8):
        batch = build_batch(GROUPS, AdvantageConfig(lam=0.5), row_len=16, row_multiple=multiple).batch
        rows = batch.tokens.shape[0]
        assert rows % multiple == 0 and needed <= rows < needed + multiple
        assert (batch.loss_mask[needed:] == 0).all()   # padding rows train nothing


def test_nothing_to_train_gives_no_batch():
    groups = [[_tree(_node(0, None, 1.0)), _tree(_node(0, None, 1.0))]]
    out = build_batch(groups, AdvantageConfig(), row_len=16)
    assert out.batch is None and out.stats["dropped_zero_signal"] == 2


def test_too_long_episodes_are_skipped_and_counted():
    groups = [[_tree(_node(0, None, 1.0, n_tokens=40)), _tree(_node(0, None, 0.0))]]
    out = build_batch(groups, AdvantageConfig(), row_len=16)
    assert out.stats["skipped_too_long"] == 1 and out.stats["trained_nodes"] == 1
