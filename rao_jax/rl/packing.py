"""Packing node episodes into fixed-size rows, and chunked log-probabilities of packed rows.

Each delegation-tree node trains on its whole episode: one growing token sequence (prompt, actions,
observations, child results) with a loss mask on the tokens it sampled, the sampler's recorded
log-probabilities of those tokens, and the node's scalar advantage. Sequences are packed first-fit
into rows of ``row_len`` tokens; segment ids keep packed sequences from attending to each other and
restart positions. Targets are stored shifted: position i carries what the logits at i predict
(token i + 1 of the same sequence), with that token's mask, behaviour log-prob and advantage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from rao_jax.models.qwen3 import Qwen3


@dataclasses.dataclass(frozen=True)
class NodeSequence:
    tokens: np.ndarray          # i32[L] the node's whole episode
    loss_mask: np.ndarray       # f32[L] 1 on tokens the node sampled (trained), else 0
    behaviour_logp: np.ndarray  # f32[L] the sampler's log-prob of each sampled token (0 elsewhere)
    advantage: float            # the node's scalar advantage


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """``[rows, row_len]`` arrays; segment id 0 is padding."""

    tokens: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    targets: np.ndarray          # token that the logits at each position predict
    loss_mask: np.ndarray        # mask of that target token
    behaviour_logp: np.ndarray   # behaviour log-prob of that target token
    advantage: np.ndarray        # advantage of the target's node


def pack_sequences(sequences: Sequence[NodeSequence], row_len: int, num_rows: int | None = None) -> PackedBatch:
    """First-fit-decreasing packing of whole sequences into rows (a sequence is never split).

    Raises:
        ValueError: a sequence longer than ``row_len``, inconsistent array lengths, or more rows
            needed than ``num_rows``.
    """
    for i, seq in enumerate(sequences):
        n = len(seq.tokens)
        if not (len(seq.loss_mask) == len(seq.behaviour_logp) == n):
            raise ValueError(f"sequence {i}: tokens, loss_mask and behaviour_logp lengths differ "
                             f"({n}, {len(seq.loss_mask)}, {len(seq.behaviour_logp)})")
        if n > row_len:
            raise ValueError(f"sequence {i} has {n} tokens, more than a row holds ({row_len}); raise row_len")
        if n and seq.loss_mask[0]:
            raise ValueError(f"sequence {i}: its first token cannot be trained (nothing predicts it)")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(sequences)), key=lambda i: -len(sequences[i].tokens)):
        n = len(sequences[i].tokens)
        row = next((r for r, space in enumerate(free) if space >= n), None)
        if row is None:
            rows.append([])
            free.append(row_len)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= n
    num_rows = len(rows) if num_rows is None else num_rows
    if len(rows) > num_rows:
        raise ValueError(f"{len(sequences)} sequences need {len(rows)} rows of {row_len} tokens; only {num_rows}")

    shape = (num_rows, row_len)
    out = {name: np.zeros(shape, dtype) for name, dtype in (
        ("tokens", np.int32), ("segment_ids", np.int32), ("positions", np.int32), ("targets", np.int32),
        ("loss_mask", np.float32), ("behaviour_logp", np.float32), ("advantage", np.float32))}
    for r, members in enumerate(rows):
        start = 0
        for segment, i in enumerate(members, start=1):
            seq = sequences[i]
            n = len(seq.tokens)
            span = slice(start, start + n)
            out["tokens"][r, span] = seq.tokens
            out["segment_ids"][r, span] = segment
            out["positions"][r, span] = np.arange(n)
            shifted = slice(start, start + n - 1)  # position j predicts token j + 1
            out["targets"][r, shifted] = seq.tokens[1:]
            out["loss_mask"][r, shifted] = seq.loss_mask[1:]
            out["behaviour_logp"][r, shifted] = seq.behaviour_logp[1:]
            out["advantage"][r, shifted] = seq.advantage
            start += n
    return PackedBatch(**out)


def token_logprobs(model: Qwen3, tokens: Array, positions: Array, segment_ids: Array, targets: Array, *,
                   chunk: int = 256) -> Float[Array, "r t"]:
    """log pi(target) at every position, computing logits ``chunk`` positions at a time.

    The ``[tokens, vocab]`` logits are never materialised whole, in the forward or (thanks to
    rematerialising each chunk) in the backward pass.
    """
    return _chunked_logprobs(model, tokens, positions, segment_ids, targets, chunk=chunk, with_entropy=False)[0]


def token_logprobs_and_entropy(model: Qwen3, tokens: Array, positions: Array, segment_ids: Array, targets: Array,
                               *, chunk: int = 256) -> tuple[Float[Array, "r t"], Float[Array, "r t"]]:
    """``token_logprobs`` and the policy's entropy ``-sum_v pi(v) log pi(v)`` at every position.

    Both come from the same rematerialised chunk of log-softmax, so the entropy (and its gradient,
    for an entropy bonus) costs no ``[tokens, vocab]`` buffer either.
    """
    return _chunked_logprobs(model, tokens, positions, segment_ids, targets, chunk=chunk, with_entropy=True)[:2]


def token_logprobs_entropy_aux(
        model: Qwen3, tokens: Array, positions: Array, segment_ids: Array, targets: Array, *, chunk: int = 256,
) -> tuple[Float[Array, "r t"], Float[Array, "r t"], Float[Array, ""]]:
    """``token_logprobs_and_entropy`` plus the forward's MoE load-balancing loss (0 for dense models)."""
    return _chunked_logprobs(model, tokens, positions, segment_ids, targets, chunk=chunk, with_entropy=True)


def _chunked_logprobs(model: Qwen3, tokens: Array, positions: Array, segment_ids: Array, targets: Array, *,
                      chunk: int, with_entropy: bool) -> tuple[Array, Array | None, Array]:
    out = model.forward(tokens, positions, segment_ids)
    hidden = out.hidden
    r, t, d = hidden.shape
    chunk = min(chunk, t)
    if t % chunk:
        raise ValueError(f"row length {t} must be a multiple of the log-prob chunk {chunk}")

    @jax.checkpoint
    def one(args):
        h, y = args  # [r, chunk, d], [r, chunk]
        logp = jax.nn.log_softmax(model.logits(h), axis=-1)
        picked = jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
        if not with_entropy:
            return picked
        return picked, -jnp.sum(jnp.exp(logp) * logp, axis=-1)

    def unchunk(x):  # [t // chunk, r, chunk] -> [r, t]
        return x.transpose(1, 0, 2).reshape(r, t)

    hs = hidden.reshape(r, t // chunk, chunk, d).transpose(1, 0, 2, 3)
    ys = targets.reshape(r, t // chunk, chunk).transpose(1, 0, 2)
    picked = jax.lax.map(one, (hs, ys))
    if not with_entropy:
        return unchunk(picked), None, out.aux_loss
    return unchunk(picked[0]), unchunk(picked[1]), out.aux_loss
