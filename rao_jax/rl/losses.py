"""Losses over response tokens (RAO_SPEC section 4): CISPO (default), PPO-clip, and SFT for warm-start.

Inputs are per-token arrays of any shape (``[rows, tokens]`` after packing): the learner's
log-probabilities of the sampled tokens, the sampler's recorded (behaviour) log-probabilities, each
token's advantage (its node's scalar, broadcast over the node's response tokens) and a loss mask
(1 on response tokens; 0 on prompts, observations, injected child results and padding). Every loss
and every optional term is a token mean over the masked tokens. Metrics are returned next to the loss.

``objective`` adds the optional terms (off by default, as in the paper, but always logged): an
entropy bonus and a k3 penalty towards a frozen reference policy, and returns one metric schema
(``METRIC_KEYS``) whatever the loss, with zeros where a metric means nothing for it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _token_mean(x: Array, mask: Array) -> Float[Array, ""]:
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cispo_loss(logp: Array, behaviour_logp: Array, advantage: Array, mask: Array, *,
               max_weight: float = 5.0) -> tuple[Float[Array, ""], dict[str, Array]]:
    """``-stopgrad(clip(rho, 0, max_weight)) * A * log pi(a)``, token mean; rho = pi / pi_behaviour.

    Unlike PPO's clip, every token keeps a gradient; only the size of its importance weight is capped.
    """
    mask = mask.astype(jnp.float32)
    log_ratio = _masked_log_ratio(logp, behaviour_logp, mask)
    ratio = jnp.exp(log_ratio)
    weight = jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight))
    loss = -_token_mean(weight * advantage * logp, mask)
    metrics = _ratio_metrics(ratio, log_ratio, mask)
    metrics["clip_fraction"] = _token_mean((ratio > max_weight).astype(jnp.float32), mask)
    return loss, metrics


def ppo_loss(logp: Array, behaviour_logp: Array, advantage: Array, mask: Array, *, eps_low: float = 0.2,
             eps_high: float = 0.28) -> tuple[Float[Array, ""], dict[str, Array]]:
    """PPO-clip with asymmetric bounds: ``-min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)``."""
    mask = mask.astype(jnp.float32)
    log_ratio = _masked_log_ratio(logp, behaviour_logp, mask)
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    surrogate = jnp.minimum(ratio * advantage, clipped * advantage)
    loss = -_token_mean(surrogate, mask)
    metrics = _ratio_metrics(ratio, log_ratio, mask)
    metrics["clip_fraction"] = _token_mean((ratio * advantage != surrogate).astype(jnp.float32), mask)
    return loss, metrics


def _masked_log_ratio(logp: Array, other_logp: Array, mask: Array) -> Array:
    # Off the loss tokens the difference is arbitrary (other_logp is 0 there); exp of it could overflow
    # to inf, and inf * 0 is NaN in a masked sum.
    return jnp.where(mask > 0, logp - other_logp, 0.0)


def _ratio_metrics(ratio: Array, log_ratio: Array, mask: Array) -> dict[str, Array]:
    big = jnp.where(mask > 0, ratio, -jnp.inf)
    return {
        "is_weight_mean": _token_mean(ratio, mask),
        "is_weight_max": jnp.max(big),
        # k3 estimator of KL(behaviour || current) on the behaviour's samples, with r = log current -
        # log behaviour: exp(r) - 1 - r (non-negative, unbiased).
        "approx_kl": _token_mean(jnp.exp(log_ratio) - 1.0 - log_ratio, mask),
        "tokens": jnp.sum(mask),
    }


def sft_loss(logp: Array, mask: Array) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Negative token-mean log-likelihood of the masked tokens (warm-start on oracle demonstrations)."""
    mask = mask.astype(jnp.float32)
    zero = jnp.zeros((), jnp.float32)
    metrics = {"is_weight_mean": zero, "is_weight_max": zero, "approx_kl": zero, "clip_fraction": zero,
               "tokens": jnp.sum(mask)}
    return -_token_mean(logp, mask), metrics


