"""Attention of new tokens over a paged KV cache, behind ``impl="reference" | "pallas"``.

Both implementations take the same ragged layout: ``q`` holds the new tokens of every batch row
packed back to back (rows in order, no per-row padding), the cache already contains their keys and
values, and token ``t`` of row ``r`` at position ``p`` attends to positions ``0..p`` of row ``r``.

- ``reference``: pure jnp, jittable, runs on every backend. ``reference_paged_attention`` is the
  plain statement (each query gathers its row's pages) and the oracle in tests; the sampler runs
  two faster equivalents: ``reference_prefill_attention`` (queries grouped by row, each row's pages
  gathered once) and ``reference_decode_attention`` (context gathered once per decode chunk plus a
  small buffer of the chunk's own tokens).
- ``pallas``: JAX's TPU ragged paged attention kernel; imported only when selected, on TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

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


def reference_prefill_attention(q: Float[Array, "t hq d"], pages: Float[Array, "p s kk d"],
                                page_table: Int[Array, "b w"], row_of_token: Int[Array, " t"],
                                slot_of_token: Int[Array, " t"], pos_of_token: Int[Array, " t"],
                                valid: Bool[Array, " t"], *, q_max: int, sm_scale: float,
                                block_bytes: int = 64 << 20) -> Float[Array, "t hq d"]:
    """Prefill / extension attention, grouping queries by row.

    ``reference_paged_attention`` gathers a row's whole context once per query token; here the
    pages of each row are gathered once, the row's new queries are laid out in ``q_max`` slots
    (``slot_of_token`` = index among the row's new tokens), rows attend in blocks that bound the
    score tensor to about ``block_bytes``, and results go back to the flat token order.
    """
    t, hq, d = q.shape
    rows, width = page_table.shape
    kv_heads, length = pages.shape[2] // 2, width * pages.shape[1]
    row = jnp.where(valid, row_of_token, rows)  # padding tokens fall outside and are dropped
    q_rows = jnp.zeros((rows, q_max, hq, d), q.dtype).at[row, slot_of_token].set(q, mode="drop")
    pos_rows = jnp.full((rows, q_max), -1, jnp.int32).at[row, slot_of_token].set(pos_of_token, mode="drop")
    block = max(1, min(rows, block_bytes // max(1, q_max * length * hq * 4)))
    while rows % block:
        block -= 1

    def attend(args):
        q_b, table_b, pos_b = args  # [r, q_max, hq, d], [r, w], [r, q_max]
        r = q_b.shape[0]
        kv = pages[table_b].reshape(r, length, 2 * kv_heads, d)
        # Batch axes first and contracting axes innermost: plain batched matmuls, no transposes.
        k = kv[:, :, 0::2].transpose(0, 2, 3, 1)  # [r, k, d, s]
        v = kv[:, :, 1::2].transpose(0, 2, 1, 3)  # [r, k, s, d]
        qg = q_b.reshape(r, q_max, kv_heads, hq // kv_heads, d).transpose(0, 2, 3, 1, 4)
        qg = qg.reshape(r, kv_heads, (hq // kv_heads) * q_max, d)  # [r, k, g*q, d]
        scores = jnp.einsum("rkxd,rkds->rkxs", qg, k, preferred_element_type=jnp.float32)
        scores = scores.reshape(r, kv_heads, hq // kv_heads, q_max, length)
        visible = jnp.arange(length)[None, None, :] <= pos_b[:, :, None]  # [r, q, s]
        scores = jnp.where(visible[:, None, None], scores * sm_scale, MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1).astype(kv.dtype)
        out = jnp.einsum("rkxs,rksd->rkxd", probs.reshape(r, kv_heads, -1, length), v)
        return out.reshape(r, kv_heads, hq // kv_heads, q_max, d).transpose(0, 3, 1, 2, 4).reshape(r, q_max, hq, d)

    n = rows // block
    out = jax.lax.map(attend, (q_rows.reshape(n, block, q_max, hq, d), page_table.reshape(n, block, width),
                               pos_rows.reshape(n, block, q_max)))
    out = out.reshape(rows, q_max, hq, d)
    return out[jnp.minimum(row, rows - 1), slot_of_token].astype(q.dtype)


def reference_decode_attention(q: Float[Array, "b hq d"], k_rows: Float[Array, "b k d l"],
                               v_rows: Float[Array, "b k l d"], cached_len: Int[Array, " b"],
                               recent: Float[Array, "b n kk d"], step: Int[Array, ""], *,
                               sm_scale: float) -> Float[Array, "b hq d"]:
    """One decode step: each row attends to its cached tokens plus the ``step + 1`` newest ones.

    ``k_rows`` / ``v_rows`` are each row's cached keys and values, gathered from the pages once per
    decode chunk (``pages[page_table]``) and laid out as ``[b, k, d, l]`` / ``[b, k, l, d]`` so that
    both products are plain batched matmuls with no per-step transposes; the newest keys/values
    live in ``recent`` (``[rows, chunk steps, 2K, D]``) and are written to their pages when the
    chunk ends. The pool is therefore only read inside the loop: writing it there would make XLA
    copy the whole pool at every step, because the same step also reads it.
    """
    b, hq, d = q.shape
    kv_heads, length = k_rows.shape[1], k_rows.shape[3]
    qg = q.reshape(b, kv_heads, hq // kv_heads, d)
    cached = jnp.einsum("bkgd,bkds->bkgs", qg, k_rows, preferred_element_type=jnp.float32)
    fresh = jnp.einsum("bkgd,bnkd->bkgn", qg, recent[:, :, 0::2], preferred_element_type=jnp.float32)
    cached = jnp.where((jnp.arange(length)[None, :] < cached_len[:, None])[:, None, None],
                       cached * sm_scale, MASK_VALUE)
    fresh = jnp.where(jnp.arange(recent.shape[1]) <= step, fresh * sm_scale, MASK_VALUE)
    probs = jax.nn.softmax(jnp.concatenate([cached, fresh], axis=-1), axis=-1)
    out = (jnp.einsum("bkgs,bksd->bkgd", probs[..., :length].astype(v_rows.dtype), v_rows)
           + jnp.einsum("bkgn,bnkd->bkgd", probs[..., length:].astype(recent.dtype), recent[:, :, 1::2]))
    return out.reshape(b, hq, d).astype(q.dtype)
