"""The engine's static sizes (``EngineConfig``) and the bucket arithmetic that maps the sizes of a
moment (flat prefill tokens, the longest decode row) onto the few shapes that compile."""

from __future__ import annotations

import dataclasses

from rao_jax.sampling.paged_attention import IMPLS


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Static sizes of the engine (each distinct shape is one compilation).

    Args:
        max_rows: sequences decoded together in one batch.
        page_size: tokens per KV page.
        num_pages: pages in the pool, including the reserved null page.
        max_seq_len: the longest sequence (prompt + generated); a multiple of page_size.
        decode_steps: decode steps per device call between scheduling decisions.
        decode_groups: decode calls that may run at once, each over ``max_rows // decode_groups``
            rows of similar length, from one thread each (reference attention only), each
            attending only as wide as its own longest row. On a CPU, XLA runs one decode call's
            small operations on one core: 4 groups keep 2 cores busy and read fewer padded
            keys (``benchmarks/sampler_throughput.py``). Keep 1 on an accelerator.
        max_prefill_tokens: the most new tokens one prefill call admits.
        min_prefill_bucket: the smallest flat-token bucket of prefill calls (a power of two).
        prefill_buckets_per_octave: 1, 2 or 4 bucket sizes per power of two, which larger calls pad
            to: 2 gives 1x and 1.5x a power of two; 4 adds 1.25x and 1.75x (less padding, up to
            twice the prefill compilations).
        prefill_block: queries per block of the reference prefill attention (a power of two, at
            most half of ``min_prefill_bucket``): each admitted row's new tokens start a new block,
            and each block attends over its own row only, up to its last position.
        max_top_k: static bound on top-k (the nucleus of top-p is found over the whole vocabulary).
        max_stops / max_stop_len: stop sequences per request, and their longest length.
        attn_impl: "reference" (pure jnp, every backend) or "pallas" (TPU kernel).
        cache_dtype: dtype of the KV pages.
        seed: sampling seed.
    """

    max_rows: int = 64
    page_size: int = 16
    num_pages: int = 2048
    max_seq_len: int = 1024
    decode_steps: int = 16
    decode_groups: int = 1
    max_prefill_tokens: int = 4096
    min_prefill_bucket: int = 64
    prefill_buckets_per_octave: int = 2
    prefill_block: int = 16
    max_top_k: int = 64
    max_stops: int = 4
    max_stop_len: int = 8
    attn_impl: str = "reference"
    cache_dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"EngineConfig: {message}")

        need(self.attn_impl in IMPLS, f"attn_impl must be one of {IMPLS}, got {self.attn_impl!r}")
        need(self.max_rows >= 1 and self.decode_steps >= 1, "max_rows and decode_steps must be >= 1")
        need(self.decode_groups >= 1 and self.max_rows % self.decode_groups == 0,
             f"decode_groups ({self.decode_groups}) must be >= 1 and divide max_rows ({self.max_rows})")
        need(self.decode_groups == 1 or self.attn_impl == "reference",
             "decode_groups > 1 needs attn_impl='reference' (the Pallas path writes the pages while it decodes)")
        need(self.page_size >= 1 and self.max_seq_len % self.page_size == 0,
             f"max_seq_len ({self.max_seq_len}) must be a positive multiple of page_size ({self.page_size})")
        need(is_pow2(self.min_prefill_bucket), "min_prefill_bucket must be a power of two")
        need(self.prefill_buckets_per_octave in (1, 2, 4),
             f"prefill_buckets_per_octave must be 1, 2 or 4, got {self.prefill_buckets_per_octave}")
        need(is_pow2(self.prefill_block) and 2 * self.prefill_block <= self.min_prefill_bucket,
             f"prefill_block ({self.prefill_block}) must be a power of two and at most half of "
             f"min_prefill_bucket ({self.min_prefill_bucket})")
        need(self.max_prefill_tokens >= self.max_seq_len,
             f"max_prefill_tokens ({self.max_prefill_tokens}) must be >= max_seq_len ({self.max_seq_len})")
        need(self.num_pages - 1 >= self.pages_per_seq,
             f"num_pages ({self.num_pages}) leaves fewer than the {self.pages_per_seq} pages one "
             f"max_seq_len sequence needs (page 0 is reserved)")

    @property
    def pages_per_seq(self) -> int:
        return self.max_seq_len // self.page_size


def is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def bucket(n: int, per_octave: int = 2) -> int:
    """The smallest bucket >= n: a power of two p, or ``per_octave - 1`` evenly spaced sizes between
    p / 2 and p (2: 0.75 p; 4: 0.625 p, 0.75 p, 0.875 p) where they are whole numbers."""
    power = next_pow2(n)
    half = power // 2
    for k in range(1, per_octave):
        if half * k % per_octave == 0 and half + half * k // per_octave >= n:
            return half + half * k // per_octave
    return power
