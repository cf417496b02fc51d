"""Small building blocks shared by the Qwen3 decoders: RMSNorm, RoPE, SwiGLU, parameter helpers.

Every parameter carries ``logical_axes`` metadata (names such as ``"embed"`` or ``"mlp"``); the
sharding rules table of ``rao_jax.parallel`` maps those names to mesh axes. Layouts are ``[in, ...,
out]`` so the Hugging Face conversion is a reshape and a transpose.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

DType = jnp.dtype | type


def init_param(rngs: nnx.Rngs, shape: tuple[int, ...], logical_axes: tuple[str | None, ...],
               dtype: DType, std: float = 0.02) -> nnx.Param:
    """A normal(0, std) parameter, the initialiser Hugging Face uses for Qwen3 (initializer_range)."""
    assert len(shape) == len(logical_axes), (shape, logical_axes)
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=logical_axes)


def const_param(value: float, shape: tuple[int, ...], logical_axes: tuple[str | None, ...],
                dtype: DType) -> nnx.Param:
    return nnx.Param(jnp.full(shape, value, dtype), logical_axes=logical_axes)


def dense(x: Float[Array, "... k"], w: Float[Array, "k n"]) -> Float[Array, "... n"]:
    """``x @ w`` for a 2-D weight, with a CPU-specific backward.

    On a CPU, autodiff's weight gradient ``x^T @ dy`` contracts over every token, and XLA:CPU lays it
    out by transposing the wider activation in a copy and running the product over transposed
    operands, slowly. There the backward transposes the narrower of ``x`` and ``dy`` itself, behind
    an optimisation barrier, so the product is a plain one (a SwiGLU's forward + backward about 30%
    faster on 2 cores: ``benchmarks/learner_suspects.py``). Other backends keep plain autodiff.
    """
    if jax.default_backend() == "cpu":
        return _dense_cpu(x, w)
    return x @ w


@jax.custom_vjp
def _dense_cpu(x, w):
    return x @ w


def _dense_cpu_fwd(x, w):
    return x @ w, (x, w)


def _dense_cpu_bwd(residuals, dy):
    x, w = residuals
    xs, dys = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    if xs.shape[1] <= dys.shape[1]:
        dw = jax.lax.optimization_barrier(xs.T) @ dys
    else:
        dw = (jax.lax.optimization_barrier(dys.T) @ xs).T
    # The weight transposed in a copy too (it is small): the input gradient is then a plain product.
    return dy @ jax.lax.optimization_barrier(w.T), dw.astype(w.dtype)


_dense_cpu.defvjp(_dense_cpu_fwd, _dense_cpu_bwd)


class RMSNorm(nnx.Module):
    """``w * x / rms(x)``, computed in float32 (no ``1 + w`` offset: Qwen3 is not Gemma)."""

    def __init__(self, dim: int, eps: float, *, param_dtype: DType):
        self.eps = eps
        self.weight = const_param(1.0, (dim,), ("norm",), param_dtype)

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.weight[...].astype(jnp.float32) * normed.astype(x.dtype)).astype(x.dtype)


def rope(x: Float[Array, "b t h d"], positions: Int[Array, "b t"], theta: float) -> Float[Array, "b t h d"]:
    """Rotary embedding with the half-split (``rotate_half``) layout of Hugging Face Qwen3."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2.0 / x.shape[-1]))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, half]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class SwiGLU(nnx.Module):
    """Dense Qwen3 MLP: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden: int, intermediate: int, *, param_dtype: DType, dtype: DType,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.gate = init_param(rngs, (hidden, intermediate), ("embed", "mlp"), param_dtype)
        self.up = init_param(rngs, (hidden, intermediate), ("embed", "mlp"), param_dtype)
        self.down = init_param(rngs, (intermediate, hidden), ("mlp", "embed"), param_dtype)

    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        x = x.astype(self.dtype)
        h = jax.nn.silu(dense(x, self.gate[...].astype(self.dtype))) * dense(x, self.up[...].astype(self.dtype))
        return dense(h, self.down[...].astype(self.dtype))
