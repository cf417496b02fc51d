"""Batched paged-KV sampling: page allocator, paged attention, jitted prefill / decode, the engine."""

from rao_jax.sampling.engine import Completion, EngineConfig, SamplingEngine
from rao_jax.sampling.logits import SamplingParams

__all__ = ["Completion", "EngineConfig", "SamplingEngine", "SamplingParams"]
