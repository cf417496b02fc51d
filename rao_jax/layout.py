"""Where a run's long-lived arrays live, as the jitted constructors that allocate them.

A run allocates four kinds of array that stay for its whole length: the learner's parameters, its
optimizer moments, every sampler replica's weights and every replica's KV page pool. Each comes
from one function here that takes a mesh and returns a jitted constructor whose output shardings
are fixed by the rules tables (``rao_jax.parallel.sharding``). The Runtime calls those constructors
on real meshes; ``python -m rao_jax.plan`` evaluates the very same constructors with
``jax.eval_shape`` on abstract meshes of a slice's shape, so the plan's bytes per device are the
bytes the run allocates, not a second formula (``tests/test_plan.py`` checks the two against each
other on fake CPU devices).

``Layout`` pairs the learner mesh (``(data, fsdp, expert, tensor)``) with the sampler mesh
(``(replica, expert, tensor)``; every replica inside one host, see ``rao_jax.parallel.mesh``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from rao_jax.models.config import ModelConfig
from rao_jax.models.qwen3 import Qwen3
from rao_jax.parallel import mesh as meshes
from rao_jax.parallel.sharding import SAMPLE_RULES, TRAIN_RULES, state_shardings


@dataclasses.dataclass(frozen=True)
class Layout:
    """The learner mesh and the sampler mesh of a run (real, or abstract for planning)."""

    learner: Mesh | AbstractMesh
    sampler: Mesh | AbstractMesh

    @classmethod
    def create(cls, *, data: int = 1, fsdp: int = 1, expert: int = 1, tensor: int = 1, replica_expert: int = 1,
               replica_tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Layout:
        """Both meshes over ``devices`` (default: every device of every process).

        Raises:
            ValueError: sizes that do not fit the devices (the message names them).
        """
        return cls(meshes.make_mesh(data, fsdp, expert, tensor, devices=devices),
                   meshes.sampler_mesh(replica_expert, replica_tensor, devices=devices))

    @classmethod
    def abstract(cls, *, data: int = 1, fsdp: int = 1, expert: int = 1, tensor: int = 1, replica_expert: int = 1,
                 replica_tensor: int = 1) -> Layout:
        """The same layout without devices: ``data x fsdp x expert x tensor`` chips."""
        chips = data * fsdp * expert * tensor
        size = replica_expert * replica_tensor
        if chips % size:
            raise ValueError(f"a sampler replica of {size} devices does not divide the {chips} devices")
        return cls(meshes.abstract_mesh(data, fsdp, expert, tensor),
                   meshes.abstract_sampler_mesh(chips // size, replica_expert, replica_tensor))

    @property
    def replicas(self) -> int:
        return self.sampler.shape["replica"]

    def replica_mesh(self, replica: int) -> Mesh | AbstractMesh:
        if isinstance(self.sampler, AbstractMesh):
            return meshes.abstract_replica_mesh(self.sampler)
        return meshes.replica_mesh(self.sampler, replica)

    def local_replicas(self) -> list[int]:
        """Replicas this process drives (all of them for an abstract layout)."""
        if isinstance(self.sampler, AbstractMesh):
            return list(range(self.replicas))
        return meshes.local_replicas(self.sampler)

    @property
    def single_device(self) -> bool:
        """One device runs everything: the sampler may read the learner's own arrays."""
        return self.learner.size == 1 and self.sampler.size == 1


def build_model(model_cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, attn_impl: str = "xla",
                remat: bool = False, seed: int = 0) -> Qwen3:
    return Qwen3(model_cfg, dtype=dtype, param_dtype=param_dtype, attn_impl=attn_impl, remat=remat,
                 rngs=nnx.Rngs(seed))


@dataclasses.dataclass(frozen=True)
class LearnerInit:
    """The learner's state constructor: ``init()`` (random weights) or ``init(params)`` (given
    weights, e.g. a Hugging Face checkpoint already placed with ``param_shardings``) returns the
    state of ``(model, optimizers)``; ``merge`` turns it into the objects."""

    graphdef: Any
    shardings: Any                  # of the whole state (parameters and optimizer states)
    param_shardings: Any            # of the model's ``nnx.Param`` state
    init: Callable[..., nnx.State]

    def merge(self, state: nnx.State):
        return nnx.merge(self.graphdef, state)


