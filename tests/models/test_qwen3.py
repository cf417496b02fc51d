"""The Qwen3 / Qwen3-MoE forward against transformers (fp32, CPU), packing, dtypes and remat."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rao_jax.checkpoint.hf import load_pretrained
from rao_jax.models import Qwen3, positions_from_segments, tiny_config
from rao_jax.models.attention import dot_product_attention
from tests.hf_utils import ragged_batch, torch_logits

LENGTHS = [5, 23, 1, 17]

PARITY_CASES = {
    "dense_tied": (False, dict(tie_word_embeddings=True)),
    "dense_untied": (False, dict(tie_word_embeddings=False)),
    "dense_attention_bias": (False, dict(attention_bias=True)),
    "moe_sparse_step2_mlp_only_topk_norm": (
        True, dict(decoder_sparse_step=2, mlp_only_layers=[2], norm_topk_prob=True, num_hidden_layers=4)),
    "moe_no_topk_norm": (True, dict(norm_topk_prob=False)),
}


@jax.jit
def _logits(model, tokens, segment_ids=None):
    return model(tokens, segment_ids=segment_ids)


@pytest.mark.parametrize("case", PARITY_CASES)
def test_logits_match_transformers_on_ragged_batch(hf_checkpoint, case):
    moe, overrides = PARITY_CASES[case]
    folder, reference = hf_checkpoint(moe, **overrides)
    model, cfg = load_pretrained(folder)
    if "mlp_only_layers" in overrides:
        assert [cfg.layer_is_moe(i) for i in range(4)] == [False, True, False, True]
    tokens, valid = ragged_batch(cfg.vocab_size, LENGTHS)
    expected = torch_logits(reference, tokens, valid)
    got = np.asarray(_logits(model, jnp.asarray(tokens)))
    diff = np.abs(got - expected)[valid]
    assert diff.max() <= 1e-4, f"max |diff| {diff.max():.3g}"


def test_moe_aux_loss_matches_transformers(hf_checkpoint):
    import torch

    folder, reference = hf_checkpoint(True, norm_topk_prob=True, output_router_logits=True)
    model, cfg = load_pretrained(folder)
    tokens, valid = ragged_batch(cfg.vocab_size, LENGTHS)
    with torch.no_grad():
        out = reference(torch.tensor(tokens.astype(np.int64)),
                        attention_mask=torch.tensor(valid.astype(np.int64)), output_router_logits=True)
    got = jax.jit(lambda m, t, v: m.forward(t, token_mask=v).aux_loss)(
        model, jnp.asarray(tokens), jnp.asarray(valid, jnp.float32))
    assert abs(float(got) - float(out.aux_loss)) <= 1e-5


@pytest.mark.parametrize("model_type", ["qwen3", "qwen3_moe"])
def test_packed_rows_equal_separate_sequences(model_type):
    model = Qwen3(tiny_config(model_type), rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(0, 128, n).astype(np.int32) for n in (7, 12, 5))
    packed = jnp.asarray(np.concatenate([a, b, c])[None])
    segments = jnp.asarray(np.repeat([1, 2, 3], [7, 12, 5])[None])
    got = np.asarray(_logits(model, packed, segments))[0]
    separate = np.concatenate([np.asarray(_logits(model, jnp.asarray(s[None])))[0] for s in (a, b, c)])
    np.testing.assert_allclose(got, separate, atol=1e-5)


@pytest.mark.parametrize("model_type", ["qwen3", "qwen3_moe"])
def test_layer_keep_gives_the_kept_tokens_of_the_whole_layer(model_type):
    """``block(keep=...)`` (the sampler's last prefill layer): every token's q / k / v reach
    ``attend``, and the layer's output for the kept tokens equals the whole layer's at them."""
    cfg = tiny_config(model_type)
    model = Qwen3(cfg, rngs=nnx.Rngs(2))
    layer = model.layers[-1]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 11, cfg.hidden_size)), jnp.float32)
    positions = jnp.arange(11)[None]
    keep = jnp.asarray([10, 3, 0])
    causal = jnp.tril(jnp.ones((11, 11), bool))[None]

    def attend(q, k, v, rows=None):
        out = dot_product_attention(q, k, v, causal, jnp.float32)
        return out if rows is None else out[:, rows]

    whole, _ = layer.block(x, positions, jnp.ones((1, 11)), attend)
    kept, _ = layer.block(x, positions, jnp.ones((1, 11)), lambda q, k, v: attend(q, k, v, keep), keep=keep)
    assert kept.shape == (1, 3, cfg.hidden_size)
    np.testing.assert_allclose(np.asarray(kept), np.asarray(whole)[:, [10, 3, 0]], atol=1e-5)


def test_positions_restart_per_segment():
    segments = jnp.asarray([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    assert positions_from_segments(segments).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]


def test_remat_gives_same_loss_and_grads():
    cfg = tiny_config("qwen3_moe")
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9)), jnp.int32)

    def loss(model):
        out = model.forward(tokens)
        logp = jax.nn.log_softmax(model.logits(out.hidden))
        return -jnp.mean(jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1)) + 0.01 * out.aux_loss

    results = []
    for remat in (False, True):
        model = Qwen3(cfg, remat=remat, rngs=nnx.Rngs(3))
        results.append(nnx.jit(nnx.value_and_grad(loss))(model))
    (l0, g0), (l1, g1) = results
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), g0, g1)


def test_bfloat16_compute_stays_close_to_float32():
    cfg = tiny_config("qwen3")
    f32 = Qwen3(cfg, rngs=nnx.Rngs(0))
    bf16 = Qwen3(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16)), jnp.int32)
    a, b = _logits(f32, tokens), _logits(bf16, tokens)
    assert b.dtype == jnp.float32  # logits are float32 whatever the compute dtype
    assert jax.tree.leaves(nnx.state(bf16, nnx.Param))[0].dtype == jnp.bfloat16
    assert float(jnp.max(jnp.abs(a - b))) < 0.05


def test_parameters_carry_logical_axes():
    model = Qwen3(tiny_config("qwen3_moe"), rngs=nnx.Rngs(0))
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = variable.get_metadata().get("logical_axes")
        assert axes is not None and len(axes) == variable.ndim, path
