"""The device-side paged KV cache: one ``[pages, page_size, 2 * kv_heads, head_dim]`` array per layer.

Keys and values are interleaved along the head axis (key head h at ``2h``, value head h at
``2h + 1``), the layout of JAX's TPU ragged paged attention kernel, so one array serves prefill,
extension and decode on every backend. The cache is written with plain XLA scatters (no custom
kernel) and is donated to every jitted call that updates it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Bool, Float, Int

from rao_jax.models.config import ModelConfig
from rao_jax.sampling.page_allocator import NULL_PAGE

KVCache = tuple[Array, ...]  # one [P, S, 2K, D] array per decoder layer


def kv_pool_spec(cfg: ModelConfig, mesh) -> PartitionSpec:
    """The pool's layout on a sampler replica's mesh: K/V heads over ``tensor`` when it divides the
    key/value heads (so a key head and its value head stay on one device), otherwise whole."""
    t = mesh.shape.get("tensor", 1)
    split = t > 1 and cfg.num_key_value_heads % t == 0
    return PartitionSpec(None, None, "tensor" if split else None, None)


def pool_init(cfg: ModelConfig, num_pages: int, page_size: int, dtype=jnp.float32,
              mesh: Mesh | AbstractMesh | None = None) -> Callable[[], KVCache]:
    """The jitted constructor of a page pool of ``num_pages`` pages, laid out by ``kv_pool_spec`` on
    ``mesh`` (a sampler replica) or on the default device. ``python -m rao_jax.plan`` evaluates the
    same constructor abstractly."""
    shape = (num_pages, page_size, 2 * cfg.num_key_value_heads, cfg.head_dim)

    def zeros() -> KVCache:
        return tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers))

    if mesh is None:
        return jax.jit(zeros)
    sharding = NamedSharding(mesh, kv_pool_spec(cfg, mesh))
    return jax.jit(zeros, out_shardings=(sharding,) * cfg.num_hidden_layers)


def interleave(k: Float[Array, "t k d"], v: Float[Array, "t k d"]) -> Float[Array, "t kk d"]:
    """Keys and values in the cache's head layout: key head h at 2h, value head h at 2h + 1."""
    t, kv_heads, d = k.shape
    return jnp.stack([k, v], axis=2).reshape(t, 2 * kv_heads, d)


def write_interleaved(pages: Float[Array, "p s kk d"], kv: Float[Array, "t kk d"], page_table: Int[Array, "b w"],
                      row_of_token: Int[Array, " t"], pos_of_token: Int[Array, " t"],
                      valid: Bool[Array, " t"]) -> Float[Array, "p s kk d"]:
    """Scatters each valid token's interleaved K/V to (its row's page for its position, offset).

    Invalid tokens (padding, steps a row did not take) go to the null page 0.
    """
    page_size = pages.shape[1]
    column = jnp.minimum(pos_of_token // page_size, page_table.shape[1] - 1)
    page = jnp.where(valid, page_table[row_of_token, column], NULL_PAGE)
    return pages.at[page, pos_of_token % page_size].set(kv.astype(pages.dtype), mode="drop")


def write_kv(pages: Float[Array, "p s kk d"], k: Float[Array, "t k d"], v: Float[Array, "t k d"],
             page_table: Int[Array, "b w"], row_of_token: Int[Array, " t"], pos_of_token: Int[Array, " t"],
             valid: Bool[Array, " t"]) -> Float[Array, "p s kk d"]:
    """``write_interleaved`` for separate keys and values."""
    return write_interleaved(pages, interleave(k, v), page_table, row_of_token, pos_of_token, valid)


def _copy_pages(cache: KVCache, src: Int[Array, " n"], dst: Int[Array, " n"]) -> KVCache:
    return tuple(layer.at[dst].set(layer[src]) for layer in cache)


# Copies whole pages src[i] -> dst[i] in every layer (forks, copy-on-write); donates the cache.
copy_pages = jax.jit(_copy_pages, donate_argnums=0)
