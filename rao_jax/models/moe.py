"""Sparse mixture-of-experts block of Qwen3-MoE: softmax top-k router and SwiGLU experts.

Single device (the default, and the reference). Tokens are sorted by their chosen expert and the
three expert matmuls run as ``jax.lax.ragged_dot`` over the sorted rows, so compute is
O(tokens x k), exactly as the dense definition, with no ``[tokens, experts, d]`` dispatch tensor.

Expert parallelism (EP). Taken when the block is traced under a mesh (``jax.set_mesh``) whose
axis ``self.expert_axis`` (default ``"expert"``) has size ``ep > 1``; the mesh is read from JAX's
context with ``jax.sharding.get_abstract_mesh()``, never from the environment. ``num_experts``
must be divisible by ``ep`` (a ``ValueError`` otherwise). The router, the top-k and the
``RouterStats`` are computed as on one device; only the expert computation runs inside one
``jax.shard_map`` over every mesh axis:

* Layout inside the map. Expert weights are split on ``expert`` (``E / ep`` local experts per
  device) and their ``moe_intermediate`` dimension on ``tensor`` when it divides (their model
  dimension, stored over ``fsdp``, is gathered on entry). Flattened tokens ``[n, d]`` are split over
  all the other axes (``data``, ``fsdp``, ``expert``, ...) and replicated over ``tensor``; ``n`` is
  zero-padded to a multiple of that shard count (padding rows are computed and thrown away).
  Auto axes are laid out by ``shard_map`` itself; on a mesh with explicit axes (the default of
  ``jax.make_mesh``) the inputs are ``reshard``-ed to these specs and the output back to the
  tokens' incoming layout.
* Dispatch. Each device sorts its ``rows = n_local * k`` (token, slot) pairs by expert, so rows
  for one destination (``expert_id // (E / ep)``) are contiguous, and writes each row into a fixed
  ``[ep, C, d]`` send buffer at ``(destination, rank within destination)`` together with its local
  expert id (``E / ep`` marks an empty slot). One ``all_to_all`` over ``expert`` exchanges the
  rows (``ep * C * d`` values sent and received per device) and a second one the ``ep * C`` int32
  expert ids.
* Capacity. ``capacity_factor=None`` (the default) sets ``C = rows``, the worst case in which every
  row of a device picks experts of one destination: nothing can be dropped and the result equals
  the single-device one, at ``ep`` times the balanced traffic and buffer memory. A float sets
  ``C = min(rows, ceil(capacity_factor * rows / ep))``; rows beyond ``C`` for one destination are
  dropped (they contribute 0 to their token) and counted in ``RouterStats.dropped`` (summed over
  devices and layers). ``rao_jax.parallel.expert.configure_expert_parallel`` sets both attributes.
* Local experts. The receiver sorts the received rows by local expert id (empty slots last) and
  runs gate / up / down as ``ragged_dot`` over its ``E / ep`` experts (a partial sum over its
  ``tensor`` slice of the intermediate dimension).
* Return and combine. The results travel back in the same slots with the inverse ``all_to_all``
  (``ep * C * d`` values again); each sender multiplies its rows by their router weights and
  scatter-adds them to their tokens, then a ``psum`` over ``tensor`` completes the down projection.

Everything is differentiable: the transpose of ``all_to_all`` is the inverse ``all_to_all`` and the
gathered weights' gradients are summed back by ``shard_map``. ``jax.lax.ragged_all_to_all`` would
send only the occupied rows, but XLA:CPU does not implement it (``UNIMPLEMENTED: HLO opcode
ragged-all-to-all``), so it cannot be checked against the single-device result on the fake CPU mesh.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P
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
    dropped: Float[Array, ""] = 0.0  # (token, slot) rows dropped by an expert-parallel capacity

    def __add__(self, other: RouterStats) -> RouterStats:
        return RouterStats(self.assigned + other.assigned, self.prob + other.prob,
                           self.tokens + other.tokens, self.dropped + other.dropped)


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
        self.expert_axis = "expert"      # the mesh axis that splits the experts (see module docstring)
        self.tensor_axis = "tensor"      # the mesh axis that splits each expert's intermediate dim
        self.capacity_factor: float | None = None  # None: exact expert-parallel dispatch, no drops
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
        mesh = jax.sharding.get_abstract_mesh()
        if not mesh.empty and mesh.shape.get(self.expert_axis, 1) > 1:
            out, dropped = self._experts_parallel(flat, experts, weights.astype(self.dtype), mesh)
        else:
            out, dropped = self._experts(flat, experts, weights.astype(self.dtype)), jnp.zeros((), jnp.float32)

        mask = token_mask.reshape(b * t).astype(jnp.float32)
        num_experts = probs.shape[-1]
        onehot = jax.nn.one_hot(experts, num_experts, dtype=jnp.float32).sum(axis=1)  # [n, e]
        stats = RouterStats(assigned=mask @ onehot, prob=mask @ probs, tokens=jnp.sum(mask),
                            dropped=dropped)
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

    def _experts_parallel(self, x: Float[Array, "n d"], experts: Int[Array, "n k"],
                          weights: Float[Array, "n k"], mesh) -> tuple[Float[Array, "n d"], Array]:
        """``_experts`` with the experts split over ``self.expert_axis`` (module docstring)."""
        n, d = x.shape
        k = self.top_k
        num_experts, f = self.gate.shape[0], self.gate.shape[-1]
        axis = self.expert_axis
        ep = mesh.shape[axis]
        if num_experts % ep:
            raise ValueError(f"expert parallelism needs num_experts ({num_experts}) divisible by the "
                             f"{axis!r} mesh axis ({ep})")
        local_experts = num_experts // ep
        tp = mesh.shape.get(self.tensor_axis, 1)
        tensor = self.tensor_axis if tp > 1 and f % tp == 0 else None
        token_axes = tuple(a for a in mesh.axis_names if a != tensor)
        shards = math.prod(mesh.shape[a] for a in token_axes)
        explicit = any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
        x_spec = jax.typeof(x).sharding.spec if explicit else None
        pad = -n % shards
        if pad:
            x = jnp.pad(x, ((0, pad), (0, 0)))
            experts = jnp.pad(experts, ((0, pad), (0, 0)))
            weights = jnp.pad(weights, ((0, pad), (0, 0)))
        rows = (n + pad) // shards * k
        cap = rows if self.capacity_factor is None else min(rows, math.ceil(self.capacity_factor * rows / ep))

        def local(x, experts, weights, gate, up, down):
            # Sender: rows sorted by expert, written to (destination, rank within destination).
            flat = experts.reshape(rows)
            order = jnp.argsort(flat, stable=True)
            sorted_experts = flat[order]
            token_of_row = order // k
            dest = sorted_experts // local_experts
            counts = jnp.sum(jax.nn.one_hot(dest, ep, dtype=jnp.int32), axis=0)
            rank = jnp.arange(rows, dtype=jnp.int32) - (jnp.cumsum(counts) - counts)[dest]
            keep = rank < cap
            slot = jnp.where(keep, dest * cap + rank, ep * cap)  # out of range: dropped by the scatter
            send = jnp.zeros((ep * cap, d), x.dtype).at[slot].set(x[token_of_row], mode="drop")
            send_ids = jnp.full((ep * cap,), local_experts, jnp.int32).at[slot].set(
                sorted_experts - dest * local_experts, mode="drop")
            recv = jax.lax.all_to_all(send, axis, 0, 0, tiled=True)
            recv_ids = jax.lax.all_to_all(send_ids, axis, 0, 0, tiled=True)
            # Receiver: local experts over the received rows (empty slots sort last, in no group).
            order2 = jnp.argsort(recv_ids, stable=True)
            sizes = jnp.sum(jax.nn.one_hot(recv_ids, local_experts, dtype=jnp.int32), axis=0)
            r = recv[order2]
            h = jax.nn.silu(jax.lax.ragged_dot(r, gate, sizes)) * jax.lax.ragged_dot(r, up, sizes)
            y = jnp.zeros((ep * cap, d), x.dtype).at[order2].set(jax.lax.ragged_dot(h, down, sizes))
            back = jax.lax.all_to_all(y, axis, 0, 0, tiled=True)
            # Sender again: weight each row and add it to its token.
            y_rows = jnp.where(keep[:, None], back[jnp.minimum(slot, ep * cap - 1)], 0)
            y_rows = y_rows * weights.reshape(rows)[order][:, None]
            out = jnp.zeros_like(x).at[token_of_row].add(y_rows)
            if tensor is not None:
                out = jax.lax.psum(out, tensor)
            dropped = jax.lax.psum(jnp.sum(~keep).astype(jnp.float32), token_axes)
            return out, dropped

        tok = P(token_axes, None)
        specs = (tok, tok, tok, P(axis, None, tensor), P(axis, None, tensor), P(axis, tensor, None))
        args = (x, experts, weights, self.gate[...].astype(self.dtype), self.up[...].astype(self.dtype),
                self.down[...].astype(self.dtype))
        if explicit:
            # Explicit axes (``jax.make_mesh``'s default): shard_map wants its inputs already laid out,
            # and the result goes back to the layout of the tokens that came in.
            args = tuple(jax.sharding.reshard(a, s) for a, s in zip(args, specs, strict=True))
        run = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(tok, P()))
        out, dropped = run(*args)
        if explicit:
            out = jax.sharding.reshard(out, P() if pad else x_spec)
        out = out[:n]
        if explicit and pad:
            out = jax.sharding.reshard(out, x_spec)
        return out, dropped
