"""The jitted device programs of the sampler: ragged prefill/extend, and chunked decode.

Both run the model over the paged KV cache (``kv_cache``), writing the new tokens' keys and values
with scatters and attending with ``paged_attention``; the reference decode (``decode_reads_pages``)
leaves the pages to ``write_decoded``, so that row groups can decode concurrently. Shapes are
static per call and come from a small set of buckets chosen by the engine (flat token count,
page-table width), so the number of compilations is bounded; the model is passed as an ``nnx``
graphdef (static) and state (traced), and every call that writes the cache donates it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from rao_jax.models.qwen3 import Qwen3
from rao_jax.sampling.batch import DecodeBatch, PrefillBatch
from rao_jax.sampling.kv_cache import KVCache, write_kv
from rao_jax.sampling.logits import choose_tokens, hits_stop, push_history
from rao_jax.sampling.paged_attention import (
    gather_decode_context,
    pallas_paged_attention,
    read_decode_context,
    reference_decode_attention,
    reference_prefill_attention,
    write_decode_context,
)

RUNNING, STOPPED, LENGTH = 0, 1, 2  # decode finish reasons


def paged_forward(model: Qwen3, cache: KVCache, tokens: Int[Array, " t"], pos: Int[Array, " t"],
                  row: Int[Array, " t"], valid: Bool[Array, " t"], page_table: Int[Array, "b w"],
                  kv_lens: Int[Array, " b"], cu_q_lens: Int[Array, " b1"], num_rows: Int[Array, " 1"], *,
                  attn_impl: str, block: int, keep: Int[Array, " n"] | None = None
                  ) -> tuple[Float[Array, "t d"], KVCache]:
    """Final hidden states of a flat ragged token buffer, and the cache with its K/V written.

    Token ``i`` belongs to batch row ``row[i]`` at position ``pos[i]``; rows' tokens are contiguous
    and in row order. For the reference attention each row's tokens start at a multiple of
    ``block`` (invalid padding tokens of the same row fill the gaps); for the Pallas kernel
    ``block`` is 1 and ``kv_lens`` / ``cu_q_lens`` / ``num_rows`` describe the layout.

    ``keep`` (reference attention only): return the hidden states of just these tokens. The last
    layer still writes every token's keys and values, but only the kept tokens attend and go
    through its MLP: a prefill needs each row's last token only.
    """
    if keep is not None and attn_impl == "pallas":
        raise ValueError("keep is for the reference attention")
    sm_scale = model.cfg.head_dim ** -0.5
    x = model.embed_tokens(tokens)[None]
    token_mask = valid[None].astype(jnp.float32)
    new_cache = []
    for i, (layer, pages) in enumerate(zip(model.layers, cache, strict=True)):
        written = []
        only = keep if i == len(model.layers) - 1 else None

        def attend(q, k, v, pages=pages, written=written, only=only):
            pages = write_kv(pages, k[0], v[0], page_table, row, pos, valid)
            written.append(pages)
            if attn_impl == "pallas":
                out = pallas_paged_attention(q[0], pages, page_table, kv_lens, cu_q_lens, num_rows,
                                             sm_scale=sm_scale)
            elif only is not None:  # one query per row: blocks of one
                out = reference_prefill_attention(q[0][only], pages, page_table, row[only], pos[only], block=1,
                                                  sm_scale=sm_scale)
            else:
                out = reference_prefill_attention(q[0], pages, page_table, row, pos, block=block,
                                                  sm_scale=sm_scale)
            return out[None]

        x, _ = layer.block(x, pos[None], token_mask, attend, keep=only)
        new_cache.append(written[0])
    return model.norm(x)[0], tuple(new_cache)


@functools.partial(jax.jit, static_argnames=("graphdef", "attn_impl", "candidates", "block"), donate_argnums=2)
def prefill(graphdef, state, cache: KVCache, batch: PrefillBatch, rng, *, attn_impl: str, candidates: int, block: int):
    """Writes the new tokens of every admitted row and samples each row's next token.

    Returns the updated cache, the sampled tokens ``i32[b]`` and their log-probabilities ``f32[b]``.
    """
    model = nnx.merge(graphdef, state)
    keep = None if attn_impl == "pallas" else batch.last_index  # the Pallas kernel attends for every token
    hidden, cache = paged_forward(model, cache, batch.tokens, batch.pos, batch.row, batch.valid, batch.page_table,
                                  batch.kv_lens, batch.cu_q_lens, batch.num_rows, attn_impl=attn_impl, block=block,
                                  keep=keep)
    logits = model.logits(hidden if keep is not None else hidden[batch.last_index])
    next_tokens, logprobs = choose_tokens(logits, rng, *batch.sampling, candidates=candidates)
    return cache, next_tokens, logprobs


class _Loop(NamedTuple):
    """The decode loop's state."""

    step: Array
    cache: KVCache
    context: tuple          # reference path: each layer's per-row keys / values for this chunk
    last: Array
    pos: Array
    active: Array
    remaining: Array
    history: Array
    out_tok: Array
    out_lp: Array
    count: Array
    reason: Array
    rng: Array


