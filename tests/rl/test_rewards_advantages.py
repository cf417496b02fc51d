"""Node rewards and shared-root advantages against hand-computed values, jitted."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rao_jax.rl.advantages import signal_mask, tree_advantages
from rao_jax.rl.rewards import node_rewards

# Task 0 has three trees of different shapes (4 nodes, a single root, 2 nodes), task 1 has G=2,
# task 2 a single one-node tree; node 11 is padding.
#            node:  0  1  2  3  4  5  6  7  8  9 10 11
SUCCESS = np.array([1, 1, 0, 1, 0, 1, 0, 0, 1, 1, 1, 1], np.float32)
PARENT = np.array([-1, 0, 0, 1, -1, -1, 5, -1, 7, -1, -1, 0], np.int32)
TREE = np.array([0, 0, 0, 0, 1, 2, 2, 3, 3, 4, 5, 0], np.int32)
TASK = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 0], np.int32)
ROOT = PARENT < 0
VALID = np.arange(12) < 11

MEAN_REWARDS = [1.25, 1.5, 0, 1, 0, 1.0, 0, 0.5, 1, 1, 1, 0]          # lam = 0.5
CAPPED_REWARDS = [1.2, 1.2, 0, 1, 0, 1.0, 0, 0.2, 1, 1, 1, 0]         # beta 0.2, cap 0.4


def _args():
    return [jnp.asarray(x) for x in (SUCCESS, PARENT)]


def test_mean_bonus_and_capped_sum_bonus():
    rewards = jax.jit(lambda s, p, v: node_rewards(s, p, lam=0.5, valid=v))(*_args(), jnp.asarray(VALID))
    np.testing.assert_allclose(rewards, MEAN_REWARDS, atol=1e-6)
    capped = jax.jit(lambda s, p, v: node_rewards(s, p, bonus="capped_sum", valid=v))(*_args(), jnp.asarray(VALID))
    np.testing.assert_allclose(capped, CAPPED_REWARDS, atol=1e-6)
    # lam = 0 (the released default) is just each node's own success; padding is 0.
    np.testing.assert_allclose(node_rewards(*_args(), valid=jnp.asarray(VALID)), np.where(VALID, SUCCESS, 0))


def test_capped_sum_counts_each_child_once_and_caps():
    success = jnp.asarray([0, 1, 1, 1, 0], jnp.float32)  # a root with four children, three successful
    parent = jnp.asarray([-1, 0, 0, 0, 0], jnp.int32)
    assert float(node_rewards(success, parent, bonus="capped_sum", beta=0.1, cap=1.0)[0]) == pytest.approx(0.3)
    assert float(node_rewards(success, parent, bonus="capped_sum")[0]) == pytest.approx(0.4)  # min(0.4, 0.6)
    assert float(node_rewards(success, parent, lam=1.0)[0]) == pytest.approx(0.75)  # mean over 4 children


def _advantages(rewards, **kwargs):
    fn = jax.jit(lambda r, tr, ta, ro, v: tree_advantages(r, tr, ta, ro, valid=v, **kwargs))
    return np.asarray(fn(jnp.asarray(rewards, jnp.float32), *[jnp.asarray(x) for x in (TREE, TASK, ROOT, VALID)]))


def test_leave_one_out_baseline():
    # task 0 roots: 1.25, 0, 1.0 -> baselines 0.5, 1.125, 0.625; task 1 roots 0.5, 1 -> 1, 0.5; task 2 alone.
    expected = [0.75, 1.0, -0.5, 0.5, -1.125, 0.375, -0.625, -0.5, 0.0, 0.5, 0.0, 0.0]
    np.testing.assert_allclose(_advantages(MEAN_REWARDS), expected, atol=1e-6)


def test_mean_with_self_baseline():
    expected = [0.5, 0.75, -0.75, 0.25, -0.75, 0.25, -0.75, -0.25, 0.25, 0.25, 0.0, 0.0]
    np.testing.assert_allclose(_advantages(MEAN_REWARDS, baseline="mean"), expected, atol=1e-6)


def test_std_normalisation_divides_by_the_root_reward_spread():
    loo = _advantages(MEAN_REWARDS)
    normed = _advantages(MEAN_REWARDS, normalize_std=True)
    std0 = np.std([1.25, 0.0, 1.0])
    np.testing.assert_allclose(normed[:7], loo[:7] / (std0 + 1e-6), rtol=1e-5)
    np.testing.assert_allclose(normed[7:10], loo[7:10] / (0.25 + 1e-6), rtol=1e-5)
    assert normed[10] == 0.0 and normed[11] == 0.0


def test_ids_need_not_be_sorted_or_contiguous():
    order = np.random.default_rng(0).permutation(11)
    rewards = np.asarray(MEAN_REWARDS[:11], np.float32)[order]
    tree = (TREE[:11] * 2)[order]  # sparse ids, still < n
    task = (TASK[:11] * 4)[order]
    got = tree_advantages(jnp.asarray(rewards), jnp.asarray(tree), jnp.asarray(task), jnp.asarray(ROOT[:11][order]))
    expected = np.asarray([0.75, 1.0, -0.5, 0.5, -1.125, 0.375, -0.625, -0.5, 0.0, 0.5, 0.0])[order]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_groups_without_signal_are_masked():
    mask = np.asarray(signal_mask(jnp.asarray(MEAN_REWARDS, jnp.float32), jnp.asarray(TASK), jnp.asarray(VALID)))
    assert mask.tolist() == [True] * 10 + [False, False]  # task 2 has one reward; node 11 is padding
    flat = np.asarray(signal_mask(jnp.ones(4), jnp.asarray([0, 0, 1, 1])))
    assert not flat.any()


def test_bad_variant_names():
    with pytest.raises(ValueError, match="bonus must be one of"):
        node_rewards(*_args(), bonus="sum")
    with pytest.raises(ValueError, match="baseline must be one of"):
        tree_advantages(jnp.zeros(2), jnp.zeros(2, jnp.int32), jnp.zeros(2, jnp.int32), jnp.ones(2, bool),
                        baseline="median")
