"""Logical-axis sharding: one rules table, for training and for sampling.

Every parameter carries ``logical_axes`` metadata (``rao_jax.models``). A rules table maps each
logical name to mesh axes (a name, a tuple of names, or None for replicated); ``partition_spec``
turns a parameter's logical axes into a ``PartitionSpec``, dropping any mesh axis that does not
divide the dimension so that small test models shard as far as they can instead of failing.
Meshes have the axes ``(data, fsdp, expert, tensor)``; unused axes have size 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")
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
# Sampling keeps weights whole along the model dimension (no all-gathers per decode step).
SAMPLE_RULES: Mapping[str, Rule] = dict(TRAIN_RULES, embed=None, embed_moe=None)
BATCH_AXES = ("data", "fsdp", "expert")


def make_mesh(data: int = 1, fsdp: int = 1, expert: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A ``(data, fsdp, expert, tensor)`` mesh over ``devices`` (default: all); sizes must multiply out."""
    devices = list(jax.devices() if devices is None else devices)
    shape = (data, fsdp, expert, tensor)
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {int(np.prod(shape))} devices, "
                         f"{len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def partition_spec(logical_axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh,
                   rules: Mapping[str, Rule]) -> PartitionSpec:
    """The spec of one array: each logical axis through ``rules``, keeping only mesh axes that divide it."""
    spec, used = [], set()
    for name, dim in zip(logical_axes, shape, strict=True):
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule")
        rule = rules.get(name) if name is not None else None
        axes = (rule,) if isinstance(rule, str) else tuple(rule or ())
        kept, size = [], 1
        for axis in axes:
            n = mesh.shape[axis]
            if axis not in used and n > 1 and dim % (size * n) == 0:
                kept.append(axis)
                size *= n
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*spec)


def param_shardings(model: nnx.Module, mesh: Mesh, rules: Mapping[str, Rule] = TRAIN_RULES):
    """NamedShardings for ``nnx.state(model, nnx.Param)``, from each parameter's logical axes."""
    def one(variable):
        axes = variable.get_metadata().get("logical_axes")
        if axes is None:
            raise ValueError("a parameter has no logical_axes metadata; every parameter needs them")
        return NamedSharding(mesh, partition_spec(axes, variable.shape, mesh, rules))

    return jax.tree.map(one, nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))


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
