"""Training checkpoints: parameters, optimizer state, step and JSON metadata, through Orbax.

Each step is one Orbax checkpoint folder with three items: ``params`` (the model's ``nnx.Param``
state as a pure dict), ``opt_state`` (optional) and ``meta`` (JSON: the model's ``config.json``, the
data cursor, the rng, anything else the trainer needs to resume). Orbax writes each step into a
temporary folder and renames it when complete, so a killed run never leaves a half checkpoint that
a restore would pick up; ``max_to_keep`` prunes old steps.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from rao_jax.models.config import ModelConfig
from rao_jax.models.layers import DType
from rao_jax.models.qwen3 import Qwen3

MODEL_CONFIG_KEY = "model_config"


class CheckpointNotFoundError(FileNotFoundError):
    """No (such) checkpoint in a directory."""


@dataclasses.dataclass(frozen=True)
class Restored:
    step: int
    params: Any
    opt_state: Any | None
    metadata: dict[str, Any]


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of a pytree, as a restore target. Leaves without a sharding
    (``nnx.eval_shape`` skeletons) restore onto this process's first device, whatever layout the
    checkpoint was saved from (a pod's checkpoint reads back on a laptop)."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default)
    return jax.tree.map(leaf, tree)


class CheckpointStore:
    """A directory of step-numbered training checkpoints.

    Args:
        directory: where the steps live (created if absent, unless ``create=False``).
        max_to_keep: how many of the newest steps to keep; ``None`` keeps all.
        async_save: let ``save`` return before the bytes are on disk (``wait`` blocks until they
            are; ``close`` waits too).
        create: create ``directory`` when missing; with ``False`` a missing one is an error.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
                 async_save: bool = True, create: bool = True):
        self.directory = Path(directory).absolute()
        if not create and not self.directory.is_dir():
            raise CheckpointNotFoundError(f"checkpoint directory {self.directory} does not exist")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, params: Any, *, opt_state: Any = None,
             metadata: Mapping[str, Any] | None = None) -> None:
        """Saves one step; ``params`` and ``opt_state`` are pytrees of arrays (pure dicts for nnx)."""
        items: dict[str, Any] = {"params": ocp.args.StandardSave(params),
                                 "meta": ocp.args.JsonSave(dict(metadata or {}))}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int | None = None, *, params: Any = None, opt_state: Any = None
                ) -> Restored:
        """Restores ``step`` (default: the latest).

        Args:
            step: which step; ``None`` for the latest.
            params: restore target for the parameters: a pytree of arrays or ``ShapeDtypeStruct``
                (``abstract_like`` makes one); ``None`` skips them.
            opt_state: restore target for the optimizer state; ``None`` skips it.
        """
        step = self._resolve(step)
        items: dict[str, Any] = {"meta": ocp.args.JsonRestore()}
        if params is not None:
            items["params"] = ocp.args.StandardRestore(abstract_like(params))
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_like(opt_state))
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        return Restored(step=step, params=out.get("params") if params is not None else None,
                        opt_state=out.get("opt_state") if opt_state is not None else None,
                        metadata=dict(out["meta"] or {}))

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        return self.restore(step).metadata

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _resolve(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointNotFoundError(f"no checkpoint in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointNotFoundError(f"no step {step} in {self.directory} (steps: {steps})")
        return step


def restore_into(store: CheckpointStore, step: int | None, model: nnx.Module, optimizer: nnx.Module | None = None
                 ) -> Restored:
    """Restores ``step`` (default: the latest) of ``store`` into ``model``'s parameters (and
    ``optimizer``'s state) in place, keeping their shardings; returns what was restored.

    Raises:
      CheckpointNotFoundError: no such step. ValueError / KeyError: shapes or structure that do not
        match ``model`` / ``optimizer``.
    """
    params = nnx.state(model, nnx.Param)
    opt_state = nnx.state(optimizer) if optimizer is not None else None
    restored = store.restore(step, params=nnx.to_pure_dict(params),
                             opt_state=nnx.to_pure_dict(opt_state) if opt_state is not None else None)
    nnx.replace_by_pure_dict(params, restored.params)
    nnx.update(model, params)
    if optimizer is not None:
        nnx.replace_by_pure_dict(opt_state, restored.opt_state)
        nnx.update(optimizer, opt_state)
    return restored


def save_model_checkpoint(store: CheckpointStore, step: int, model: Qwen3, *, opt_state: Any = None,
                          metadata: Mapping[str, Any] | None = None) -> None:
    """Saves a model with its ``config.json`` in the metadata, so the step alone can rebuild it."""
    meta = dict(metadata or {})
    meta[MODEL_CONFIG_KEY] = model.cfg.to_hf_dict(torch_dtype="float32")
    store.save(step, nnx.to_pure_dict(nnx.state(model, nnx.Param)), opt_state=opt_state, metadata=meta)


def restore_model(directory: str | os.PathLike, step: int | None = None, *,
                  dtype: DType = jnp.float32, param_dtype: DType = jnp.float32
                  ) -> tuple[Qwen3, ModelConfig, Restored]:
    """Rebuilds the model saved by ``save_model_checkpoint`` (parameters only, no optimizer state)."""
    with CheckpointStore(directory, create=False) as store:
        meta = store.metadata(step)
        if MODEL_CONFIG_KEY not in meta:
            raise ValueError(f"checkpoint in {store.directory} has no {MODEL_CONFIG_KEY!r} in its "
                             "metadata; it was not written by save_model_checkpoint")
        cfg = ModelConfig.from_hf_dict(meta[MODEL_CONFIG_KEY])
        abstract = nnx.eval_shape(lambda: Qwen3(cfg, param_dtype=param_dtype, dtype=dtype,
                                                rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(abstract)
        restored = store.restore(step, params=nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, restored.params)
    return nnx.merge(graphdef, state), cfg, restored
