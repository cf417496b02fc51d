"""Qwen3 dense and MoE decoders in flax.nnx."""

from rao_jax.models.config import ConfigError, ModelConfig, tiny_config
from rao_jax.models.qwen3 import ForwardOutput, Qwen3, positions_from_segments

__all__ = ["ConfigError", "ForwardOutput", "ModelConfig", "Qwen3", "positions_from_segments",
           "tiny_config"]
