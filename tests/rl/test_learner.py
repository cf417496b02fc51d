"""The learner step: micro-batching leaves the update unchanged; the update moves the loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rao_jax.models import Qwen3, tiny_config
from rao_jax.rl import learner
from rao_jax.rl.learner import OptimConfig, batch_arrays, make_optimizer, train_step
from rao_jax.rl.packing import pack_sequences, token_logprobs
from tests.rl.test_packing import _nodes


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_micro_batches_give_the_same_update_as_one_batch():
    batch = batch_arrays(pack_sequences(_nodes(lengths=(23, 9, 40, 5, 17, 31, 12, 28)), row_len=64, num_rows=4))
    results = []
    for micro in (1, 2, 4):
        model = Qwen3(tiny_config("qwen3"), rngs=nnx.Rngs(0))
        optimizer = make_optimizer(model, OptimConfig(learning_rate=1e-3))
        metrics = train_step(model, optimizer, batch, micro_batches=micro, chunk=16)
        results.append((metrics, _params(model)))
    (m1, p1), *others = results
    for m, p in others:
        assert float(m["loss"]) == pytest.approx(float(m1["loss"]), abs=1e-6)
        assert float(m["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-5)
        # Adam divides by sqrt(v): entries with near-zero gradients may move by up to ~1% of the lr.
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p, p1)
    assert float(m1["tokens"]) == float(batch["loss_mask"].sum())


@pytest.mark.parametrize("loss", ["cispo", "ppo"])
def test_steps_raise_the_advantage_weighted_log_likelihood(loss):
    nodes = _nodes(seed=3)
    batch = batch_arrays(pack_sequences(nodes, row_len=64))
    model = Qwen3(tiny_config("qwen3"), rngs=nnx.Rngs(1))
    optimizer = make_optimizer(model, OptimConfig(learning_rate=1e-3))

    def objective():  # sum over trained tokens of A * log pi(token)
        logp = token_logprobs(model, batch["tokens"], batch["positions"], batch["segment_ids"], batch["targets"],
                              chunk=16)
        return float(jnp.sum(batch["advantage"] * logp * batch["loss_mask"]))

    before = objective()
    for _ in range(3):
        train_step(model, optimizer, batch, loss=loss, chunk=16)
    assert objective() > before


def test_rows_must_split_into_micro_batches():
    batch = batch_arrays(pack_sequences(_nodes(), row_len=64, num_rows=3))
    model = Qwen3(tiny_config("qwen3"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="3 rows do not split into 2 micro-batches"):
        train_step(model, make_optimizer(model), batch, micro_batches=2, chunk=16)


def test_steps_of_any_row_count_trace_the_micro_batch_step_once(monkeypatch):
    # Rows per micro-batch fixed at 2; the step's rows (2, 4, 8) change only the Python loop's length.
    traces = []
    micro_loss = learner._micro_loss
    monkeypatch.setattr(learner, "_micro_loss", lambda *a, **k: traces.append(1) or micro_loss(*a, **k))
    model = Qwen3(tiny_config("qwen3", num_hidden_layers=1), rngs=nnx.Rngs(0))
    optimizer = make_optimizer(model)
    for rows in (2, 4, 8):
        batch = batch_arrays(pack_sequences(_nodes(lengths=(20,) * rows), row_len=48, num_rows=rows))
        metrics = train_step(model, optimizer, batch, micro_batches=rows // 2, chunk=16)
        assert float(metrics["tokens"]) == float(batch["loss_mask"].sum())
    assert len(traces) == 1
