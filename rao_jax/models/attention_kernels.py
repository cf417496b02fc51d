"""Training / prefill attention behind an explicit ``attn_impl="xla" | "splash" | "cudnn"`` switch.

All three compute causal grouped-query attention restricted to equal segment ids (packed rows), on
``q [b, t, hq, d]``, ``k, v [b, t, hk, d]``, and return ``[b, t, hq, d]`` in the compute dtype.

- ``xla``: ``attention.dot_product_attention`` on a dense ``[b, t, t]`` mask, queries in causal
  blocks of ``XLA_CAUSAL_BLOCK`` (the blocks above the diagonal are skipped: 2x faster training
  steps at 1024-token rows on CPU); pure jnp, every backend, the oracle in tests, and the default.
- ``splash``: JAX's Pallas TPU splash attention (block-sparse flash attention). A causal mask plus
  the kernel's ``SegmentIds``; GQA through its multi-query form (one kernel call per key/value head,
  the group's query heads sharing it). Sequence length must be a multiple of 128. TPU only.
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (cuDNN flash attention),
  ``is_causal=True`` and, for packed rows, a boolean ``[b, 1, t, t]`` same-segment mask (cuDNN
  adds it as a bias). GQA is native. bfloat16 / float16 only. NVIDIA GPU only.

The kernel modules are imported only when their implementation runs. Invariant of every packed
row: causal + same-segment always keeps the diagonal, so no query row is fully masked.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from rao_jax.models.attention import attention_mask, dot_product_attention
from rao_jax.models.layers import DType

ATTN_IMPLS = ("xla", "splash", "cudnn")
_BACKEND_OF = {"splash": "tpu", "cudnn": "gpu"}
_SPLASH_BLOCKS = (512, 256, 128)
XLA_CAUSAL_BLOCK = 128


def check_attn_impl(impl: str, backend: str | None = None) -> None:
    """Raises ValueError when ``impl`` is unknown or cannot run on ``backend`` (default: JAX's)."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
    need = _BACKEND_OF.get(impl)
    backend = backend or jax.default_backend()
    if need is not None and backend != need:
        raise ValueError(f"attn_impl={impl!r} needs the {need} backend, but JAX's backend is {backend!r}; "
                         f"use attn_impl='xla' there")


def training_attention(q: Float[Array, "b t hq d"], k: Float[Array, "b t hk d"], v: Float[Array, "b t hk d"],
                       *, impl: str, dtype: DType, mask: Bool[Array, "b t t"] | None = None,
                       segment_ids: Int[Array, "b t"] | None = None) -> Float[Array, "b t hq d"]:
    """Dispatches to one implementation.

    Args:
        impl: one of ``ATTN_IMPLS``.
        dtype: compute dtype (the model's).
        mask: ``xla`` only: the dense causal same-segment mask (``attention.attention_mask``).
        segment_ids: ``splash`` / ``cudnn``: segment ids of the row; None means one sequence per row.
    """
    if impl == "xla":
        if mask is None:
            mask = attention_mask(jnp.zeros(q.shape[:2], jnp.int32) if segment_ids is None else segment_ids)
        return dot_product_attention(q, k, v, mask, dtype, causal_block=XLA_CAUSAL_BLOCK)
    check_attn_impl(impl)
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
    if impl == "splash":
        return _on_mesh(splash_attention, q, k, v, segment_ids)
    return cudnn_attention(q, k, v, segment_ids)


def _on_mesh(kernel, q, k, v, segment_ids):
    """Runs a per-device kernel under the active mesh: rows split over the batch axes, heads over
    ``tensor`` (a Pallas call has no partitioning rule of its own, so XLA would gather its inputs).
    Axes that do not divide a dimension stay unsplit; without a mesh the kernel runs as is."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or all(n == 1 for n in mesh.shape.values()):
        return kernel(q, k, v, segment_ids)
    from jax.sharding import PartitionSpec as P

    b, hq, hk = q.shape[0], q.shape[2], k.shape[2]
    rows, size = [], 1
    for axis in ("data", "fsdp", "expert"):
        n = mesh.shape.get(axis, 1)
        if n > 1 and b % (size * n) == 0:
            rows.append(axis)
            size *= n
    tp = mesh.shape.get("tensor", 1)
    heads = "tensor" if tp > 1 and hq % tp == 0 and hk % tp == 0 else None
    row_spec = tuple(rows) or None
    qkv = P(row_spec, None, heads, None)
    if segment_ids is None:
        run = jax.shard_map(lambda q_, k_, v_: kernel(q_, k_, v_, None), mesh=mesh, in_specs=(qkv, qkv, qkv),
                            out_specs=qkv, check_vma=False)
        return run(q, k, v)
    # check_vma off: the Pallas call's outputs carry no varying-axes annotation (each device's rows
    # and heads are independent, so there is nothing to check).
    run = jax.shard_map(kernel, mesh=mesh, in_specs=(qkv, qkv, qkv, P(row_spec, None)), out_specs=qkv,
                        check_vma=False)
    return run(q, k, v, segment_ids)


def splash_attention(q: Float[Array, "b t hq d"], k: Float[Array, "b t hk d"], v: Float[Array, "b t hk d"],
                     segment_ids: Int[Array, "b t"] | None, *, interpret: bool = False) -> Float[Array, "b t hq d"]:
    """Pallas TPU splash attention (``interpret=True`` runs the kernel's interpreter, e.g. on CPU)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    b, t, hq, d = q.shape
    hk = k.shape[2]
    if t % 128:
        raise ValueError(f"attn_impl='splash' needs a sequence length that is a multiple of 128, got {t}; "
                         "pad the rows")
    kernel = _splash_kernel(t, hq // hk, interpret)
    # The kernel does not scale the scores: fold 1/sqrt(d) into q (in float32, then back).
    q = (q.astype(jnp.float32) * (d ** -0.5)).astype(k.dtype)
    qg = q.reshape(b, t, hk, hq // hk, d).transpose(0, 2, 3, 1, 4)  # [b, hk, g, t, d]
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, hk, t, d]

    def one_row(q_r, k_r, v_r, seg_r):
        ids = None if seg_r is None else splash.SegmentIds(q=seg_r, kv=seg_r)
        return jax.vmap(lambda qh, kh_, vh_: kernel(qh, kh_, vh_, ids))(q_r, k_r, v_r)

    if segment_ids is None:
        out = jax.vmap(lambda q_r, k_r, v_r: one_row(q_r, k_r, v_r, None))(qg, kh, vh)
    else:
        out = jax.vmap(one_row)(qg, kh, vh, segment_ids.astype(jnp.int32))
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, hq, d)


@functools.lru_cache(maxsize=32)
def _splash_kernel(t: int, group: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    block = next(blk for blk in _SPLASH_BLOCKS if t % blk == 0)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask([splash.CausalMask((t, t))] * group)
    with jax.ensure_compile_time_eval():  # concrete mask metadata, safe to cache across traces
        return splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def cudnn_attention(q: Float[Array, "b t hq d"], k: Float[Array, "b t hk d"], v: Float[Array, "b t hk d"],
                    segment_ids: Int[Array, "b t"] | None, *,
                    implementation: str = "cudnn") -> Float[Array, "b t hq d"]:
    """cuDNN flash attention through ``jax.nn.dot_product_attention``.

    ``implementation="xla"`` runs the same call through XLA (tests check the masking on CPU).
    """
    if implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attn_impl='cudnn' needs bfloat16 or float16 compute (model.dtype), got {q.dtype}")
    mask = None
    if segment_ids is not None:
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # [b, 1, t, t]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation=implementation)
