"""CISPO and PPO-clip against straightforward per-token loops (values and gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rao_jax.rl.losses import LOSS_NAMES, METRIC_KEYS, LossConfig, cispo_loss, objective, ppo_loss

RNG = np.random.default_rng(0)
LOGP = (-RNG.uniform(0.1, 3.0, (3, 7))).astype(np.float32)
OLD = (LOGP + RNG.normal(0, 0.8, (3, 7))).astype(np.float32)  # some ratios far outside the clip ranges
ADV = np.repeat(np.array([[1.5], [-0.7], [0.3]], np.float32), 7, axis=1)
MASK = (RNG.uniform(size=(3, 7)) > 0.3).astype(np.float32)
MASK[0, 1] = MASK[1, 4] = 1.0
OLD[0, 1], OLD[1, 4] = LOGP[0, 1] - 2.5, LOGP[1, 4] - 3.0  # ratios of about 12 and 20: beyond CISPO's cap


def _loop_cispo(logp, old, adv, mask, max_weight=5.0):
    """Value and gradient wrt logp, one token at a time."""
    total, grad, n = 0.0, np.zeros_like(logp), mask.sum()
    for i in np.ndindex(logp.shape):
        if mask[i]:
            w = min(max(np.exp(logp[i] - old[i]), 0.0), max_weight)
            total += -w * adv[i] * logp[i]
            grad[i] = -w * adv[i] / n
    return total / n, grad


def _loop_ppo(logp, old, adv, mask, lo=0.2, hi=0.28):
    total, grad, n = 0.0, np.zeros_like(logp), mask.sum()
    for i in np.ndindex(logp.shape):
        if mask[i]:
            r = np.exp(logp[i] - old[i])
            unclipped, clipped = r * adv[i], min(max(r, 1 - lo), 1 + hi) * adv[i]
            total += -min(unclipped, clipped)
            grad[i] = -r * adv[i] / n if unclipped <= clipped else 0.0
    return total / n, grad


@pytest.mark.parametrize("loss_fn, loop", [(cispo_loss, _loop_cispo), (ppo_loss, _loop_ppo)])
def test_value_and_gradient_match_the_per_token_loop(loss_fn, loop):
    value_and_grad = jax.jit(jax.value_and_grad(lambda lp: loss_fn(lp, OLD, ADV, MASK)[0]))
    value, grad = value_and_grad(jnp.asarray(LOGP))
    expected_value, expected_grad = loop(LOGP.astype(np.float64), OLD.astype(np.float64), ADV, MASK)
    assert float(value) == pytest.approx(expected_value, rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad), expected_grad, atol=1e-6)


def test_cispo_keeps_gradient_on_clipped_tokens_and_reports_metrics():
    _, grad = jax.value_and_grad(lambda lp: cispo_loss(lp, OLD, ADV, MASK)[0])(jnp.asarray(LOGP))
    ratio = np.exp(LOGP - OLD)
    over = (ratio > 5.0) & (MASK > 0)
    assert over.any() and (np.asarray(grad)[over] != 0).all()
    _, metrics = cispo_loss(jnp.asarray(LOGP), jnp.asarray(OLD), jnp.asarray(ADV), jnp.asarray(MASK))
    assert float(metrics["clip_fraction"]) == pytest.approx(over.sum() / MASK.sum())
    assert float(metrics["tokens"]) == MASK.sum()
    assert float(metrics["is_weight_max"]) == pytest.approx(ratio[MASK > 0].max(), rel=1e-5)
    # k3 of KL(behaviour || current) on behaviour samples: r = log current - log behaviour, exp(r) - 1 - r
    r = (LOGP - OLD)[MASK > 0].astype(np.float64)
    assert float(metrics["approx_kl"]) == pytest.approx(np.mean(np.exp(r) - 1 - r), rel=1e-4)


def test_on_policy_tokens_give_the_plain_policy_gradient():
    for loss_fn in (cispo_loss, ppo_loss):
        value, metrics = loss_fn(jnp.asarray(LOGP), jnp.asarray(LOGP), jnp.asarray(ADV), jnp.asarray(MASK))
        assert float(metrics["approx_kl"]) == pytest.approx(0.0, abs=1e-7)
        assert float(metrics["clip_fraction"]) == 0.0
    grad = jax.grad(lambda lp: ppo_loss(lp, LOGP, ADV, MASK)[0])(jnp.asarray(LOGP))
    np.testing.assert_allclose(np.asarray(grad), -ADV * MASK / MASK.sum(), atol=1e-6)


REF = (LOGP + RNG.normal(0, 0.5, (3, 7))).astype(np.float32)
ENT = RNG.uniform(0.5, 4.0, (3, 7)).astype(np.float32)


def test_objective_terms_match_the_per_token_loop():
    """cispo - 0.1 * entropy + 0.3 * k3(ref - logp): value and gradients wrt logp and entropy."""
    cfg = LossConfig(max_weight=3.0, entropy_coef=0.1, kl_coef=0.3)
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda lp, ent: objective(cfg, lp, ent, OLD, ADV, MASK, REF)[0], argnums=(0, 1)))
    value, (g_logp, g_ent) = value_and_grad(jnp.asarray(LOGP), jnp.asarray(ENT))
    pg_value, pg_grad = _loop_cispo(LOGP.astype(np.float64), OLD.astype(np.float64), ADV, MASK, max_weight=3.0)
    n, on = MASK.sum(), MASK > 0
    d = (REF - LOGP).astype(np.float64)
    kl = np.where(on, np.exp(d) - 1 - d, 0.0)
    assert float(value) == pytest.approx(pg_value - 0.1 * (ENT * MASK).sum() / n + 0.3 * kl.sum() / n, rel=1e-5)
    np.testing.assert_allclose(np.asarray(g_logp), pg_grad + 0.3 * np.where(on, 1 - np.exp(d), 0.0) / n, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g_ent), -0.1 * MASK / n, atol=1e-7)
    _, metrics = objective(cfg, jnp.asarray(LOGP), jnp.asarray(ENT), OLD, ADV, MASK, REF)
    assert float(metrics["kl_ref"]) == pytest.approx(kl.sum() / n, rel=1e-5)
    assert float(metrics["entropy"]) == pytest.approx((ENT * MASK).sum() / n, rel=1e-5)


@pytest.mark.parametrize("name, plain", [("cispo", cispo_loss), ("ppo", ppo_loss)])
def test_objective_defaults_are_exactly_the_plain_loss(name, plain):
    v1, g1 = jax.value_and_grad(lambda lp: objective(LossConfig(loss=name), lp, ENT, OLD, ADV, MASK, REF)[0])(
        jnp.asarray(LOGP))
    v2, g2 = jax.value_and_grad(lambda lp: plain(lp, OLD, ADV, MASK)[0])(jnp.asarray(LOGP))
    assert float(v1) == float(v2)
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(g2))


def test_sft_and_one_metric_schema():
    value, grad = jax.value_and_grad(lambda lp: objective(LossConfig(loss="sft"), lp, ENT, OLD, ADV, MASK)[0])(
        jnp.asarray(LOGP))
    assert float(value) == pytest.approx(-(LOGP * MASK).sum() / MASK.sum(), rel=1e-6)
    np.testing.assert_allclose(np.asarray(grad), -MASK / MASK.sum(), atol=1e-7)
    for name in LOSS_NAMES:
        for ref in (None, REF):
            _, metrics = objective(LossConfig(loss=name), jnp.asarray(LOGP), ENT, OLD, ADV, MASK, ref)
            assert set(metrics) == set(METRIC_KEYS)
    with pytest.raises(ValueError, match="needs the reference log-probs"):
        objective(LossConfig(kl_coef=0.1), jnp.asarray(LOGP), ENT, OLD, ADV, MASK)
    with pytest.raises(ValueError, match="unknown loss"):
        LossConfig(loss="grpo")


def test_masked_tokens_cannot_overflow_the_metrics():
    logp = LOGP.copy()
    logp[MASK == 0] = -200.0  # exp(200) is inf in float32; off the mask it must not reach the sums
    for name in LOSS_NAMES:
        value, metrics = objective(LossConfig(loss=name, kl_coef=0.1), jnp.asarray(logp), ENT, OLD, ADV, MASK, REF)
        assert np.isfinite(float(value)) and all(np.isfinite(float(v)) for v in metrics.values())
