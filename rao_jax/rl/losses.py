"""Policy-gradient losses over response tokens (RAO_SPEC section 4): CISPO (default) and PPO-clip.

Inputs are per-token arrays of any shape (``[rows, tokens]`` after packing): the learner's
log-probabilities of the sampled tokens, the sampler's recorded (behaviour) log-probabilities, each
token's advantage (its node's scalar, broadcast over the node's response tokens) and a loss mask
(1 on response tokens; 0 on prompts, observations, injected child results and padding). Both losses
are a global token mean over the masked tokens. Metrics are returned next to the loss.
"""

from __future__ import annotations

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
    log_ratio = logp - behaviour_logp
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
    log_ratio = logp - behaviour_logp
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    objective = jnp.minimum(ratio * advantage, clipped * advantage)
    loss = -_token_mean(objective, mask)
    metrics = _ratio_metrics(ratio, log_ratio, mask)
    metrics["clip_fraction"] = _token_mean((ratio * advantage != objective).astype(jnp.float32), mask)
    return loss, metrics


def _ratio_metrics(ratio: Array, log_ratio: Array, mask: Array) -> dict[str, Array]:
    big = jnp.where(mask > 0, ratio, -jnp.inf)
    return {
        "is_weight_mean": _token_mean(ratio, mask),
        "is_weight_max": jnp.max(big),
        # k3 estimator of KL(behaviour || current): non-negative, unbiased.
        "approx_kl": _token_mean(jnp.exp(-log_ratio) - 1.0 + log_ratio, mask),
        "tokens": jnp.sum(mask),
    }
