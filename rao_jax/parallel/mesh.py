"""The device meshes of a run, on one host or many: the learner mesh and the sampler replicas.

A pod run is multi-controller JAX: one Python process per host, all running the same command,
each addressing its own host's devices. rao_jax lays the devices out in two ways.

Learner mesh: every device of every process, axes ``(data, fsdp, expert, tensor)``
(``MESH_AXES``); training batches are split over the batch axes ``(data, fsdp, expert)``. Devices
are ordered process by process, so each process owns whole, contiguous blocks of the batch axes
and feeds exactly those rows from its own rollouts (``process_batch_rows``); this needs ``tensor``
to divide each process's device count. On one process the mesh comes from ``jax.make_mesh``
(topology-aware on TPU); on several, each process's block is laid out by ``mesh_utils`` over its
own devices.

Sampler mesh: replicas of ``expert x tensor`` devices, axes ``(replica, expert, tensor)``
(``SAMPLER_AXES``). A replica's devices always belong to one process, so decoding never talks to
another host; a process with more devices than one replica needs holds several. The learner's
parameters are resharded into this mesh in one jitted call (``rao_jax.layout``); each replica then
sees its slice as arrays on its own mesh (``replica_meshes``, axes ``REPLICA_AXES``).

Every function here also has an abstract twin for planning (``AbstractMesh``: shapes and axis
names, no devices), so ``python -m rao_jax.plan`` lays a slice out exactly as a run would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh

MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")
SAMPLER_AXES = ("replica", "expert", "tensor")
REPLICA_AXES = ("expert", "tensor")


def _by_process(devices: Sequence[jax.Device]) -> list[list[jax.Device]]:
    """Devices grouped by process (processes in index order, devices in id order)."""
    groups: dict[int, list[jax.Device]] = {}
    for d in devices:
        groups.setdefault(d.process_index, []).append(d)
    return [sorted(groups[p], key=lambda d: d.id) for p in sorted(groups)]


def _host_block(devices: list[jax.Device], shape: tuple[int, ...]) -> np.ndarray:
    """One process's devices as an array of ``shape``, topology-aware where the backend allows."""
    from jax.experimental import mesh_utils

    try:
        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        return np.asarray(devices, dtype=object).reshape(shape)


def make_mesh(data: int = 1, fsdp: int = 1, expert: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """The learner mesh ``(data, fsdp, expert, tensor)`` over ``devices`` (default: every device of
    every process); the sizes must multiply to the device count.

    With explicit ``devices`` they are reshaped in the given order (tests pick sub-meshes so).

    Raises:
        ValueError: the sizes do not multiply to the device count, or (several processes) ``tensor``
            does not divide each process's devices, so a tensor group would span two hosts.
    """
    shape = (data, fsdp, expert, tensor)
    pool = list(jax.devices() if devices is None else devices)
    if math.prod(shape) != len(pool):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {math.prod(shape)} devices, "
                         f"{len(pool)} are available")
    auto = (AxisType.Auto,) * len(MESH_AXES)
    if devices is not None:
        return Mesh(np.asarray(pool, dtype=object).reshape(shape), MESH_AXES, axis_types=auto)
    hosts = _by_process(pool)
    if len(hosts) == 1:
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
    local = len(hosts[0])
    if any(len(h) != local for h in hosts) or local % tensor:
        raise ValueError(f"mesh.tensor ({tensor}) must divide the devices of each process "
                         f"({[len(h) for h in hosts]}): a tensor group cannot span two hosts")
    blocks = [_host_block(h, (local // tensor, tensor)) for h in hosts]
    return Mesh(np.concatenate(blocks).reshape(shape), MESH_AXES, axis_types=auto)


def abstract_mesh(data: int = 1, fsdp: int = 1, expert: int = 1, tensor: int = 1) -> AbstractMesh:
    """The learner mesh's shape without devices (for planning)."""
    return AbstractMesh((data, fsdp, expert, tensor), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def sampler_mesh(expert: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """Every device cut into replicas of ``expert x tensor`` devices of one process each, axes
    ``(replica, expert, tensor)``; replicas are numbered process by process.

    Raises:
        ValueError: a process's device count is not a multiple of the replica size.
    """
    size = expert * tensor
    hosts = _by_process(list(jax.devices() if devices is None else devices))
    bad = [len(h) for h in hosts if len(h) % size]
    if bad:
        raise ValueError(f"a sampler replica of expert {expert} x tensor {tensor} = {size} devices must fit "
                         f"whole into one process, but processes have {[len(h) for h in hosts]} devices")
    blocks = [_host_block(h, (len(h) // size, expert, tensor)) for h in hosts]
    return Mesh(np.concatenate(blocks), SAMPLER_AXES, axis_types=(AxisType.Auto,) * len(SAMPLER_AXES))


def abstract_sampler_mesh(replicas: int, expert: int = 1, tensor: int = 1) -> AbstractMesh:
    return AbstractMesh((replicas, expert, tensor), SAMPLER_AXES, axis_types=(AxisType.Auto,) * len(SAMPLER_AXES))


def replica_mesh(sampler: Mesh, replica: int) -> Mesh:
    """Replica ``replica`` of a sampler mesh as a mesh of its own, axes ``(expert, tensor)``."""
    return Mesh(sampler.devices[replica], REPLICA_AXES, axis_types=(AxisType.Auto,) * len(REPLICA_AXES))


def abstract_replica_mesh(sampler: AbstractMesh | Mesh) -> AbstractMesh:
    shape = tuple(sampler.shape[a] for a in REPLICA_AXES)
    return AbstractMesh(shape, REPLICA_AXES, axis_types=(AxisType.Auto,) * len(REPLICA_AXES))


def local_replicas(sampler: Mesh) -> list[int]:
    """The replicas whose devices belong to this process, in order."""
    me = jax.process_index()
    return [r for r in range(sampler.shape["replica"])
            if all(d.process_index == me for d in sampler.devices[r].flat)]


def batch_shards(mesh: Mesh | AbstractMesh) -> int:
    """How many ways a batch's rows are split: the product of the batch axes."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def process_batch_rows(mesh: Mesh, rows: int) -> tuple[int, int]:
    """``[start, stop)``: the rows of a ``[rows, ...]`` batch split over the batch axes that this
    process's devices hold (each process feeds those from its own data).

    Raises:
        ValueError: ``rows`` does not split over the batch axes, or this process's devices do not
            hold one contiguous block of rows that no other process holds.
    """
    shards = batch_shards(mesh)
    if rows % shards:
        raise ValueError(f"{rows} rows do not split over the {shards} batch shards of the mesh")
    per = rows // shards
    me = jax.process_index()
    coords = {d: idx for idx, d in np.ndenumerate(mesh.devices)}
    mine, others = set(), set()
    for d, (i, j, k, _) in coords.items():
        shard = (i * mesh.shape["fsdp"] + j) * mesh.shape["expert"] + k
        (mine if d.process_index == me else others).add(shard)
    if mine & others or max(mine) - min(mine) + 1 != len(mine):
        raise ValueError("this process's devices do not hold their own contiguous block of the batch axes; "
                         "build the learner mesh with rao_jax.parallel.mesh.make_mesh")
    return min(mine) * per, (max(mine) + 1) * per
