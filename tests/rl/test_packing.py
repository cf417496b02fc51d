"""A packed CISPO step equals the straightforward per-node (unpacked) computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rao_jax.models import Qwen3, tiny_config
from rao_jax.rl.losses import cispo_loss
from rao_jax.rl.packing import NodeSequence, pack_sequences, token_logprobs


def _nodes(seed=0, lengths=(23, 9, 40, 5, 17, 31)):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        mask = (rng.uniform(size=n) > 0.4).astype(np.float32)
        mask[0] = 0.0
        logp = np.where(mask > 0, -rng.uniform(0.5, 4.0, n), 0.0).astype(np.float32)
        out.append(NodeSequence(rng.integers(0, 128, n).astype(np.int32), mask, logp, float(rng.normal())))
    return out


@pytest.mark.parametrize("model_type", ["qwen3", "qwen3_moe"])
def test_packed_loss_and_gradients_equal_the_unpacked_per_node_reference(model_type):
    model = Qwen3(tiny_config(model_type), rngs=nnx.Rngs(0))
    nodes = _nodes()
    batch = pack_sequences(nodes, row_len=64)
    assert batch.tokens.shape[0] < len(nodes)  # packing really shares rows

    def packed_loss(m):
        logp = token_logprobs(m, jnp.asarray(batch.tokens), jnp.asarray(batch.positions),
                              jnp.asarray(batch.segment_ids), jnp.asarray(batch.targets), chunk=16)
        return cispo_loss(logp, jnp.asarray(batch.behaviour_logp), jnp.asarray(batch.advantage),
                          jnp.asarray(batch.loss_mask))[0]

    def unpacked_loss(m):
        total, count = 0.0, sum(float(n.loss_mask.sum()) for n in nodes)
        for n in nodes:  # one node at a time, no packing, full logits
            logits = m(jnp.asarray(n.tokens)[None])[0, :-1]
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(n.tokens[1:])[:, None], -1)[:, 0]
            weight = jax.lax.stop_gradient(jnp.clip(jnp.exp(logp - n.behaviour_logp[1:]), 0.0, 5.0))
            total = total - jnp.sum(weight * n.advantage * logp * n.loss_mask[1:])
        return total / count

    packed_value, packed_grads = nnx.jit(nnx.value_and_grad(packed_loss))(model)
    value, grads = nnx.jit(nnx.value_and_grad(unpacked_loss))(model)
    assert float(packed_value) == pytest.approx(float(value), abs=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), packed_grads, grads)


def test_packing_layout_and_errors():
    nodes = _nodes(lengths=(30, 30, 20, 10))
    batch = pack_sequences(nodes, row_len=64)
    assert batch.tokens.shape == (2, 64)
    for r in range(2):  # every row holds whole sequences, positions restart per segment
        for seg in set(batch.segment_ids[r].tolist()) - {0}:
            where = np.flatnonzero(batch.segment_ids[r] == seg)
            assert batch.positions[r, where].tolist() == list(range(len(where)))
    assert float(batch.loss_mask.sum()) == sum(float(n.loss_mask[1:].sum()) for n in nodes)
    with pytest.raises(ValueError, match="has 70 tokens, more than a row holds \\(64\\)"):
        pack_sequences(_nodes(lengths=(70,)), row_len=64)
    with pytest.raises(ValueError, match="need 2 rows of 64 tokens; only 1"):
        pack_sequences(nodes, row_len=64, num_rows=1)
    bad = NodeSequence(np.zeros(4, np.int32), np.ones(4, np.float32), np.zeros(4, np.float32), 1.0)
    with pytest.raises(ValueError, match="first token cannot be trained"):
        pack_sequences([bad], row_len=8)