RL_LOSS_NAMES = ("cispo", "ppo")    # the policy-gradient losses (from sampled tokens and advantages)
LOSS_NAMES = (*RL_LOSS_NAMES, "sft")
# Token means over the loss tokens (combine across micro-batches weighted by their token counts).
MEAN_METRICS = ("policy_loss", "entropy", "kl_ref", "is_weight_mean", "approx_kl", "clip_fraction")
METRIC_KEYS = (*MEAN_METRICS, "is_weight_max", "tokens")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Which loss, its hyper-parameters, and the optional terms (hashable: a static jit argument).

    Attributes:
        loss: ``"cispo"`` (default), ``"ppo"`` or ``"sft"``.
        max_weight: CISPO's cap on the importance weight.
        eps_low: PPO's lower clip (ratio >= 1 - eps_low).
        eps_high: PPO's upper clip (ratio <= 1 + eps_high).
        kl_coef: weight of the k3 estimate of KL(pi || reference); needs the batch's ``ref_logp``.
        entropy_coef: weight of the entropy bonus (subtracted from the loss).
    """

    loss: str = "cispo"
    max_weight: float = 5.0
    eps_low: float = 0.2
    eps_high: float = 0.28
    kl_coef: float = 0.0
    entropy_coef: float = 0.0

    def __post_init__(self):
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {LOSS_NAMES}")
        if self.kl_coef < 0 or self.entropy_coef < 0 or self.max_weight <= 0:
            raise ValueError(f"kl_coef and entropy_coef must be >= 0 and max_weight > 0: {self}")
        if not 0 <= self.eps_low < 1 or self.eps_high < 0:
            raise ValueError(f"PPO clip needs 0 <= eps_low < 1 and eps_high >= 0: {self}")


def k3_kl(logp: Array, ref_logp: Array, mask: Array) -> Array:
    """Per-token k3 estimate of KL(pi || ref) from tokens sampled by pi: ``exp(d) - 1 - d``, d = ref - logp.

    Non-negative; its gradient wrt ``logp`` is ``1 - exp(d)``, pulling logp towards ref_logp. 0 off the mask.
    """
    d = -_masked_log_ratio(logp, ref_logp, mask)
    return jnp.exp(d) - 1.0 - d


def objective(cfg: LossConfig, logp: Array, entropy: Array, behaviour_logp: Array, advantage: Array, mask: Array,
              ref_logp: Array | None = None) -> tuple[Float[Array, ""], dict[str, Array]]:
    """The configured loss plus its optional terms, all token means over ``mask``.

    ``loss = policy_loss - entropy_coef * mean(entropy) + kl_coef * mean(k3(logp, ref_logp))``. A zero
    coefficient leaves its term out of the loss (so the defaults give exactly the policy loss) but the
    term is still logged: ``entropy`` always, ``kl_ref`` when ``ref_logp`` is given (0 otherwise).

    Returns:
        The loss and a dict with exactly ``METRIC_KEYS``.

    Raises:
        ValueError: ``kl_coef > 0`` without ``ref_logp``.
    """
    mask = mask.astype(jnp.float32)
    if cfg.loss == "cispo":
        value, metrics = cispo_loss(logp, behaviour_logp, advantage, mask, max_weight=cfg.max_weight)
    elif cfg.loss == "ppo":
        value, metrics = ppo_loss(logp, behaviour_logp, advantage, mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high)
    else:
        value, metrics = sft_loss(logp, mask)
    metrics["policy_loss"] = value
    mean_entropy = _token_mean(entropy, mask)
    metrics["entropy"] = jax.lax.stop_gradient(mean_entropy)
    if cfg.entropy_coef > 0:
        value = value - cfg.entropy_coef * mean_entropy
    if ref_logp is None:
        if cfg.kl_coef > 0:
            raise ValueError("kl_coef > 0 needs the reference log-probs (batch field 'ref_logp')")
        metrics["kl_ref"] = jnp.zeros((), jnp.float32)
    else:
        kl = _token_mean(k3_kl(logp, ref_logp, mask), mask)
        metrics["kl_ref"] = jax.lax.stop_gradient(kl)
        if cfg.kl_coef > 0:
            value = value + cfg.kl_coef * kl
    return value, metrics
