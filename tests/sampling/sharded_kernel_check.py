"""Run in a subprocess with 2 fake CPU devices: the Pallas attention call under a replica mesh.

``pallas_paged_attention`` runs its kernel per device under ``jax.shard_map`` when the replica's
``tensor`` axis splits the K/V heads. The TPU kernel cannot run here, so the kernel given is a
jittable stand-in of the same signature (ragged layout, built on the reference attention); what is
checked is the wrapper: each device's query heads meet their own key / value heads. Prints JSON.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rao_jax.parallel.mesh import replica_mesh, sampler_mesh
from rao_jax.sampling.paged_attention import pallas_paged_attention, reference_paged_attention
from tests.sampling.test_paged_attention import HQ, _setup


def ragged_reference(q, pages, kv_lens, page_table, cu_q_lens, num_rows, *, sm_scale):
    """The kernel's contract in plain jnp: token i of row r (cu_q_lens[r] <= i < cu_q_lens[r + 1]) is
    at position kv_lens[r] - (cu_q_lens[r + 1] - i)."""
    index = jnp.arange(q.shape[0])
    row = jnp.minimum(jnp.searchsorted(cu_q_lens[1:], index, side="right"), page_table.shape[0] - 1)
    pos = kv_lens[row] - (cu_q_lens[row + 1] - index)
    return reference_paged_attention(q, pages, page_table, row, pos, sm_scale=sm_scale)


def main() -> None:
    lengths, new = [6, 0, 13], [2, 7, 1]
    pages, table, q, _, _, total = _setup(lengths, new)
    flat_q = jnp.asarray(np.concatenate([q[r][lengths[r]:] for r in range(3)]))
    args = (jnp.asarray(table), jnp.asarray(total, jnp.int32),
            jnp.asarray(np.concatenate([[0], np.cumsum(new)]).astype(np.int32)), jnp.asarray([3], jnp.int32))
    whole = pallas_paged_attention(flat_q, pages, *args, sm_scale=0.3, kernel=ragged_reference)
    mesh = replica_mesh(sampler_mesh(expert=1, tensor=2), 0)
    placed_q = jax.device_put(flat_q, NamedSharding(mesh, P(None, "tensor", None)))
    placed_pages = jax.device_put(pages, NamedSharding(mesh, P(None, None, "tensor", None)))
    with jax.set_mesh(mesh):
        split = jax.jit(lambda q_, p_, *a: pallas_paged_attention(q_, p_, *a, sm_scale=0.3, kernel=ragged_reference))(
            placed_q, placed_pages, *args)
    # Swapping the two devices' pool halves pairs each query head with the wrong K/V heads.
    crossed = jnp.concatenate([pages[:, :, 2:], pages[:, :, :2]], axis=2)
    with jax.set_mesh(mesh):
        wrong = jax.jit(lambda q_, p_, *a: pallas_paged_attention(q_, p_, *a, sm_scale=0.3, kernel=ragged_reference))(
            placed_q, jax.device_put(crossed, NamedSharding(mesh, P(None, None, "tensor", None))), *args)
    print(json.dumps({"heads": HQ, "diff": float(jnp.max(jnp.abs(split - whole))),
                      "crossed_diff": float(jnp.max(jnp.abs(wrong - whole))),
                      "out_spec": str(split.sharding.spec), "devices": len(split.sharding.device_set)}))


if __name__ == "__main__":
    main()
