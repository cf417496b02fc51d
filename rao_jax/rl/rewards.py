"""Per-node rewards of delegation trees (RAO_SPEC section 2), on flat node arrays.

Nodes of any number of trees of any shape sit in flat arrays; ``parent[v]`` is the index of v's
parent in the same arrays (-1 for a root). Children are aggregated with ``jax.ops.segment_sum`` over
parent indices, so one call handles the whole batch with no Python loop over nodes, and the
function jits with a static number of nodes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

BONUSES = ("mean", "capped_sum")


def node_rewards(success: Float[Array, " n"], parent: Int[Array, " n"], *, bonus: str = "mean",
                 lam: float = 0.0, beta: float = 0.2, cap: float = 0.4,
                 valid: Bool[Array, " n"] | None = None) -> Float[Array, " n"]:
    """R_v = s_v + a bonus from v's immediate children's successes.

    Args:
        success: s_v in [0, 1], each node's own success as graded by its environment.
        parent: index of each node's parent (-1 for roots).
        bonus: ``"mean"`` (the paper): ``lam * mean_c s_c``, 0 without children, so spawning many
            cheap children cannot inflate it; ``"capped_sum"`` (the released code):
            ``min(cap, beta * sum_c s_c)``, each child credited with its own success.
        lam: weight of the mean bonus (0.0 in the released configs).
        beta, cap: the capped-sum bonus's per-child weight and ceiling.
        valid: False for padding nodes, which get reward 0 and count as nobody's child.

    Returns:
        f32[n] node rewards.
    """
    if bonus not in BONUSES:
        raise ValueError(f"bonus must be one of {BONUSES}, got {bonus!r}")
    n = success.shape[0]
    success = success.astype(jnp.float32)
    valid = jnp.ones(n, bool) if valid is None else valid
    # Roots and padding point past the last segment, which segment_sum drops.
    target = jnp.where(valid & (parent >= 0), parent, n)
    child_success = jax.ops.segment_sum(success, target, num_segments=n)
    if bonus == "mean":
        child_count = jax.ops.segment_sum(jnp.ones(n, jnp.float32), target, num_segments=n)
        extra = lam * child_success / jnp.maximum(child_count, 1.0)
    else:
        extra = jnp.minimum(cap, beta * child_success)
    return jnp.where(valid, success + extra, 0.0)
