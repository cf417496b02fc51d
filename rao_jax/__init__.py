"""rao_jax: Recursive Agent Optimization in JAX / Flax."""

__version__ = "0.1.0"
