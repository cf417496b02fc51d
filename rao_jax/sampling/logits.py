"""Choosing the next token from logits, and stop checks, on the device, per batch row.

Every row has its own temperature (0 = greedy), top-k (0 = off) and top-p (1 = off). The returned
log-probability is the chosen token's under the distribution it was actually drawn from (after
temperature, top-k and the nucleus, renormalised; 0 for a greedy row): the behaviour policy of the
RL importance ratio (``choose_tokens``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

NO_TOKEN = -1      # padding in stop tables: matches anything (stop sequences are right-aligned)
NOT_YET = -2       # history slots not yet generated: match nothing


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one request samples.

    Args:
        max_new_tokens: tokens to generate at most (0: only fill the cache with the prompt).
        temperature: 0 for greedy decoding; otherwise logits are divided by it.
        top_k: keep only the k most likely tokens (0: no limit).
        top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1: off).
        stop: token sequences that end generation when generated (included in the output); a
            single-token sequence is an end-of-sequence id.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple[tuple[int, ...], ...] = ()

    def validate(self, *, vocab_size: int, max_top_k: int, max_stops: int, max_stop_len: int) -> None:
        """Raises ValueError naming the first bad field."""
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {self.max_new_tokens!r}")
        if not self.temperature >= 0.0 or self.temperature == float("inf"):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or not 0 <= self.top_k <= max_top_k:
            raise ValueError(f"top_k must be an int in [0, {max_top_k}], got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if len(self.stop) > max_stops:
            raise ValueError(f"at most {max_stops} stop sequences per request, got {len(self.stop)}")
        for seq in self.stop:
            if not 1 <= len(seq) <= max_stop_len:
                raise ValueError(f"stop sequences must have 1..{max_stop_len} tokens, got {seq!r}")
            if any(not isinstance(t, int) or not 0 <= t < vocab_size for t in seq):
                raise ValueError(f"stop sequence {seq!r} holds ids outside the vocabulary [0, {vocab_size})")

    @property
    def filtered(self) -> bool:
        return self.temperature > 0 and (self.top_k > 0 or self.top_p < 1.0)


def choose_tokens(logits: Float[Array, "b v"], rng: Array, temperature: Float[Array, " b"],
                  top_k: Int[Array, " b"], top_p: Float[Array, " b"], *, candidates: int
                  ) -> tuple[Int[Array, " b"], Float[Array, " b"]]:
    """Samples one token per row; returns the tokens and their behaviour log-probabilities.

    A row with temperature ``T > 0`` samples from ``softmax(logits / T)`` restricted to its top-k
    tokens (``top_k > 0``) and then to its nucleus (``top_p < 1``: the most likely tokens whose
    probabilities reach ``top_p``, found over the whole vocabulary by a threshold search), renormalised;
    the log-probability returned is the token's under exactly that distribution, which is the
    behaviour policy an importance ratio needs. A greedy row (``T = 0``) takes the argmax, whose
    probability under its (deterministic) policy is 1: log-probability 0.

    Args:
        candidates: 0 when no row filters (top-k 0, top-p 1: one categorical draw), else a static
            bound on top-k (``lax.top_k`` finds each row's k-th largest logit among this many).
    """
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
    if candidates:
        scaled = jnp.where(_top_k_mask(scaled, top_k, candidates) & _nucleus_mask(scaled, top_p, top_k, candidates),
                           scaled, -jnp.inf)

    def sample() -> Int[Array, " b"]:
        return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)

    # A batch of greedy rows draws no random numbers (the noise costs as much as the argmax).
    sampled = jax.lax.cond(jnp.any(temperature > 0), sample, lambda: greedy)
    tokens = jnp.where(temperature > 0, sampled, greedy)
    behaviour = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), tokens[:, None], axis=-1)[:, 0]
    return tokens, jnp.where(temperature > 0, behaviour, 0.0)


def _top_k_mask(scaled: Float[Array, "b v"], top_k: Int[Array, " b"], candidates: int) -> Bool[Array, "b v"]:
    """Each row's top ``top_k`` logits (all of them where ``top_k`` is 0); tokens tied with the k-th stay."""
    values, _ = jax.lax.top_k(scaled, candidates)   # sorted, largest first
    kth = jnp.take_along_axis(values, jnp.clip(top_k - 1, 0, candidates - 1)[:, None], axis=-1)
    return (top_k[:, None] == 0) | (scaled >= kth)


def _nucleus_mask(scaled: Float[Array, "b v"], top_p: Float[Array, " b"], top_k: Int[Array, " b"],
                  candidates: int, iterations: int = 40) -> Bool[Array, "b v"]:
    """Each row's nucleus over the whole vocabulary: the tokens whose probability (after top-k) is at
    least the largest threshold ``t`` with ``P(p >= t) >= top_p``, found by bisection on ``t`` (40
    halvings resolve probabilities 1e-12 apart); ``top_p`` 1 keeps every token."""
    probs = jax.nn.softmax(jnp.where(_top_k_mask(scaled, top_k, candidates), scaled, -jnp.inf), axis=-1)
    lo = jnp.zeros(probs.shape[0], jnp.float32)
    hi = probs.max(axis=-1)

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        enough = jnp.sum(jnp.where(probs >= mid[:, None], probs, 0.0), axis=-1) >= top_p
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, iterations, halve, (lo, hi))
    return (top_p[:, None] >= 1.0) | (probs >= lo[:, None])


def push_history(history: Int[Array, "b m"], tokens: Int[Array, " b"]) -> Int[Array, "b m"]:
    """Appends each row's new token to its window of the last ``m`` generated tokens."""
    return jnp.concatenate([history[:, 1:], tokens[:, None]], axis=1)


def hits_stop(history: Int[Array, "b m"], stops: Int[Array, "b n m"]) -> Bool[Array, " b"]:
    """Whether the last generated tokens of each row end with one of its stop sequences.

    ``stops`` rows are right-aligned and left-padded with NO_TOKEN; an all-padding row is unused.
    """
    match = (stops == history[:, None, :]) | (stops == NO_TOKEN)
    used = jnp.any(stops != NO_TOKEN, axis=-1)
    return jnp.any(jnp.all(match, axis=-1) & used, axis=-1)
