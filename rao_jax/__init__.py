"""rao_jax: Recursive Agent Optimization in JAX / Flax."""

from rao_jax import host_memory as _host_memory

__version__ = "0.1.0"

# Before JAX starts its CPU backend: XLA:CPU's per-call temporary buffers are then reused rather than
# faulted in again on every call (``rao_jax.host_memory``; ``RAO_HOST_MALLOC=default`` turns it off).
_host_memory.apply_default()