def _decode(graphdef, state, cache: KVCache, batch: DecodeBatch, rng, *, n_steps: int, attn_impl: str,
            candidates: int):
    """Up to ``n_steps`` decode steps for every active row, stopping early once all rows are done.

    Returns the cache (written at every step by the Pallas path, unchanged by the reference path),
    the reference path's new keys / values (one ``[b, n_steps, 2 * kv_heads, d]`` array per layer,
    valid up to ``count[b]``; empty for Pallas), ``tokens i32[b, n_steps]`` and
    ``logprobs f32[b, n_steps]`` (valid up to ``count[b]``), and the finish ``reason`` per row
    (RUNNING / STOPPED / LENGTH).

    With the reference attention each row's keys and values are gathered from the pages once, at
    the start of the chunk, into a per-chunk context (loop state, updated in place at every step);
    the chunk's new keys/values are returned, for ``write_decoded`` to scatter into the pages:
    writing the pool inside the loop would make XLA copy the whole pool at every step, because the
    same step also reads it, and leaving the pool untouched lets several row groups decode
    concurrently from the same pages.
    """
    model = nnx.merge(graphdef, state)
    page_table = batch.page_table
    rows = batch.last.shape[0]
    row_ids = jnp.arange(rows, dtype=jnp.int32)
    cu_q_lens = jnp.arange(rows + 1, dtype=jnp.int32)
    num_rows = jnp.full((1,), rows, jnp.int32)
    sm_scale = model.cfg.head_dim ** -0.5

    def forward(cache, context, last, pos, active):
        if attn_impl == "pallas":
            hidden, cache = paged_forward(model, cache, last, pos, row_ids, active, page_table, pos + 1,
                                          cu_q_lens, num_rows, attn_impl=attn_impl, block=1)
            return hidden, cache, context
        x = model.embed_tokens(last)[:, None]
        new_context = []
        for layer, (k_rows, v_rows) in zip(model.layers, context, strict=True):
            kept = []

            def attend(q, k, v, k_rows=k_rows, v_rows=v_rows, kept=kept):
                k_rows, v_rows = write_decode_context(k_rows, v_rows, k[:, 0], v[:, 0], pos)
                kept.append((k_rows, v_rows))
                return reference_decode_attention(q[:, 0], k_rows, v_rows, pos, sm_scale=sm_scale)[:, None]

            x, _ = layer.block(x, pos[:, None], active[:, None].astype(jnp.float32), attend)
            new_context.append(kept[0])
        return model.norm(x)[:, 0], cache, tuple(new_context)

    def cond(loop: _Loop):
        return (loop.step < n_steps) & jnp.any(loop.active)

    def body(loop: _Loop) -> _Loop:
        active = loop.active
        hidden, cache, context = forward(loop.cache, loop.context, loop.last, loop.pos, active)
        rng, key = jax.random.split(loop.rng)
        tok, lp = choose_tokens(model.logits(hidden), key, *batch.sampling, candidates=candidates)
        history = jnp.where(active[:, None], push_history(loop.history, tok), loop.history)
        remaining = loop.remaining - active
        stopped = active & hits_stop(history, batch.stops)
        exhausted = active & ~stopped & (remaining <= 0)
        return _Loop(
            step=loop.step + 1, cache=cache, context=context, last=jnp.where(active, tok, loop.last),
            pos=loop.pos + active, active=active & ~stopped & ~exhausted, remaining=remaining, history=history,
            out_tok=loop.out_tok.at[:, loop.step].set(jnp.where(active, tok, -1)),
            out_lp=loop.out_lp.at[:, loop.step].set(jnp.where(active, lp, 0.0)), count=loop.count + active,
            reason=jnp.where(stopped, STOPPED, jnp.where(exhausted, LENGTH, loop.reason)), rng=rng)

    # Each row's context, gathered from the pages once per chunk, wide enough for every position
    # the chunk writes (the engine sizes the page table so).
    context = () if attn_impl == "pallas" else tuple(gather_decode_context(pages, page_table) for pages in cache)
    init = _Loop(step=jnp.int32(0), cache=cache, context=context, last=batch.last, pos=batch.pos,
                 active=batch.active, remaining=batch.remaining, history=batch.history,
                 out_tok=jnp.full((rows, n_steps), -1, jnp.int32), out_lp=jnp.zeros((rows, n_steps), jnp.float32),
                 count=jnp.zeros(rows, jnp.int32), reason=jnp.full(rows, RUNNING, jnp.int32), rng=rng)
    out = jax.lax.while_loop(cond, body, init)
    new_kv = tuple(read_decode_context(k_rows, v_rows, batch.pos, n_steps) for k_rows, v_rows in out.context)
    return out.cache, new_kv, out.out_tok, out.out_lp, out.count, out.reason


