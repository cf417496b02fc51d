"""Logical-axis sharding: one rules table each for training and for sampling.

Every parameter carries ``logical_axes`` metadata (``rao_jax.models``), and so does every optimizer
moment (nnx copies a parameter's metadata into its optimizer state). A rules table maps each
logical name to mesh axes (a name, a tuple of names, or None for replicated); ``partition_spec``
turns an array's logical axes into a ``PartitionSpec``, dropping any mesh axis that the mesh lacks
or that does not divide the dimension, so small test models shard as far as they can instead of
failing. Meshes come from ``rao_jax.parallel.mesh``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rao_jax.parallel.mesh import BATCH_AXES, MESH_AXES, make_mesh, process_batch_rows

__all__ = ["BATCH_AXES", "MESH_AXES", "SAMPLE_RULES", "TRAIN_RULES", "batch_sharding", "global_batch", "make_mesh",
           "param_shardings", "partition_spec", "shard_model", "state_shardings"]

Rule = str | tuple[str, ...] | None

TRAIN_RULES: Mapping[str, Rule] = {
    "vocab": "tensor",
    "embed": ("fsdp", "expert"),
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "exp": "expert",
    "embed_moe": "fsdp",
    "mlp_moe": "tensor",
    "norm": None,
}
# A sampler replica keeps every weight whole along the model dimension and the vocabulary (the
# embedding lookup, the logits and the token choice stay on each device) and splits heads, MLP
# hidden units and experts inside the replica: decoding needs no all-gather, only the all-reduces
# after the attention output and the MLP.
SAMPLE_RULES: Mapping[str, Rule] = dict(TRAIN_RULES, vocab=None, embed=None, embed_moe=None)


def partition_spec(logical_axes: tuple[str | None, ...], shape: tuple[int, ...], mesh,
                   rules: Mapping[str, Rule]) -> PartitionSpec:
    """The spec of one array: each logical axis through ``rules``, keeping only mesh axes that the
    mesh has (size > 1) and that divide the dimension."""
    spec, used = [], set()
    for name, dim in zip(logical_axes, shape, strict=True):
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule")
        rule = rules.get(name) if name is not None else None
        axes = (rule,) if isinstance(rule, str) else tuple(rule or ())
        kept, size = [], 1
        for axis in axes:
            n = mesh.shape.get(axis, 1)
            if axis not in used and n > 1 and dim % (size * n) == 0:
                kept.append(axis)
                size *= n
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*spec)


def state_shardings(state, mesh, rules: Mapping[str, Rule]):
    """A NamedSharding per variable of an nnx state: from its ``logical_axes`` when it has them
    (parameters, optimizer moments), replicated otherwise (step counters)."""
    def one(variable):
        axes = variable.get_metadata().get("logical_axes")
        spec = PartitionSpec() if axes is None else partition_spec(axes, variable.shape, mesh, rules)
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def param_shardings(model: nnx.Module, mesh, rules: Mapping[str, Rule] = TRAIN_RULES):
    """NamedShardings for ``nnx.state(model, nnx.Param)``, from each parameter's logical axes."""
    params = nnx.state(model, nnx.Param)
    for variable in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        if variable.get_metadata().get("logical_axes") is None:
            raise ValueError("a parameter has no logical_axes metadata; every parameter needs them")
    return state_shardings(params, mesh, rules)


def shard_model(model: nnx.Module, mesh: Mesh, rules: Mapping[str, Rule] = TRAIN_RULES) -> nnx.Module:
    """Places the model's parameters on ``mesh`` according to ``rules`` (in place; returns the model)."""
    state = nnx.state(model, nnx.Param)
    shardings = param_shardings(model, mesh, rules)
    nnx.update(model, jax.tree.map(lambda v, s: jax.device_put(v[...], s), state, shardings,
                                   is_leaf=lambda x: isinstance(x, nnx.Variable)))
    return model


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of a ``[rows, tokens]`` batch split over every non-model axis."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, rows: int) -> dict[str, jax.Array]:
    """A global ``[rows, ...]`` batch from the rows this process holds (``process_batch_rows``),
    without moving any row between processes; on one process, the whole batch placed on the mesh."""
    start, stop = process_batch_rows(mesh, rows)
    sharding = batch_sharding(mesh)
    out = {}
    for name, x in local.items():
        if len(x) != stop - start:
            raise ValueError(f"batch field {name!r} has {len(x)} local rows; this process holds rows "
                             f"[{start}, {stop}) of {rows}")
        out[name] = jax.make_array_from_process_local_data(sharding, np.asarray(x), (rows, *x.shape[1:]))
    return out
