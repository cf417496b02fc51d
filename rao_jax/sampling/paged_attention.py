"""Attention of new tokens over a paged KV cache, behind ``impl="reference" | "pallas"``.

Both implementations take a ragged layout: ``q`` holds the new tokens of every batch row packed
back to back (rows in order), the cache already contains their keys and values, and token ``t`` of
row ``r`` at position ``p`` attends to positions ``0..p`` of row ``r``.

- ``reference``: pure jnp, jittable, runs on every backend. ``reference_paged_attention`` is the
  plain statement (each query gathers its row's pages) and the oracle in tests; the sampler runs
  two faster equivalents: ``reference_prefill_attention`` (each row's tokens start a new block of
  ``block`` queries, and each block reads its row's pages only up to its last position, chunk by
  chunk with an online softmax) and ``reference_decode_attention`` (each row's context gathered
  once per decode chunk, then updated in place at every step).
- ``pallas``: JAX's TPU ragged paged attention kernel; imported only when selected, on TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
IMPLS = ("reference", "pallas")
GROUP_BYTES = 32 << 20  # reference prefill attention off a CPU: working set of one group's chunk


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


def pallas_paged_attention(q, pages, page_table, kv_lens, cu_q_lens, num_rows, *, sm_scale: float,
                           kernel=None, **block_sizes):
    """JAX's TPU ragged paged attention kernel (TPU only; ``kv_lens`` include the new tokens).

    A Mosaic kernel cannot be partitioned automatically: traced under a sampler replica's mesh
    (``jax.set_mesh``) whose ``tensor`` axis splits the K/V heads (``kv_cache.kv_pool_spec``), the
    kernel runs per device under ``jax.shard_map``, each device on its own query heads and their
    key / value heads, everything else replicated. ``block_sizes`` (``num_kv_pages_per_block``,
    ``num_queries_per_block``) default to the kernel's tuned sizes for the TPU generation.
    ``kernel`` replaces the kernel (same signature), e.g. in tests.
    """
    if kernel is None:
        from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ragged_paged_attention as kernel

    def run(q, pages, kv_lens, page_table, cu_q_lens, num_rows):
        return kernel(q, pages, kv_lens, page_table, cu_q_lens, num_rows, sm_scale=sm_scale, **block_sizes)

    mesh = jax.sharding.get_abstract_mesh()
    t = 1 if mesh.empty else mesh.shape.get("tensor", 1)
    if t == 1 or (pages.shape[2] // 2) % t:
        return run(q, pages, kv_lens, page_table, cu_q_lens, num_rows)
    heads, pool = P(None, "tensor", None), P(None, None, "tensor", None)
    # The kernel's output ShapeDtypeStruct carries no varying-axes type, so check_vma must be off.
    sharded = jax.shard_map(run, mesh=mesh, in_specs=(heads, pool, P(), P(), P(), P()), out_specs=heads,
                            check_vma=False)
    return sharded(q, pages, kv_lens, page_table, cu_q_lens, num_rows)


def reference_prefill_attention(q: Float[Array, "t hq d"], pages: Float[Array, "p s kk d"],
                                page_table: Int[Array, "b w"], row_of_token: Int[Array, " t"],
                                pos_of_token: Int[Array, " t"], *, block: int, sm_scale: float,
                                group: int | None = None, chunk: int = 64) -> Float[Array, "t hq d"]:
    """Prefill / extension attention over query blocks of one row each, reading only the keys
    each block needs.

    The flat buffer is cut into blocks of ``block`` consecutive tokens, and every block must hold
    tokens of a single row (the engine starts each row's new tokens at a multiple of ``block`` and
    pads the gaps; padding tokens carry their row's id and a position of that row). A block needs
    its row's keys up to its last position, not the page table's whole width: a causal prefill of
    uniformly long prompts needs a third of it on average. So the blocks are sorted by that need,
    longest first, and taken ``group`` at a time (``lax.map``); each group reads its rows' pages
    ``chunk`` keys (rounded to whole pages) at a time, only as many chunks as its longest block
    needs (a loop with a traced trip count), and accumulates the softmax online (running maximum,
    sum and weighted values, as in flash attention). The cost follows the keys the blocks need,
    not the number of batch rows nor the longest row.

    ``group`` defaults to 64 blocks on a CPU, where the skipped keys are the saving (a 10,240-token
    prefill's attention 2.2x faster than attending over the whole width), and elsewhere to as many
    blocks as keep one chunk's scores and keys near ``GROUP_BYTES``: an accelerator prefers a few
    large operations to many small ones (usually one group, chunked over the keys).
    """
    t, hq, d = q.shape
    if t % block:
        raise ValueError(f"token count {t} must be a multiple of the prefill block {block}")
    width, page_size = page_table.shape[1], pages.shape[1]
    kv_heads = pages.shape[2] // 2
    heads = hq // kv_heads
    n = t // block
    chunk_pages = min(width, max(1, chunk // page_size))
    keys = chunk_pages * page_size
    if group is None:
        per_block = 4 * keys * (block * hq + 2 * kv_heads * d)  # float32 scores and keys / values
        group = 64 if jax.default_backend() == "cpu" else GROUP_BYTES // per_block
    group = max(1, min(n, group))
    while n % group:
        group -= 1
    # Columns past the table's width (when it is not a multiple of the chunk) read the null page;
    # their positions lie past every query's, so they are masked.
    table = jnp.pad(page_table, ((0, 0), (0, -width % chunk_pages)))

    pos = pos_of_token.reshape(n, block)
    need = pos.max(axis=1) + 1  # keys 0 .. last position of the block
    order = jnp.argsort(-need)  # longest first: each group's first block needs the most
    shape = (n // group, group)
    blocks = ((q * sm_scale).reshape(n, block, kv_heads, heads, d)[order].reshape(*shape, block, kv_heads, heads, d),
              table[row_of_token[::block][order]].reshape(*shape, table.shape[1]),
              pos[order].reshape(*shape, block), need[order].reshape(shape)[:, 0])

    def attend(args):
        q_g, table_g, pos_g, need_g = args  # [g, block, k, h, d], [g, w], [g, block], []

        def step(c, carry):
            top, total, acc = carry  # running max and sum [g, k, h, block], weighted values [.., d]
            cols = jax.lax.dynamic_slice_in_dim(table_g, c * chunk_pages, chunk_pages, axis=1)
            kv = pages[cols].reshape(group, keys, 2 * kv_heads, d)
            scores = jnp.einsum("gqkhd,gckd->gkhqc", q_g, kv[:, :, 0::2], preferred_element_type=jnp.float32)
            visible = c * keys + jnp.arange(keys)[None, None, :] <= pos_g[:, :, None]  # [g, block, c]
            scores = jnp.where(visible[:, None, None], scores, MASK_VALUE)
            new_top = jnp.maximum(top, scores.max(axis=-1))
            scale = jnp.exp(top - new_top)
            probs = jnp.exp(scores - new_top[..., None])
            acc = acc * scale[..., None] + jnp.einsum("gkhqc,gckd->gkhqd", probs.astype(kv.dtype), kv[:, :, 1::2],
                                                      preferred_element_type=jnp.float32)
            return new_top, total * scale + probs.sum(axis=-1), acc

        init = (jnp.full((group, kv_heads, heads, block), MASK_VALUE, jnp.float32),
                jnp.zeros((group, kv_heads, heads, block), jnp.float32),
                jnp.zeros((group, kv_heads, heads, block, d), jnp.float32))
        # Position 0 lies in chunk 0, so every query sees a key before any later chunk is masked whole.
        _, total, acc = jax.lax.fori_loop(0, -(-need_g // keys), step, init)
        return (acc / total[..., None]).transpose(0, 3, 1, 2, 4).reshape(group, block, hq, d)

    out = jax.lax.map(attend, blocks).reshape(n, block, hq, d)[jnp.argsort(order)]
    return out.reshape(t, hq, d).astype(q.dtype)


def reference_decode_attention(q: Float[Array, "b hq d"], k_rows: Float[Array, "b k d l"],
                               v_rows: Float[Array, "b k l d"], pos: Int[Array, " b"], *,
                               sm_scale: float) -> Float[Array, "b hq d"]:
    """One decode step: the query of each row attends to positions ``0..pos`` of its row.

    ``k_rows`` / ``v_rows`` hold each row's keys and values (the current token's included, at
    ``pos``): gathered from the pages once per decode chunk (``pages[page_table]``), then updated in
    place at every step by ``write_decode_context``. Keys are laid out ``[b, k, d, l]`` and values
    ``[b, k, l, d]`` so that both products are plain batched matmuls with no per-step transposes.
    """
    b, hq, d = q.shape
    kv_heads, length = k_rows.shape[1], k_rows.shape[3]
    qg = (q * sm_scale).reshape(b, kv_heads, hq // kv_heads, d)
    scores = jnp.einsum("bkgd,bkdl->bkgl", qg, k_rows, preferred_element_type=jnp.float32)
    visible = jnp.arange(length)[None, :] <= pos[:, None]  # [b, l]
    probs = jax.nn.softmax(jnp.where(visible[:, None, None], scores, MASK_VALUE), axis=-1)
    out = jnp.einsum("bkgl,bkld->bkgd", probs.astype(v_rows.dtype), v_rows)
    return out.reshape(b, hq, d).astype(q.dtype)


def gather_decode_context(pages: Float[Array, "p s kk d"], page_table: Int[Array, "b w"]
                          ) -> tuple[Float[Array, "b k d l"], Float[Array, "b k l d"]]:
    """Each row's keys ``[b, k, d, l]`` and values ``[b, k, l, d]`` from its pages (``l = w * s``).

    Keys and values are split off the pool before the gather, so XLA gathers each straight into
    a buffer it then lays out in one pass: 2.6x faster on CPU than gathering the interleaved rows
    and splitting them after (``benchmarks/decode_attention_forms.py``).
    """
    p, s, kk, d = pages.shape
    b, w = page_table.shape
    split = pages.reshape(p, s, kk // 2, 2, d)
    k = split[:, :, :, 0][page_table]  # [b, w, s, k, d]
    v = split[:, :, :, 1][page_table]
    return (k.transpose(0, 3, 4, 1, 2).reshape(b, kk // 2, d, w * s),
            v.transpose(0, 3, 1, 2, 4).reshape(b, kk // 2, w * s, d))


def write_decode_context(k_rows: Float[Array, "b k d l"], v_rows: Float[Array, "b k l d"],
                         k: Float[Array, "b k d"], v: Float[Array, "b k d"],
                         pos: Int[Array, " b"]) -> tuple[Float[Array, "b k d l"], Float[Array, "b k l d"]]:
    """Writes each row's new key / value at its position ``pos`` (positions past the end are dropped)."""
    rows = jnp.arange(k_rows.shape[0])
    return (k_rows.at[rows, :, :, pos].set(k.astype(k_rows.dtype), mode="drop"),
            v_rows.at[rows, :, pos].set(v.astype(v_rows.dtype), mode="drop"))


def read_decode_context(k_rows: Float[Array, "b k d l"], v_rows: Float[Array, "b k l d"],
                        start: Int[Array, " b"], n: int) -> Float[Array, "b n kk d"]:
    """Keys and values at positions ``start .. start + n - 1`` of each row, interleaved as in the
    pages (positions past the end repeat the last one)."""
    cols = jnp.minimum(start[:, None] + jnp.arange(n)[None, :], k_rows.shape[3] - 1)  # [b, n]
    k = jnp.take_along_axis(k_rows, cols[:, None, None, :], axis=3).transpose(0, 3, 1, 2)  # [b, n, k, d]
    v = jnp.take_along_axis(v_rows, cols[:, None, :, None], axis=2).transpose(0, 2, 1, 3)  # [b, n, k, d]
    b, _, kv_heads, d = k.shape
    return jnp.stack([k, v], axis=3).reshape(b, n, 2 * kv_heads, d)
