"""One RAO policy update: packed rows -> token log-probs and entropies -> loss -> optax step.

The loss is CISPO (default), PPO-clip or SFT, plus the optional entropy bonus and KL-to-reference
penalty (``LossConfig``). Gradients may be accumulated over micro-batches of rows: a Python loop over
one compiled micro-batch step, so a step's row count does not change what is compiled. Every term
stays the global token mean over every loss token of the step: each micro-batch's token-mean loss
is weighted by its share of the step's loss tokens, so splitting a batch changes memory use, not
the update.

Batch fields (``[rows, t]``, targets shifted as in ``packing``): ``BATCH_FIELDS`` always, and
``ref_logp`` (f32, a frozen reference model's log-prob of each target, 0 off the loss tokens) when
the KL term is on; ``reference_logprobs`` computes it. ``train_step`` returns ``STEP_METRIC_KEYS``
for every loss, with zeros where a metric means nothing (see ``losses.objective``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rao_jax.models.qwen3 import Qwen3
from rao_jax.rl.losses import MEAN_METRICS, METRIC_KEYS, LossConfig, objective
from rao_jax.rl.packing import PackedBatch, token_logprobs, token_logprobs_entropy_aux

BATCH_FIELDS = ("tokens", "positions", "segment_ids", "targets", "behaviour_logp", "advantage", "loss_mask")
OPTIONAL_BATCH_FIELDS = ("ref_logp",)
STEP_METRIC_KEYS = ("loss", "grad_norm", "router_aux", *METRIC_KEYS)
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The paper's full fine-tune settings by default (RAO_SPEC section 4): AdamW at a constant lr.

    Attributes:
        warmup_steps: linear warmup from 0 to ``learning_rate`` over this many steps (0: none).
        schedule: ``"constant"`` (the paper's) or ``"cosine"`` (decay to ``final_lr_ratio * learning_rate``
            at ``total_steps``, warmup included).
        total_steps: length of the cosine schedule; required for ``"cosine"``.
        final_lr_ratio: the cosine schedule's floor, as a fraction of ``learning_rate``.
    """

    learning_rate: float = 3e-6
    b1: float = 0.9
    b2: float = 0.95
    weight_decay: float = 0.017
    grad_clip: float = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"
    total_steps: int | None = None
    final_lr_ratio: float = 0.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule == "cosine" and (self.total_steps is None or self.total_steps <= self.warmup_steps):
            raise ValueError(f"the cosine schedule needs total_steps > warmup_steps ({self.warmup_steps}), "
                             f"got {self.total_steps}")


def learning_rate_schedule(cfg: OptimConfig) -> float | optax.Schedule:
    """The lr as optax takes it: a plain float for the constant, warmup-free default."""
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps, cfg.total_steps,
                                                  end_value=cfg.final_lr_ratio * cfg.learning_rate)
    if cfg.warmup_steps == 0:
        return cfg.learning_rate
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
                                 optax.constant_schedule(cfg.learning_rate)], [cfg.warmup_steps])


def make_optimizer(model: Qwen3, cfg: OptimConfig = OptimConfig()) -> nnx.Optimizer:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def batch_arrays(batch: PackedBatch) -> dict[str, jax.Array]:
    return {name: jnp.asarray(getattr(batch, name)) for name in BATCH_FIELDS}


