"""Sparse mixture-of-experts block of Qwen3-MoE: softmax top-k router and SwiGLU experts.

Tokens are sorted by their chosen expert and the three expert matmuls run as
``jax.lax.ragged_dot`` over the sorted rows, so compute is O(tokens x k), exactly as the dense
definition, with no ``[tokens, experts, d]`` dispatch tensor. Expert parallelism over a mesh axis
belongs to ``rao_jax.parallel``; this is the single-device computation it must agree with.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from rao_jax.models.config import ModelConfig
from rao_jax.models.layers import DType, init_param


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RouterStats:
    """Sums over tokens that the load-balancing loss needs; they add up across layers.

    Hugging Face's Qwen3-MoE loss concatenates all layers' router outputs before averaging, so the
    per-layer sums are accumulated and the loss is formed once at the end (``load_balancing_loss``).
    """

    assigned: Float[Array, " e"]  # sum over tokens and top-k slots of the one-hot expert choice
    prob: Float[Array, " e"]      # sum over tokens of the full softmax router probabilities
    tokens: Float[Array, ""]      # number of (unmasked) tokens

    def __add__(self, other: RouterStats) -> RouterStats:
        return RouterStats(self.assigned + other.assigned, self.prob + other.prob,
                           self.tokens + other.tokens)


def load_balancing_loss(stats: RouterStats) -> Float[Array, ""]:
    """Switch-transformer auxiliary loss ``E * sum_e f_e * p_e`` (Hugging Face's definition)."""
    n = jnp.maximum(stats.tokens, 1.0)
    return stats.assigned.shape[0] * jnp.sum((stats.assigned / n) * (stats.prob / n))


class MoEBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, param_dtype: DType, dtype: DType, rngs: nnx.Rngs):
        d, e, f = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
        self.dtype = dtype
        self.top_k = cfg.num_experts_per_tok
        self.norm_topk_prob = cfg.norm_topk_prob
        self.router = init_param(rngs, (d, e), ("embed_moe", None), param_dtype)
        self.gate = init_param(rngs, (e, d, f), ("exp", "embed_moe", "mlp_moe"), param_dtype)
        self.up = init_param(rngs, (e, d, f), ("exp", "embed_moe", "mlp_moe"), param_dtype)
        self.down = init_param(rngs, (e, f, d), ("exp", "mlp_moe", "embed_moe"), param_dtype)

    def __call__(self, x: Float[Array, "b t d"], token_mask: Float[Array, "b t"]
                 ) -> tuple[Float[Array, "b t d"], RouterStats]:
        b, t, d = x.shape
        flat = x.reshape(b * t, d).astype(self.dtype)
        logits = jnp.einsum("nd,de->ne", flat, self.router[...].astype(self.dtype),
                            preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        weights, experts = jax.lax.top_k(probs, self.top_k)  # [n, k]
        if self.norm_topk_prob:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        out = self._experts(flat, experts, weights.astype(self.dtype))

        mask = token_mask.reshape(b * t).astype(jnp.float32)
        num_experts = probs.shape[-1]
        onehot = jax.nn.one_hot(experts, num_experts, dtype=jnp.float32).sum(axis=1)  # [n, e]
        stats = RouterStats(assigned=mask @ onehot, prob=mask @ probs, tokens=jnp.sum(mask))
        return out.reshape(b, t, d), stats

    def _experts(self, x: Float[Array, "n d"], experts: Int[Array, "n k"],
                 weights: Float[Array, "n k"]) -> Float[Array, "n d"]:
        n, k = experts.shape
        num_experts = self.router.shape[-1]
        flat_experts = experts.reshape(n * k)
        order = jnp.argsort(flat_experts, stable=True)
        token_of_row = order // k
        group_sizes = jnp.bincount(flat_experts, length=num_experts).astype(jnp.int32)
        rows = x[token_of_row]
        gate = jax.lax.ragged_dot(rows, self.gate[...].astype(self.dtype), group_sizes)
        up = jax.lax.ragged_dot(rows, self.up[...].astype(self.dtype), group_sizes)
        y = jax.lax.ragged_dot(jax.nn.silu(gate) * up, self.down[...].astype(self.dtype), group_sizes)
        y = y * weights.reshape(n * k)[order][:, None]
        return jnp.zeros_like(x).at[token_of_row].add(y)