def learner_init(model_cfg: ModelConfig, mesh: Mesh | AbstractMesh, *, make_optimizers: Callable[[Qwen3], tuple],
                 dtype=jnp.float32, param_dtype=jnp.float32, attn_impl: str = "xla", remat: bool = False,
                 seed: int = 0) -> LearnerInit:
    """The learner's parameters and optimizer states on ``mesh`` (TRAIN_RULES), made in one jitted
    call so that no device ever holds more than its shard.

    Args:
        make_optimizers: ``model -> tuple of nnx.Optimizer`` (their moments inherit the parameters'
            logical axes, so they are laid out like the parameters).
    """
    def build():
        model = build_model(model_cfg, dtype=dtype, param_dtype=param_dtype, attn_impl=attn_impl, remat=remat,
                            seed=seed)
        return model, tuple(make_optimizers(model))

    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    shardings = state_shardings(abstract, mesh, TRAIN_RULES)
    params_abstract = nnx.state(nnx.merge(graphdef, abstract)[0], nnx.Param)
    param_shardings = state_shardings(params_abstract, mesh, TRAIN_RULES)

    def init(params: nnx.State | None = None) -> nnx.State:
        model, optimizers = build()
        if params is not None:   # the random draws above are dead code then: XLA drops them
            nnx.update(model, params)
        return nnx.split((model, optimizers))[1]

    return LearnerInit(graphdef, shardings, param_shardings, jax.jit(init, out_shardings=shardings, donate_argnums=0))


@dataclasses.dataclass(frozen=True)
class SamplerInit:
    """The sampler replicas' weights: ``sync(learner params) -> sampler params`` casts the learner's
    ``nnx.Param`` state to the sampling dtype and reshards it into every replica at once (one jitted
    call; SAMPLE_RULES inside each replica, repeated over the ``replica`` axis), or is None when the
    replicas read the learner's own arrays (one device, one dtype). ``graphdef`` rebuilds a
    replica's model from its weights."""

    graphdef: Any
    shardings: nnx.State
    sync: Callable | None


def sampler_init(model_cfg: ModelConfig, layout: Layout, *, weights_dtype, compute_dtype,
                 learner_param_shardings: nnx.State, learner_dtype) -> SamplerInit:
    weights_dtype = jnp.dtype(weights_dtype)
    abstract = nnx.eval_shape(lambda: build_model(model_cfg, dtype=compute_dtype, param_dtype=weights_dtype))
    graphdef, params = nnx.split(abstract, nnx.Param)
    shardings = state_shardings(params, layout.sampler, SAMPLE_RULES)
    if layout.single_device and weights_dtype == jnp.dtype(learner_dtype):
        return SamplerInit(graphdef, shardings, None)

    def cast(learner_params):
        # Cast where the learner's shards lie, then reshard: the all-gathers move the narrow dtype.
        return jax.tree.map(lambda s, p: jax.lax.with_sharding_constraint(p[...].astype(weights_dtype), s),
                            learner_param_shardings, learner_params)

    return SamplerInit(graphdef, shardings,
                       jax.jit(cast, in_shardings=(learner_param_shardings,), out_shardings=shardings))


def replica_view(global_params: nnx.State, layout: Layout, replica: int) -> nnx.State:
    """Replica ``replica``'s weights as arrays on its own mesh: its devices' shards of the sampler
    arrays, rewrapped without a copy."""
    mesh = layout.replica_mesh(replica)
    devices = list(mesh.devices.flat)

    def view(x: jax.Array) -> jax.Array:
        spec = x.sharding.spec
        shards = {s.device: s.data for s in x.addressable_shards}
        return jax.make_array_from_single_device_arrays(
            x.shape, NamedSharding(mesh, PartitionSpec(*_drop_axis(spec, "replica"))), [shards[d] for d in devices])

    return jax.tree.map(view, global_params)


def _drop_axis(spec: PartitionSpec, axis: str) -> tuple:
    def keep(entry):
        if entry is None or entry == axis:
            return None
        if isinstance(entry, tuple):
            rest = tuple(a for a in entry if a != axis)
            return rest if len(rest) > 1 else (rest[0] if rest else None)
        return entry
    return tuple(keep(e) for e in spec)


def bytes_per_device(tree) -> int:
    """Bytes one device holds of a pytree of ``ShapeDtypeStruct`` / arrays with NamedShardings
    (every device of a NamedSharding holds the same shard shape)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shape)) * jnp.dtype(x.dtype).itemsize
    return total
