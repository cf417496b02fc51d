"""Expert-parallel settings of the MoE blocks (the computation itself is in ``rao_jax.models.moe``).

A model traced under ``jax.set_mesh(mesh)`` whose ``expert`` axis has size > 1 runs its experts
split over that axis, with an all-to-all dispatch (see ``rao_jax.models.moe``). This module changes
how: which mesh axis holds the experts and the dispatch capacity.
"""

from __future__ import annotations

from flax import nnx

from rao_jax.models.moe import MoEBlock


def configure_expert_parallel(model: nnx.Module, *, capacity_factor: float | None = None,
                              expert_axis: str = "expert", tensor_axis: str = "tensor") -> int:
    """Sets the expert-parallel options of every ``MoEBlock`` in ``model``; returns how many it set.

    Args:
        capacity_factor: None (default) for the exact dispatch that never drops a row; a float
            ``c > 0`` bounds each device-to-device buffer to ``ceil(c * rows / ep)`` rows, dropping
            (and counting in ``RouterStats.dropped``) what does not fit. ``c >= ep`` never drops.
        expert_axis: the mesh axis that splits the experts.
        tensor_axis: the mesh axis that splits each expert's intermediate dimension (if it divides).
    """
    if capacity_factor is not None and not capacity_factor > 0:
        raise ValueError(f"capacity_factor must be positive or None, got {capacity_factor}")
    blocks = [m for _, m in nnx.iter_graph(model) if isinstance(m, MoEBlock)]
    for block in blocks:
        block.capacity_factor = capacity_factor
        block.expert_axis = expert_axis
        block.tensor_axis = tensor_axis
    return len(blocks)
