"""Shared-root advantages of delegation trees (RAO_SPEC section 3), with segment ops.

For each root task G trees are rolled out. Every node of tree g is judged against the same
baseline: by default the leave-one-out mean of the OTHER trees' root rewards,
``b_g = (sum_j R_root^(j) - R_root^(g)) / (G - 1)``, and ``A_v = R_v - b_g``. The released code's
variant uses the mean over all G roots, self included. One call handles any number of tasks with
any number of trees each, trees of any size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

BASELINES = ("loo", "mean")


def tree_advantages(node_reward: Float[Array, " n"], tree_id: Int[Array, " n"], task_id: Int[Array, " n"],
                    is_root: Bool[Array, " n"], *, baseline: str = "loo", normalize_std: bool = False,
                    eps: float = 1e-6, valid: Bool[Array, " n"] | None = None) -> Float[Array, " n"]:
    """A_v = R_v - b(tree of v), the baseline shared by every node of a tree.

    Args:
        node_reward: R_v (``rewards.node_rewards``).
        tree_id: the tree of each node, in [0, n).
        task_id: the root task of each node's tree, in [0, n).
        is_root: True for each tree's root (exactly one per tree).
        baseline: ``"loo"``: mean root reward of the task's other trees (a task with a single tree
            has no other tree, so its own root reward is the baseline and the root gets 0);
            ``"mean"``: mean root reward over all the task's trees, self included.
        normalize_std: divide by the standard deviation of the task's root rewards (+ eps).
        valid: False for padding nodes (advantage 0, not counted anywhere).

    Returns:
        f32[n] advantages.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    n = node_reward.shape[0]
    reward = node_reward.astype(jnp.float32)
    valid = jnp.ones(n, bool) if valid is None else valid
    root = (is_root & valid).astype(jnp.float32)
    task_seg = jnp.where(valid, task_id, n)
    tree_seg = jnp.where(valid, tree_id, n)

    root_reward_of_tree = jax.ops.segment_sum(reward * root, tree_seg, num_segments=n)[tree_id]
    task_sum = jax.ops.segment_sum(reward * root, task_seg, num_segments=n)[task_id]
    task_trees = jax.ops.segment_sum(root, task_seg, num_segments=n)[task_id]
    if baseline == "loo":
        others = task_trees - 1.0
        base = jnp.where(others > 0, (task_sum - root_reward_of_tree) / jnp.maximum(others, 1.0),
                         root_reward_of_tree)
    else:
        base = task_sum / jnp.maximum(task_trees, 1.0)
    advantage = reward - base
    if normalize_std:
        mean = task_sum / jnp.maximum(task_trees, 1.0)
        sq = jax.ops.segment_sum(root * reward**2, task_seg, num_segments=n)[task_id]
        var = jnp.maximum(sq / jnp.maximum(task_trees, 1.0) - mean**2, 0.0)
        advantage = advantage / (jnp.sqrt(var) + eps)
    return jnp.where(valid, advantage, 0.0)


def signal_mask(node_reward: Float[Array, " n"], task_id: Int[Array, " n"],
                valid: Bool[Array, " n"] | None = None) -> Bool[Array, " n"]:
    """False for every node of a task group whose node rewards are all equal (no learning signal)."""
    n = node_reward.shape[0]
    valid = jnp.ones(n, bool) if valid is None else valid
    seg = jnp.where(valid, task_id, n)
    reward = node_reward.astype(jnp.float32)
    high = jax.ops.segment_max(jnp.where(valid, reward, -jnp.inf), seg, num_segments=n)[task_id]
    low = jax.ops.segment_min(jnp.where(valid, reward, jnp.inf), seg, num_segments=n)[task_id]
    return valid & (high > low)
