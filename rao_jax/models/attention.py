"""Grouped-query self-attention of Qwen3 for the training forward (dense, unpaged).

Packed rows are supported through segment ids: a query attends only to earlier keys of the same
segment, so several sequences share a row without seeing each other. The sampler's paged attention
lives in ``rao_jax.sampling`` and is tested against this module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from rao_jax.models.config import ModelConfig
from rao_jax.models.layers import DType, RMSNorm, const_param, dense, init_param, rope

# A large finite negative instead of -inf, so a fully masked row (padding) gives zeros, not NaNs.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(segment_ids: Int[Array, "b t"]) -> Bool[Array, "b t t"]:
    """Causal mask restricted to equal segment ids: ``mask[b, q, k]`` is True where q may see k."""
    t = segment_ids.shape[1]
    causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    return causal[None] & same_segment


def dot_product_attention(q: Float[Array, "b t hq d"], k: Float[Array, "b s hk d"],
                          v: Float[Array, "b s hk d"], mask: Bool[Array, "b t s"],
                          dtype: DType, *, causal_block: int | None = None) -> Float[Array, "b t hq d"]:
    """Softmax attention in float32 with query heads grouped over shared key/value heads.

    ``causal_block``: when ``mask`` is causal (self-attention, ``t == s``) and ``t`` is a multiple of
    it, queries go in blocks of this many and each block attends only to the keys up to its own
    end: the all-masked upper triangle of blocks is never computed, about half the work and memory
    traffic of the dense form at ``t / causal_block`` blocks. Masked keys weigh exactly 0 either way,
    so only the float summation order differs.
    """
    b, t, hq, d = q.shape
    s, hk = k.shape[1], k.shape[2]
    # Head-major once, here: every product below then has its batch dimensions leading and its
    # operands contiguous, so neither pass transposes per block (``[b, hk, g, t, d]`` queries,
    # ``[b, hk, s, d]`` keys and values).
    q = q.reshape(b, t, hk, hq // hk, d).transpose(0, 2, 3, 1, 4)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3).astype(dtype)
    if causal_block is not None and t == s and t > causal_block and t % causal_block == 0:
        blocks = []
        for end in range(causal_block, t + 1, causal_block):
            start = end - causal_block
            blocks.append(_attend(q[:, :, :, start:end], k[:, :, :end], v[:, :, :end], mask[:, start:end, :end],
                                  dtype))
        out = jnp.concatenate(blocks, axis=3)
    else:
        out = _attend(q, k, v, mask, dtype)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, hq, d)


def _attend(q: Float[Array, "b k g t d"], k: Float[Array, "b k s d"], v: Float[Array, "b k s d"],
            mask: Bool[Array, "b t s"], dtype: DType) -> Float[Array, "b k g t d"]:
    if jax.default_backend() == "cpu":
        return _attend_cpu(q, k, v, mask)
    return _attend_autodiff(q, k, v, mask, dtype)


def _attend_autodiff(q, k, v, mask, dtype):
    scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (q.shape[-1] ** -0.5)
    scores = jnp.where(mask[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return jnp.einsum("bkgts,bksd->bkgtd", probs, v)


# On a CPU, the same attention with its gradient written out, so that every product runs on operands
# laid out as it reads them: the transposes it needs (keys, values, probabilities, score gradients)
# are copies of their own behind optimisation barriers, where autodiff would leave XLA:CPU products
# over transposed operands (``layers.dense`` does the same for the projections). Queries of a key /
# value head's group are one ``[g * t, d]`` matrix.


def _grouped(q):
    b, hk, g, t, d = q.shape
    return q.reshape(b, hk, g * t, d)


def _copy_transposed(x):
    return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


def _attend_cpu_fwd(q, k, v, mask):
    b, hk, g, t, d = q.shape
    scores = jnp.matmul(_grouped(q), _copy_transposed(k), preferred_element_type=jnp.float32) * d ** -0.5
    scores = jnp.where(mask[:, None, None], scores.reshape(b, hk, g, t, -1), MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).reshape(b, hk, g * t, -1)
    out = jnp.matmul(probs.astype(v.dtype), v).reshape(b, hk, g, t, d)
    return out, (q, k, v, probs)


def _attend_cpu_bwd(residuals, d_out):
    q, k, v, probs = residuals
    b, hk, g, t, d = q.shape
    d_out = _grouped(d_out).astype(jnp.float32)
    d_v = jnp.matmul(_copy_transposed(probs), d_out)
    d_probs = jnp.matmul(d_out, _copy_transposed(v.astype(jnp.float32)))
    d_scores = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True)) * d ** -0.5
    d_q = jnp.matmul(d_scores, k.astype(jnp.float32)).reshape(b, hk, g, t, d)
    d_k = jnp.matmul(_copy_transposed(d_scores), _grouped(q).astype(jnp.float32))
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


@jax.custom_vjp
def _attend_cpu(q, k, v, mask):
    return _attend_cpu_fwd(q, k, v, mask)[0]


_attend_cpu.defvjp(_attend_cpu_fwd, _attend_cpu_bwd)


class Attention(nnx.Module):
    """Qwen3 attention: q/k/v projections, per-head RMSNorm on q and k, RoPE, GQA, output projection."""

    def __init__(self, cfg: ModelConfig, *, param_dtype: DType, dtype: DType, rngs: nnx.Rngs):
        d, hq, hk, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.dtype = dtype
        self.rope_theta = cfg.rope_theta
        self.q_proj = init_param(rngs, (d, hq, hd), ("embed", "q_heads", "head_dim"), param_dtype)
        self.k_proj = init_param(rngs, (d, hk, hd), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.v_proj = init_param(rngs, (d, hk, hd), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.o_proj = init_param(rngs, (hq, hd, d), ("q_heads", "head_dim", "embed"), param_dtype)
        if cfg.attention_bias:
            self.q_bias = const_param(0.0, (hq, hd), ("q_heads", "head_dim"), param_dtype)
            self.k_bias = const_param(0.0, (hk, hd), ("kv_heads", "head_dim"), param_dtype)
            self.v_bias = const_param(0.0, (hk, hd), ("kv_heads", "head_dim"), param_dtype)
            self.o_bias = const_param(0.0, (d,), ("embed",), param_dtype)
        else:
            self.q_bias = self.k_bias = self.v_bias = self.o_bias = None
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, param_dtype=param_dtype)

    def project_qkv(self, x: Float[Array, "b t d"], positions: Int[Array, "b t"]):
        """Queries, keys and values after norms and RoPE; the sampler reuses this to fill its cache."""
        x = x.astype(self.dtype)
        q = self._project(x, self.q_proj, self.q_bias)
        k = self._project(x, self.k_proj, self.k_bias)
        v = self._project(x, self.v_proj, self.v_bias)
        q = rope(self.q_norm(q), positions, self.rope_theta)
        k = rope(self.k_norm(k), positions, self.rope_theta)
        return q, k, v

    def output(self, attn: Float[Array, "b t hq hd"]) -> Float[Array, "b t d"]:
        w = self.o_proj[...]
        heads = attn.reshape(*attn.shape[:-2], -1).astype(self.dtype)
        out = dense(heads, w.reshape(-1, w.shape[-1]).astype(self.dtype))
        if self.o_bias is not None:
            out = out + self.o_bias[...].astype(self.dtype)
        return out

    def __call__(self, x: Float[Array, "b t d"], positions: Int[Array, "b t"],
                 mask: Bool[Array, "b t t"]) -> Float[Array, "b t d"]:
        q, k, v = self.project_qkv(x, positions)
        return self.output(dot_product_attention(q, k, v, mask, self.dtype))

    def _project(self, x: Float[Array, "b t d"], w: nnx.Param, bias: nnx.Param | None):
        d, h, k = w.shape
        y = dense(x, w[...].reshape(d, h * k).astype(self.dtype)).reshape(*x.shape[:-1], h, k)
        if bias is not None:
            y = y + bias[...].astype(self.dtype)
        return y