_DECODE_STATIC = ("graphdef", "n_steps", "attn_impl", "candidates")
# The Pallas path writes the pages at every step: it takes the cache and donates it.
decode = jax.jit(_decode, static_argnames=_DECODE_STATIC, donate_argnums=2)


@functools.partial(jax.jit, static_argnames=_DECODE_STATIC)
def decode_reads_pages(graphdef, state, cache: KVCache, batch: DecodeBatch, rng, *, n_steps: int, attn_impl: str,
                       candidates: int):
    """The reference path: ``decode`` without the cache among the outputs (an output cannot alias
    an argument that is not donated, so returning it would copy the whole pool). It only reads the
    pages, so calls for several row groups can run concurrently on the same cache;
    ``write_decoded`` stores their new keys / values afterwards."""
    _, new_kv, *out = _decode(graphdef, state, cache, batch, rng, n_steps=n_steps, attn_impl=attn_impl,
                              candidates=candidates)
    return (new_kv, *out)


@functools.partial(jax.jit, donate_argnums=0)
def write_decoded(cache: KVCache, new_kv: tuple[tuple[Array, ...], ...], page: Int[Array, " t"],
                  offset: Int[Array, " t"]) -> KVCache:
    """Scatters the keys / values of one or more ``decode_reads_pages`` calls into the pages.

    ``new_kv[call][layer]`` is ``[b, n_steps, 2 * kv_heads, d]``; token ``i`` of the calls' rows
    and steps, flattened in that order, goes to ``(page[i], offset[i])``: the null page for steps
    a row did not take.
    """
    out = []
    for layer, pages in enumerate(cache):
        kv = jnp.concatenate([call[layer].reshape(-1, *pages.shape[2:]) for call in new_kv])
        out.append(pages.at[page, offset].set(kv.astype(pages.dtype), mode="drop"))
    return tuple(out)
