"""Entropy, KL-to-reference and SFT terms of the learner, against unchunked references; schedules."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rao_jax.models import Qwen3, tiny_config
from rao_jax.rl.learner import (
    STEP_METRIC_KEYS,
    OptimConfig,
    batch_arrays,
    learning_rate_schedule,
    make_optimizer,
    reference_logprobs,
    train_step,
)
from rao_jax.rl.losses import cispo_loss
from rao_jax.rl.packing import pack_sequences, token_logprobs, token_logprobs_and_entropy
from tests.rl.test_packing import _nodes

LENGTHS = (13, 9, 20, 5, 17, 11, 7, 24)  # first-fit into exactly 4 rows of 32
# Every optional term and non-default knobs; shared by two tests so that they share one compiled step.
TERMS = dict(loss="ppo", eps_low=0.1, eps_high=0.15, entropy_coef=0.1, kl_coef=0.3)


def _batch(seed=0):
    return batch_arrays(pack_sequences(_nodes(seed=seed, lengths=LENGTHS), row_len=32, num_rows=4))


def _model(seed=0):  # one layer: these tests are about the loss head, and compile time is most of their cost
    return Qwen3(tiny_config("qwen3", num_hidden_layers=1), rngs=nnx.Rngs(seed))


_jit_logprobs = nnx.jit(functools.partial(token_logprobs, chunk=8))


def _logp(model, b):
    return _jit_logprobs(model, b["tokens"], b["positions"], b["segment_ids"], b["targets"])


def _sgd(model):  # params move by exactly -grad: the step exposes the gradient
    return nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _full_log_softmax(model, b):
    hidden = model.forward(b["tokens"], b["positions"], b["segment_ids"]).hidden
    return jax.nn.log_softmax(model.logits(hidden), axis=-1)  # [rows, t, vocab] whole


def test_entropy_equals_a_per_token_loop_over_the_full_log_softmax():
    model, b = _model(), _batch()
    logp, entropy = nnx.jit(lambda m: token_logprobs_and_entropy(
        m, b["tokens"], b["positions"], b["segment_ids"], b["targets"], chunk=8))(model)
    full = np.asarray(nnx.jit(_full_log_softmax)(model, b), np.float64)
    logp, entropy, targets = np.asarray(logp), np.asarray(entropy), np.asarray(b["targets"])
    for r, i in np.ndindex(targets.shape):
        assert entropy[r, i] == pytest.approx(-np.sum(np.exp(full[r, i]) * full[r, i]), abs=1e-5)
        assert logp[r, i] == pytest.approx(full[r, i, targets[r, i]], abs=1e-5)


def test_reference_logprobs_equal_the_reference_models_token_logprobs():
    ref, b = _model(7), _batch()
    expected = _logp(ref, b)
    expected = np.asarray(expected) * np.asarray(b["loss_mask"])
    for micro in (1, 2):
        np.testing.assert_allclose(np.asarray(reference_logprobs(ref, b, chunk=8, micro_batches=micro)), expected,
                                   atol=1e-6)


def test_entropy_bonus_and_kl_gradients_equal_the_unchunked_formula():
    """PPO (non-default clip) - entropy bonus + k3 KL, through train_step, vs jax.grad of the plain formula."""
    model, b = _model(), _batch()
    b["ref_logp"] = reference_logprobs(_model(7), b, chunk=8)
    ent_coef, kl_coef, lo, hi = TERMS["entropy_coef"], TERMS["kl_coef"], TERMS["eps_low"], TERMS["eps_high"]

    def reference(m):
        full = _full_log_softmax(m, b)
        logp = jnp.take_along_axis(full, b["targets"][..., None], axis=-1)[..., 0]
        entropy = -jnp.sum(jnp.exp(full) * full, axis=-1)
        on, n = b["loss_mask"] > 0, jnp.sum(b["loss_mask"])
        ratio = jnp.exp(jnp.where(on, logp - b["behaviour_logp"], 0.0))
        surrogate = jnp.minimum(ratio * b["advantage"], jnp.clip(ratio, 1 - lo, 1 + hi) * b["advantage"])
        d = jnp.where(on, b["ref_logp"] - logp, 0.0)
        per_token = -surrogate - ent_coef * entropy + kl_coef * (jnp.exp(d) - 1.0 - d)
        return jnp.sum(jnp.where(on, per_token, 0.0)) / n

    value, grads = nnx.jit(nnx.value_and_grad(reference))(model)
    before = _params(model)
    metrics = train_step(model, _sgd(model), b, **TERMS, chunk=8)
    assert float(metrics["loss"]) == pytest.approx(float(value), abs=1e-5)
    assert float(metrics["kl_ref"]) > 0.0 and float(metrics["entropy"]) > 0.0
    steps = jax.tree.map(lambda p0, p1: p0 - p1, before, _params(model))
    jax.tree.map(lambda s, g: np.testing.assert_allclose(s, g, atol=1e-5), steps, nnx.to_pure_dict(grads))


def test_micro_batches_give_the_same_update_with_entropy_and_kl_terms():
    b = _batch(seed=1)
    b["ref_logp"] = reference_logprobs(_model(7), b, chunk=8)
    results = []
    for micro in (1, 2, 4):
        model = _model()
        metrics = train_step(model, _sgd(model), b, **TERMS, micro_batches=micro, chunk=8)
        results.append((metrics, _params(model)))
    (m1, p1), *others = results
    assert set(m1) == set(STEP_METRIC_KEYS)
    for m, p in others:
        for key in STEP_METRIC_KEYS:
            assert float(m[key]) == pytest.approx(float(m1[key]), rel=1e-5, abs=1e-6), key
        jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, atol=1e-6), p, p1)


def test_defaults_give_the_plain_cispo_loss_and_log_kl_ref():
    model, b = _model(), _batch()
    b["ref_logp"] = reference_logprobs(_model(7), b, chunk=8)
    logp = _logp(model, b)
    expected, _ = cispo_loss(logp, b["behaviour_logp"], b["advantage"], b["loss_mask"])
    metrics = train_step(model, _sgd(model), b, chunk=8)
    assert float(metrics["loss"]) == float(metrics["policy_loss"])
    assert float(metrics["loss"]) == pytest.approx(float(expected), abs=1e-6)
    assert float(metrics["kl_ref"]) > 0.0
    with pytest.raises(ValueError, match="needs the batch field 'ref_logp'"):
        train_step(model, _sgd(model), _batch(), kl_coef=0.1, chunk=8)


def test_sft_loss_is_the_negative_mean_log_likelihood_and_steps_raise_it():
    model, b = _model(), _batch(seed=2)
    mask = b["loss_mask"]

    def mean_loglik():
        logp = _logp(model, b)
        return float(jnp.sum(logp * mask) / jnp.sum(mask))

    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    before = mean_loglik()
    first = train_step(model, optimizer, b, loss="sft", chunk=8)
    assert float(first["loss"]) == pytest.approx(-before, abs=1e-5)
    assert set(first) == set(STEP_METRIC_KEYS)
    assert all(float(first[k]) == 0.0 for k in ("is_weight_mean", "is_weight_max", "approx_kl", "clip_fraction"))
    assert float(first["entropy"]) > 0.0 and float(first["tokens"]) == float(jnp.sum(mask))
    for _ in range(2):
        train_step(model, optimizer, b, loss="sft", chunk=8)
    assert mean_loglik() > before + 0.05


def test_learning_rate_schedules():
    assert learning_rate_schedule(OptimConfig()) == 3e-6  # the paper's: constant, no warmup
    warm = learning_rate_schedule(OptimConfig(learning_rate=1.0, warmup_steps=4))
    assert [float(warm(s)) for s in (0, 2, 4, 100)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    cos = learning_rate_schedule(OptimConfig(learning_rate=1.0, warmup_steps=2, schedule="cosine", total_steps=12,
                                             final_lr_ratio=0.1))
    assert [float(cos(s)) for s in (0, 2, 7, 12)] == pytest.approx([0.0, 1.0, 0.55, 0.1], abs=1e-6)
    with pytest.raises(ValueError, match="total_steps"):
        OptimConfig(schedule="cosine")
    with pytest.raises(ValueError, match="unknown schedule"):
        OptimConfig(schedule="linear")


def test_moe_models_add_the_scaled_router_load_balancing_loss():
    b = _batch()
    model = Qwen3(tiny_config("qwen3_moe", num_hidden_layers=1, router_aux_loss_coef=0.5), rngs=nnx.Rngs(0))
    out = model.forward(b["tokens"], b["positions"], b["segment_ids"])
    policy_only, _ = cispo_loss(_logp(model, b), b["behaviour_logp"], b["advantage"], b["loss_mask"])
    metrics = train_step(model, make_optimizer(model), b, chunk=8)
    assert float(metrics["router_aux"]) == pytest.approx(float(out.aux_loss), rel=1e-5)
    assert float(out.aux_loss) > 0
    assert float(metrics["loss"]) == pytest.approx(float(policy_only) + 0.5 * float(out.aux_loss), rel=1e-5)
    dense = _model()
    assert float(train_step(dense, make_optimizer(dense), b, chunk=8)["router_aux"]) == 0.0
