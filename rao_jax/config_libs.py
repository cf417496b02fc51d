"""The library configs a trainer config's sections stand for, built by field name: each section carries
the fields of ``EngineConfig`` / ``AdvantageConfig`` + ``LossConfig`` / ``OptimConfig`` with their defaults
(tests/test_config.py), so a field added to the library is one line in its section."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from rao_jax.errors import ConfigError

if TYPE_CHECKING:
    from rao_jax.config import EngineSection, OptimSection, RLSection, TrainConfig


def engine_config(engine: EngineSection, seed: int = 0):
    """The ``rao_jax.sampling.EngineConfig`` of one sampler replica, from the section's fields of that name."""
    from rao_jax.sampling.engine import EngineConfig

    try:
        return EngineConfig(**_same_fields(engine, EngineConfig), seed=seed)
    except ValueError as err:
        raise ConfigError(f"engine: {err}".replace("EngineConfig: ", "")) from None


def _same_fields(section, library_class) -> dict[str, Any]:
    """The section's values of every field ``library_class`` has too."""
    names = {f.name for f in dataclasses.fields(library_class)}
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.name in names}


def advantage_config(rl: RLSection):
    """``rao_jax.rl.batch.AdvantageConfig`` from the section's fields of that name."""
    from rao_jax.rl.batch import AdvantageConfig

    try:
        return AdvantageConfig(**_same_fields(rl, AdvantageConfig))
    except ValueError as err:
        raise ConfigError(f"rl: {err}") from None


def loss_config(rl: RLSection):
    """``rao_jax.rl.losses.LossConfig`` of the RL update, from the section's fields of that name."""
    from rao_jax.rl.losses import RL_LOSS_NAMES, LossConfig

    if rl.loss not in RL_LOSS_NAMES:
        raise ConfigError(f"rl.loss must be one of {RL_LOSS_NAMES}, got {rl.loss!r}")
    try:
        return LossConfig(**_same_fields(rl, LossConfig))
    except ValueError as err:
        raise ConfigError(f"rl: {err}") from None


def optim_config(optim: OptimSection, **changes: Any):
    """``rao_jax.rl.learner.OptimConfig`` from the section's fields of that name, with ``changes``."""
    from rao_jax.rl.learner import OptimConfig

    try:
        return OptimConfig(**{**_same_fields(optim, OptimConfig), **changes})
    except ValueError as err:
        raise ConfigError(f"optim: {err}") from None


def rl_optim_config(config: TrainConfig):
    """The RL update's ``OptimConfig`` (``optim``)."""
    return optim_config(config.optim)


def sft_optim_config(config: TrainConfig):
    """The warm start's optimizer: the RL optimizer's AdamW betas and clipping, no weight decay, and
    ``sft.learning_rate`` on ``sft.schedule`` over ``sft.steps``."""
    sft = config.sft
    return optim_config(config.optim, learning_rate=sft.learning_rate, weight_decay=0.0, schedule=sft.schedule,
                        total_steps=sft.steps if sft.schedule == "cosine" else None)
