"""Attention of new tokens over a paged KV cache, behind ``impl="reference" | "pallas"``.

Both implementations take the same ragged layout: ``q`` holds the new tokens of every batch row
packed back to back (rows in order, no per-row padding), the cache already contains their keys and
values, and token ``t`` of row ``r`` at position ``p`` attends to positions ``0..p`` of row ``r``.

- ``reference``: pure jnp, jittable, runs on every backend and is the oracle in tests. It gathers
  each query's pages (in chunks of queries, to bound memory at ``chunk x max_len`` keys).
- ``pallas``: JAX's TPU ragged paged attention kernel; imported only when selected, on TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
IMPLS = ("reference", "pallas")


def reference_paged_attention(q: Float[Array, "t hq d"], pages: Float[Array, "p s kk d"],
                              page_table: Int[Array, "b w"], row_of_token: Int[Array, " t"],
                              pos_of_token: Int[Array, " t"], *, sm_scale: float,
                              chunk: int = 256) -> Float[Array, "t hq d"]:
    t, hq, d = q.shape
    kv_heads = pages.shape[2] // 2
    width, page_size = page_table.shape[1], pages.shape[1]

    def attend(args):
        q_c, row_c, pos_c = args  # [c, hq, d], [c], [c]
        c = q_c.shape[0]
        kv = pages[page_table[row_c]].reshape(c, width * page_size, 2 * kv_heads, d)
        k, v = kv[:, :, 0::2], kv[:, :, 1::2]
        qg = q_c.reshape(c, kv_heads, hq // kv_heads, d)
        scores = jnp.einsum("ckgd,cskd->ckgs", qg, k, preferred_element_type=jnp.float32) * sm_scale
        visible = jnp.arange(width * page_size)[None, :] <= pos_c[:, None]  # [c, s]
        scores = jnp.where(visible[:, None, None, :], scores, MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        return jnp.einsum("ckgs,cskd->ckgd", probs, v).reshape(c, hq, d).astype(q_c.dtype)

    if t <= chunk:
        return attend((q, row_of_token, pos_of_token))
    if t % chunk:
        raise ValueError(f"token count {t} must be a multiple of the attention chunk {chunk}")
    n = t // chunk
    out = jax.lax.map(attend, (q.reshape(n, chunk, hq, d), row_of_token.reshape(n, chunk),
                               pos_of_token.reshape(n, chunk)))
    return out.reshape(t, hq, d)


def pallas_paged_attention(q, pages, page_table, kv_lens, cu_q_lens, num_rows, *, sm_scale: float):
    """JAX's TPU ragged paged attention kernel (TPU only; ``kv_lens`` include the new tokens)."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ragged_paged_attention

    return ragged_paged_attention(q, pages, kv_lens, page_table, cu_q_lens, num_rows, sm_scale=sm_scale)
