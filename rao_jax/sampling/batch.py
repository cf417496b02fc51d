"""Host-side packing of the scheduler's rows into the inputs of one device call.

The jitted programs (``sampler``) take these small pytree structs: ``PrefillBatch`` (one flat,
ragged buffer of every admitted row's new tokens) and ``DecodeBatch`` (one slot per batch row),
each with its rows' ``SamplingArrays``. Their leaves are numpy arrays: the jitted call transfers
them itself, cheaper than staging each through ``jnp.asarray``. A new per-request sampling field is
one field here and one line in each builder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rao_jax.sampling.logits import NO_TOKEN, NOT_YET, SamplingParams
from rao_jax.sampling.page_allocator import NULL_PAGE, PageAllocator
from rao_jax.sampling.scheduler import Admission, Request
from rao_jax.sampling.sizes import EngineConfig, bucket


class SamplingArrays(NamedTuple):
    """Per-row sampling settings (idle rows: greedy, no filter)."""

    temperature: np.ndarray  # f32[b]
    top_k: np.ndarray        # i32[b]
    top_p: np.ndarray        # f32[b]


class PrefillBatch(NamedTuple):
    """Every admitted row's new tokens, back to back (token ``i`` is row ``row[i]``'s, at ``pos[i]``).

    ``last_index[b]`` is the flat index of row ``b``'s last new token; ``kv_lens``, ``cu_q_lens``
    and ``num_rows`` describe the layout for the Pallas kernel.
    """

    tokens: np.ndarray      # i32[t]
    pos: np.ndarray         # i32[t]
    row: np.ndarray         # i32[t]
    valid: np.ndarray       # bool[t]
    page_table: np.ndarray  # i32[b, pages_per_seq]
    last_index: np.ndarray  # i32[b]
    kv_lens: np.ndarray     # i32[b]
    cu_q_lens: np.ndarray   # i32[b + 1]
    num_rows: np.ndarray    # i32[1]
    sampling: SamplingArrays


class DecodeBatch(NamedTuple):
    """One decode call's rows: ``last`` is each row's newest token (not yet cached) at ``pos``."""

    last: np.ndarray        # i32[b]
    pos: np.ndarray         # i32[b]
    active: np.ndarray      # bool[b]
    remaining: np.ndarray   # i32[b]: tokens the row may still generate
    history: np.ndarray     # i32[b, max_stop_len]: its last generated tokens (right-aligned)
    stops: np.ndarray       # i32[b, max_stops, max_stop_len]: its stop sequences (right-aligned)
    page_table: np.ndarray  # i32[b, w]
    sampling: SamplingArrays


@dataclasses.dataclass
class DecodeGroup:
    """One decode call: ``rows[i]`` is the batch row in slot ``i`` (None: idle padding)."""

    rows: list[int | None]
    batch: DecodeBatch
    candidates: int  # static top-k / top-p candidate count (0: no row filters)

    def destinations(self, count: np.ndarray, n_steps: int, page_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(page, offset) of each new token of the chunk, in (slot, step) order: the slot's page for
        its position, or the null page for the steps it did not take (``count`` per slot)."""
        pos, table = self.batch.pos, self.batch.page_table
        steps = np.arange(n_steps)
        at = pos[:, None] + steps[None, :]
        column = np.minimum(at // page_size, table.shape[1] - 1)
        page = np.where(steps[None, :] < count[:, None], np.take_along_axis(table, column, axis=1), NULL_PAGE)
        return page.reshape(-1), (at % page_size).reshape(-1)


def sampling_arrays(params: Sequence[SamplingParams | None], *, max_top_k: int,
                    vocab_size: int) -> tuple[SamplingArrays, int]:
    """The rows' sampling arrays, and the static candidate count of the call (0 when no row
    filters by top-k / top-p: the filter is compiled out)."""
    arrays = SamplingArrays(np.array([p.temperature if p else 0.0 for p in params], np.float32),
                            np.array([p.top_k if p else 0 for p in params], np.int32),
                            np.array([p.top_p if p else 1.0 for p in params], np.float32))
    filtered = any(p is not None and p.filtered for p in params)
    return arrays, (min(max_top_k, vocab_size) if filtered else 0)


def prefill_batch(admitted: Sequence[Admission], cfg: EngineConfig, alloc: PageAllocator, *, align: int,
                  vocab_size: int) -> tuple[PrefillBatch, int]:
    """Packs the admitted rows (in row order: the Pallas kernel wants them so), each starting at a
    multiple of ``align`` (padding tokens of the same row, invalid, fill the gaps); the flat length
    is padded to a prefill bucket. Returns the batch and its candidate count."""
    rows = cfg.max_rows
    tokens, pos, row_of, valid = [], [], [], []
    last_index = np.zeros(rows, np.int32)
    kv_lens = np.zeros(rows, np.int32)
    new_tokens = np.zeros(rows, np.int32)
    seqs: list = [None] * rows
    params: list[SamplingParams | None] = [None] * rows
    for item in sorted(admitted, key=lambda a: a.row):
        full = item.request.tokens
        n = len(full) - item.start
        pad = -(-n // align) * align - n
        tokens += full[item.start:] + [0] * pad
        pos += list(range(item.start, len(full))) + [len(full) - 1] * pad
        row_of += [item.row] * (n + pad)
        valid += [True] * n + [False] * pad
        last_index[item.row] = len(tokens) - pad - 1
        kv_lens[item.row] = len(full)
        new_tokens[item.row] = n
        seqs[item.row] = item.request.seq
        params[item.row] = item.request.params
    pad = max(cfg.min_prefill_bucket, bucket(len(tokens), cfg.prefill_buckets_per_octave)) - len(tokens)
    sampling, candidates = sampling_arrays(params, max_top_k=cfg.max_top_k, vocab_size=vocab_size)
    return PrefillBatch(
        tokens=np.array(tokens + [0] * pad, np.int32), pos=np.array(pos + [0] * pad, np.int32),
        row=np.array(row_of + [0] * pad, np.int32), valid=np.array(valid + [False] * pad),
        # The full width: the prefill attention reads each block's pages only up to its position
        # (and the Pallas kernel up to kv_lens), so a narrower table would only add compilations.
        page_table=alloc.page_table(seqs), last_index=last_index, kv_lens=kv_lens,
        cu_q_lens=np.concatenate([[0], np.cumsum(new_tokens)]).astype(np.int32),
        num_rows=np.array([rows], np.int32), sampling=sampling), candidates


def decode_groups(running: Sequence[Request | None], cfg: EngineConfig, alloc: PageAllocator, *,
                  vocab_size: int) -> list[DecodeGroup]:
    """The row groups of one decode chunk over the batch rows ``running`` (None: idle), each one call.

    With ``decode_groups`` 1: every batch row, in row order. With more: the running rows sorted by
    the length they reach in this chunk and cut into groups of ``max_rows // decode_groups`` (only
    as many as the running rows fill; the last one padded with idle rows), so that each group's
    context is only as wide as its own longest row.
    """
    if cfg.decode_groups == 1:
        slices: list[list[int | None]] = [[r if running[r] is not None else None for r in range(len(running))]]
    else:
        size = cfg.max_rows // cfg.decode_groups
        active = [r for r, q in enumerate(running) if q is not None]
        order = sorted(active, key=lambda r: running[r].reach(cfg.decode_steps))
        slices = [order[i:i + size] for i in range(0, len(order), size)]
        slices[-1] += [None] * (size - len(slices[-1]))
    return [_decode_group(rows, [None if r is None else running[r] for r in rows], cfg, alloc, vocab_size)
            for rows in slices]


def _decode_group(rows: list[int | None], requests: list[Request | None], cfg: EngineConfig,
                  alloc: PageAllocator, vocab_size: int) -> DecodeGroup:
    history = np.full((len(rows), cfg.max_stop_len), NOT_YET, np.int32)
    stops = np.full((len(rows), cfg.max_stops, cfg.max_stop_len), NO_TOKEN, np.int32)
    for i, request in enumerate(requests):
        if request is None:
            continue
        tail = request.generated[-cfg.max_stop_len:]
        history[i, cfg.max_stop_len - len(tail):] = tail
        for j, stop in enumerate(request.params.stop):
            stops[i, j, cfg.max_stop_len - len(stop):] = stop
    longest = max(q.reach(cfg.decode_steps) for q in requests if q is not None)
    sampling, candidates = sampling_arrays([q.params if q else None for q in requests], max_top_k=cfg.max_top_k,
                                           vocab_size=vocab_size)
    batch = DecodeBatch(
        last=np.array([q.generated[-1] if q else 0 for q in requests], np.int32),
        pos=np.array([q.pos if q else 0 for q in requests], np.int32),
        active=np.array([q is not None for q in requests]),
        remaining=np.array([q.remaining if q else 0 for q in requests], np.int32),
        history=history, stops=stops,
        page_table=decode_page_table([q.seq if q else None for q in requests], longest, cfg, alloc),
        sampling=sampling)
    return DecodeGroup(rows=rows, batch=batch, candidates=candidates)


def decode_page_table(seqs: Sequence | None, longest: int, cfg: EngineConfig, alloc: PageAllocator) -> np.ndarray:
    """Decode page table of ``seqs`` (one per batch row; None: idle), wide enough for ``longest`` tokens.

    The decode attends over the table's whole width, so widths follow the longest sequence
    closely: powers of two of pages and 1.25x, 1.5x, 1.75x them, at least a quarter of the
    full width (at most nine widths ever compile).
    """
    full = cfg.pages_per_seq
    width = min(full, max(bucket(-(-longest // cfg.page_size), 4), -(-full // 4)))
    return alloc.page_table(seqs, width)
