"""One RAO policy update: packed rows -> token log-probs -> CISPO / PPO loss -> optax step.

Gradients may be accumulated over micro-batches of rows. The loss stays the global token mean over
every response token of the step: each micro-batch's token-mean loss is weighted by its share of the
step's loss tokens, so splitting a batch changes memory use, not the update.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rao_jax.models.qwen3 import Qwen3
from rao_jax.rl.losses import cispo_loss, ppo_loss
from rao_jax.rl.packing import PackedBatch, token_logprobs

LOSSES = {"cispo": cispo_loss, "ppo": ppo_loss}
BATCH_FIELDS = ("tokens", "positions", "segment_ids", "targets", "behaviour_logp", "advantage", "loss_mask")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The paper's full fine-tune settings by default (RAO_SPEC section 4)."""

    learning_rate: float = 3e-6
    b1: float = 0.9
    b2: float = 0.95
    weight_decay: float = 0.017
    grad_clip: float = 1.0


def make_optimizer(model: Qwen3, cfg: OptimConfig = OptimConfig()) -> nnx.Optimizer:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def batch_arrays(batch: PackedBatch) -> dict[str, jax.Array]:
    return {name: jnp.asarray(getattr(batch, name)) for name in BATCH_FIELDS}


def _micro_loss(model: Qwen3, micro: dict, total_tokens, *, loss: str, chunk: int):
    logp = token_logprobs(model, micro["tokens"], micro["positions"], micro["segment_ids"], micro["targets"],
                          chunk=chunk)
    value, metrics = LOSSES[loss](logp, micro["behaviour_logp"], micro["advantage"], micro["loss_mask"])
    share = jnp.sum(micro["loss_mask"]) / jnp.maximum(total_tokens, 1.0)
    return value * share, metrics


@nnx.jit(static_argnames=("loss", "micro_batches", "chunk"))
def train_step(model: Qwen3, optimizer: nnx.Optimizer, batch: dict, *, loss: str = "cispo",
               micro_batches: int = 1, chunk: int = 256) -> dict[str, jax.Array]:
    """Updates ``model`` in place from one packed batch; returns the loss and metrics.

    Args:
        batch: ``batch_arrays(pack_sequences(...))``; rows must split evenly into ``micro_batches``.
        loss: ``"cispo"`` (default) or ``"ppo"``.
        micro_batches: gradient accumulation steps over row groups.
        chunk: positions per log-prob chunk (the ``[tokens, vocab]`` logits are never whole).
    """
    rows = batch["tokens"].shape[0]
    if rows % micro_batches:
        raise ValueError(f"{rows} rows do not split into {micro_batches} micro-batches")
    total_tokens = jnp.sum(batch["loss_mask"])
    grad_fn = nnx.value_and_grad(lambda m, micro, n: _micro_loss(m, micro, n, loss=loss, chunk=chunk), has_aux=True)
    grads, value, metrics = None, 0.0, []
    size = rows // micro_batches
    for k in range(micro_batches):  # static: one traced copy per micro-batch
        micro = {name: x[k * size:(k + 1) * size] for name, x in batch.items()}
        (v, m), g = grad_fn(model, micro, total_tokens)
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        value = value + v
        metrics.append(m)
    grad_norm = optax.tree.norm(grads)
    optimizer.update(model, grads)
    weights = jnp.stack([m["tokens"] for m in metrics]) / jnp.maximum(total_tokens, 1.0)
    out = {name: jnp.sum(jnp.stack([m[name] for m in metrics]) * weights)
           for name in ("is_weight_mean", "approx_kl", "clip_fraction")}
    out.update(loss=value, grad_norm=grad_norm, tokens=total_tokens,
               is_weight_max=jnp.max(jnp.stack([m["is_weight_max"] for m in metrics])))
    return out