def _split_rows(batch: dict, micro_batches: int) -> dict:
    """``[rows, ...] -> [micro_batches, rows // micro_batches, ...]``, micro-batch k taking rows k, k + n, ...

    Strided rather than contiguous so that rows sharded over devices stay spread over all of them.
    """
    rows = next(iter(batch.values())).shape[0]
    return {name: x.reshape(rows // micro_batches, micro_batches, *x.shape[1:]).swapaxes(0, 1)
            for name, x in batch.items()}


def _micro_batches(batch: dict, micro_batches: int):
    """Yields the ``micro_batches`` row groups of ``batch`` (see ``_split_rows``), all of one shape."""
    if micro_batches == 1:
        yield batch
        return
    split = _split_rows(batch, micro_batches)
    for k in range(micro_batches):
        yield {name: x[k] for name, x in split.items()}


def _micro_loss(model: Qwen3, micro: dict, total_tokens, aux_weight, *, cfg: LossConfig, chunk: int):
    logp, entropy, router_aux = token_logprobs_entropy_aux(model, micro["tokens"], micro["positions"],
                                                           micro["segment_ids"], micro["targets"], chunk=chunk)
    if cfg.entropy_coef == 0:
        entropy = jax.lax.stop_gradient(entropy)  # logged only: no backward pass through it
    value, metrics = objective(cfg, logp, entropy, micro["behaviour_logp"], micro["advantage"], micro["loss_mask"],
                               micro.get("ref_logp"))
    share = jnp.sum(micro["loss_mask"]) / jnp.maximum(total_tokens, 1.0)
    # MoE models also minimise their router's load-balancing loss (as Hugging Face training does),
    # averaged over micro-batches (``aux_weight`` = 1 / micro-batches); it is 0 for dense models.
    metrics["router_aux"] = router_aux
    return value * share + model.cfg.router_aux_loss_coef * router_aux * aux_weight, metrics


def train_step(model: Qwen3, optimizer: nnx.Optimizer, batch: dict, *, loss: str | LossConfig = "cispo",
               max_weight: float | None = None, eps_low: float | None = None, eps_high: float | None = None,
               kl_coef: float | None = None, entropy_coef: float | None = None, micro_batches: int = 1,
               chunk: int = 256) -> dict[str, jax.Array]:
    """Updates ``model`` in place from one packed batch; returns the loss and metrics.

    The step is two compiled programs: the gradient of one micro-batch, added into an accumulator
    (run ``micro_batches`` times from Python), and the optimizer update. Both depend only on the
    micro-batch shape, so steps with different row counts (and so different ``micro_batches``)
    compile once, as long as ``rows // micro_batches`` stays the same.

    Args:
        batch: ``batch_arrays(pack_sequences(...))``, plus ``ref_logp`` when ``kl_coef > 0`` (and then
            ``kl_ref`` is logged whatever ``kl_coef``); rows must split evenly into ``micro_batches``.
        loss: ``"cispo"`` (default), ``"ppo"``, ``"sft"``, or a whole ``LossConfig``.
        max_weight, eps_low, eps_high, kl_coef, entropy_coef: override the matching ``LossConfig``
            field (None keeps the config's, by default the paper's). Static: a new value recompiles.
        micro_batches: gradient accumulation steps over row groups.
        chunk: positions per log-prob chunk (the ``[tokens, vocab]`` logits are never whole).

    Returns:
        ``STEP_METRIC_KEYS``: ``loss`` (the optimised value, all terms, including
        ``router_aux_loss_coef * router_aux`` for MoE models), ``router_aux`` (the MoE load-balancing
        loss, mean over micro-batches; 0 for dense models), ``policy_loss`` (CISPO / PPO /
        SFT term alone), ``entropy`` and ``kl_ref`` (token means; ``kl_ref`` is 0 without ``ref_logp``),
        ``is_weight_mean``, ``is_weight_max``, ``approx_kl`` (KL(behaviour || current)), ``clip_fraction``
        (these four are 0 for SFT), ``tokens`` (loss tokens of the step) and ``grad_norm`` (before clipping).

    Raises:
        ValueError: rows that do not split into ``micro_batches``, ``kl_coef > 0`` without ``ref_logp``,
            or an invalid loss configuration.
    """
    cfg = loss if isinstance(loss, LossConfig) else LossConfig(loss=loss)
    overrides = dict(max_weight=max_weight, eps_low=eps_low, eps_high=eps_high, kl_coef=kl_coef,
                     entropy_coef=entropy_coef)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    rows = batch["tokens"].shape[0]
    if rows % micro_batches:
        raise ValueError(f"{rows} rows do not split into {micro_batches} micro-batches")
    if cfg.kl_coef > 0 and "ref_logp" not in batch:
        raise ValueError("kl_coef > 0 needs the batch field 'ref_logp' (see reference_logprobs)")
    unknown = set(batch) - set(BATCH_FIELDS) - set(OPTIONAL_BATCH_FIELDS)
    if unknown:
        raise ValueError(f"unknown batch fields {sorted(unknown)}")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    total_tokens = jnp.sum(batch["loss_mask"])
    aux_weight = jnp.float32(1.0 / micro_batches)
    acc = _zero_accumulator(params)
    for micro in _micro_batches(batch, micro_batches):
        acc = _accumulate(graphdef, params, rest, acc, micro, total_tokens, aux_weight, cfg=cfg, chunk=chunk)
    return _apply(model, optimizer, acc, total_tokens)


@jax.jit
def _zero_accumulator(params) -> dict:
    """The accumulator of a step, zeros, in one device call (a host-side ``zeros_like`` per
    parameter costs a dispatch each: tens of milliseconds a step on a CPU)."""
    scalars = ("value", "router_aux", "is_weight_max", *MEAN_METRICS)   # distinct buffers: all are donated
    return {"grads": jax.tree.map(jnp.zeros_like, params), **{name: jnp.zeros((), jnp.float32) for name in scalars}}


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "chunk"), donate_argnames=("acc",))
def _accumulate(graphdef, params, rest, acc: dict, micro: dict, total_tokens, aux_weight, *, cfg: LossConfig,
                chunk: int) -> dict:
    """``acc`` plus one micro-batch: its gradient, loss, and token-weighted metric sums."""
    def loss_fn(p):
        return _micro_loss(nnx.merge(graphdef, p, rest), micro, total_tokens, aux_weight, cfg=cfg, chunk=chunk)

    (value, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    out = {"grads": jax.tree.map(jnp.add, acc["grads"], grads), "value": acc["value"] + value,
           "router_aux": acc["router_aux"] + metrics["router_aux"] * aux_weight,
           "is_weight_max": jnp.maximum(acc["is_weight_max"], metrics["is_weight_max"])}
    out.update({name: acc[name] + metrics[name] * metrics["tokens"] for name in MEAN_METRICS})
    return out


@nnx.jit(donate_argnames=("acc",))
def _apply(model: Qwen3, optimizer: nnx.Optimizer, acc: dict, total_tokens) -> dict[str, jax.Array]:
    grads = acc["grads"]
    grad_norm = optax.tree.norm(grads)
    optimizer.update(model, grads)
    out = {name: acc[name] / jnp.maximum(total_tokens, 1.0) for name in MEAN_METRICS}
    out.update(loss=acc["value"], grad_norm=grad_norm, tokens=total_tokens, is_weight_max=acc["is_weight_max"],
               router_aux=acc["router_aux"])
    return out


def reference_logprobs(ref_model: Qwen3, batch: dict, chunk: int = 256, micro_batches: int = 1) -> jax.Array:
    """The batch field ``ref_logp``: ``ref_model``'s log-prob of every target, 0 off the loss tokens.

    ``ref_model`` is a frozen copy (e.g. ``nnx.clone`` of the initial policy, never given to an
    optimizer). ``micro_batches`` row groups are run one after another to bound activation memory;
    as in ``train_step``, one compiled program per micro-batch shape.
    """
    fields = {name: batch[name] for name in ("tokens", "positions", "segment_ids", "targets", "loss_mask")}
    rows = fields["tokens"].shape[0]
    if rows % micro_batches:
        raise ValueError(f"{rows} rows do not split into {micro_batches} micro-batches")
    graphdef, state = nnx.split(ref_model)
    outs = [_reference_micro(graphdef, state, micro, chunk=chunk) for micro in _micro_batches(fields, micro_batches)]
    if micro_batches == 1:
        return outs[0]
    return _unsplit_rows(jnp.stack(outs))


@jax.jit
def _unsplit_rows(x: jax.Array) -> jax.Array:
    """The inverse of ``_split_rows`` for one array: ``[micro_batches, r, ...] -> [r * micro_batches, ...]``."""
    return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk"))
def _reference_micro(graphdef, state, micro: dict, *, chunk: int) -> jax.Array:
    logp = token_logprobs(nnx.merge(graphdef, state), micro["tokens"], micro["positions"], micro["segment_ids"],
                          micro["targets"], chunk=chunk)
    return jax.lax.stop_gradient(jnp.where(micro["loss_mask"] > 0, logp, 0.0))
