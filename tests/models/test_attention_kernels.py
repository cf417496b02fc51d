"""The training-attention switch: ``xla`` is today's attention; the kernels match it where they run.

The splash (TPU) and cuDNN (GPU) parity tests run only on their backend and are skipped elsewhere.
On CPU the kernels' wrappers are still checked: splash through the kernel's interpreter, cuDNN's call
through ``jax.nn.dot_product_attention``'s XLA implementation (same masking arguments).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rao_jax.models import Qwen3, tiny_config
from rao_jax.models.attention import attention_mask, dot_product_attention
from rao_jax.models.attention_kernels import (
    ATTN_IMPLS,
    check_attn_impl,
    cudnn_attention,
    splash_attention,
    training_attention,
)
from rao_jax.models.config import ConfigError

BACKEND = jax.default_backend()
# Tolerances of a kernel vs "xla" (max abs diff on unit-scale inputs), per compute dtype.
TOL = {jnp.float32: 2e-3, jnp.bfloat16: 4e-2}


def packed_segments(b: int, t: int, seed: int = 0) -> np.ndarray:
    """Rows of several segments of random lengths, right-padded with a segment of its own."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(b):
        cuts = np.sort(rng.choice(np.arange(1, t - 8), size=3, replace=False))
        row = np.zeros(t, np.int32)
        for i, c in enumerate(cuts):
            row[c:] = i + 1
        rows.append(row)
    return np.stack(rows)


def qkv(b, t, hq, hk, d, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal((b, t, h, d), np.float32), dtype) for h in (hq, hk, hk))


def xla_attention(q, k, v, seg, dtype):
    return dot_product_attention(q, k, v, attention_mask(seg), dtype)


def assert_matches_xla(attend, dtype, *, b=2, t=256, hq=8, hk=2, d=128, seg=True):
    """Forward and gradients (w.r.t. q, k, v) of ``attend(q, k, v, seg)`` vs the xla attention."""
    q, k, v = qkv(b, t, hq, hk, d, dtype)
    segs = jnp.asarray(packed_segments(b, t)) if seg else None
    ref_seg = segs if seg else jnp.zeros((b, t), jnp.int32)
    cot = jnp.asarray(np.random.default_rng(9).standard_normal((b, t, hq, d), np.float32), dtype)

    @functools.partial(jax.jit, static_argnums=3)
    def out_and_grads(q_, k_, v_, use_xla: bool):
        fn = (lambda *a: xla_attention(*a, ref_seg, dtype)) if use_xla else (lambda *a: attend(*a, segs))
        out, vjp = jax.vjp(fn, q_, k_, v_)
        return out, vjp(cot.astype(out.dtype))

    want, want_g = out_and_grads(q, k, v, True)
    got, got_g = out_and_grads(q, k, v, False)
    assert got.shape == want.shape and got.dtype == dtype
    tol = TOL[dtype]
    assert float(jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32)))) < tol
    for gw, gg in zip(want_g, got_g, strict=True):
        scale = max(1.0, float(jnp.max(jnp.abs(gw.astype(jnp.float32)))))
        assert float(jnp.max(jnp.abs(gg.astype(jnp.float32) - gw.astype(jnp.float32)))) < tol * scale


# ---- xla: the default, unchanged -----------------------------------------------------------------

def test_xla_is_the_default_and_equals_the_previous_attention_bit_for_bit():
    cfg = tiny_config("qwen3", num_hidden_layers=1)
    default, explicit = Qwen3(cfg, rngs=nnx.Rngs(0)), Qwen3(cfg, rngs=nnx.Rngs(0), attn_impl="xla")
    assert default.attn_impl == "xla" and all(layer.attn_impl == "xla" for layer in default.layers)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 32)), jnp.int32)
    segs = jnp.asarray(packed_segments(2, 32))

    def previous_forward(model, tokens, segs):
        # The forward as written before the switch: one dense mask, dot_product_attention per layer.
        from rao_jax.models.qwen3 import positions_from_segments

        positions, mask = positions_from_segments(segs), attention_mask(segs)
        x = model.embed_tokens(tokens)
        for layer in model.layers:
            x, _ = layer.block(x, positions, jnp.ones(tokens.shape, jnp.float32),
                               lambda q, k, v: dot_product_attention(q, k, v, mask, model.dtype))
        return model.norm(x)

    want, got = nnx.jit(lambda m, t, s: (previous_forward(m, t, s), m.forward(t, segment_ids=s).hidden))(
        default, tokens, segs)
    np.testing.assert_array_equal(got, want)
    assert nnx.graphdef(explicit) == nnx.graphdef(default)  # the same program as the default
    q, k, v = qkv(2, 32, 4, 2, 16, jnp.float32)
    np.testing.assert_array_equal(
        training_attention(q, k, v, impl="xla", dtype=jnp.float32, mask=attention_mask(segs)),
        xla_attention(q, k, v, segs, jnp.float32))
    np.testing.assert_array_equal(  # no mask and no segment ids: one sequence per row
        training_attention(q, k, v, impl="xla", dtype=jnp.float32),
        xla_attention(q, k, v, jnp.zeros((2, 32), jnp.int32), jnp.float32))


@pytest.mark.parametrize("block", [64, 128])
def test_causal_blocks_equal_the_dense_attention_values_and_gradients(block):
    """Skipping the blocks above the diagonal changes only the float summation order."""
    b, t, hq, hk, d = 2, 256, 4, 2, 32
    q, k, v = qkv(b, t, hq, hk, d, jnp.float32, seed=3)
    segs = jnp.asarray(packed_segments(b, t, seed=4))
    cot = jnp.asarray(np.random.default_rng(5).standard_normal((b, t, hq, d), np.float32))

    def out_and_grads(block_):
        fn = lambda *a: dot_product_attention(*a, attention_mask(segs), jnp.float32, causal_block=block_)  # noqa: E731
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(cot)

    want, want_g = jax.jit(lambda: out_and_grads(None))()
    got, got_g = jax.jit(lambda: out_and_grads(block))()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    for gw, gg in zip(want_g, got_g, strict=True):
        np.testing.assert_allclose(gg, gw, atol=1e-4, rtol=1e-4)
    # The xla training path uses the blocks (t = 256 is two of XLA_CAUSAL_BLOCK = 128).
    np.testing.assert_allclose(training_attention(q, k, v, impl="xla", dtype=jnp.float32, segment_ids=segs),
                               want, atol=1e-5, rtol=1e-5)


# ---- the wrappers' logic, checked on every backend -----------------------------------------------

@pytest.mark.parametrize("seg", [True, False])
def test_cudnn_call_masks_like_xla_through_the_xla_implementation(seg):
    assert_matches_xla(lambda q, k, v, s: cudnn_attention(q, k, v, s, implementation="xla"), jnp.float32,
                       t=64, d=32, seg=seg)


def test_splash_wrapper_matches_xla_in_the_kernel_interpreter():
    assert_matches_xla(lambda q, k, v, s: splash_attention(q, k, v, s, interpret=True), jnp.float32,
                       b=1, t=128, hq=4, hk=2, d=128)


def test_splash_rejects_lengths_that_are_not_a_multiple_of_128():
    q, k, v = qkv(1, 64, 4, 2, 16, jnp.float32)
    with pytest.raises(ValueError, match="multiple of 128"):
        splash_attention(q, k, v, None, interpret=True)


# ---- errors on the wrong backend and bad names ---------------------------------------------------

@pytest.mark.skipif(BACKEND != "cpu", reason="checks the errors a CPU backend gives")
@pytest.mark.parametrize("impl, needs", [("splash", "tpu"), ("cudnn", "gpu")])
def test_kernel_on_cpu_is_a_clear_error(impl, needs):
    with pytest.raises(ValueError, match=f"attn_impl='{impl}' needs the {needs} backend.*'cpu'"):
        check_attn_impl(impl)
    model = Qwen3(tiny_config("qwen3", num_hidden_layers=1), dtype=jnp.bfloat16, rngs=nnx.Rngs(0), attn_impl=impl)
    assert model.attn_impl == impl
    with pytest.raises(ValueError, match=f"needs the {needs} backend"):
        model(jnp.zeros((1, 128), jnp.int32))


def test_unknown_impl_is_rejected():
    assert ATTN_IMPLS == ("xla", "splash", "cudnn")
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        Qwen3(tiny_config("qwen3"), rngs=nnx.Rngs(0), attn_impl="flash")
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        check_attn_impl("flash")
    check_attn_impl("splash", backend="tpu")
    check_attn_impl("cudnn", backend="gpu")
    check_attn_impl("xla")


def test_config_key_is_validated():
    from rao_jax.config import ModelSection, default_config, from_config_dict

    assert default_config().model.attn_impl == "xla"
    assert ModelSection(attn_impl="splash").attn_impl == "splash"
    assert ModelSection(attn_impl="cudnn", dtype="bfloat16").attn_impl == "cudnn"
    with pytest.raises(ConfigError, match="model.attn_impl must be"):
        ModelSection(attn_impl="flash")
    with pytest.raises(ConfigError, match="cudnn needs model.dtype=bfloat16"):
        ModelSection(attn_impl="cudnn")
    cfg = default_config()
    cfg.model.attn_impl = "splash"
    assert from_config_dict(cfg).model.attn_impl == "splash"


# ---- parity on the accelerator that has the kernel -----------------------------------------------

def assert_model_matches_xla(impl: str, dtype) -> None:
    """A packed GQA batch through a small model: logits and parameter gradients vs "xla"."""
    cfg = tiny_config("qwen3", head_dim=128, num_attention_heads=8, num_key_value_heads=2)
    models = {name: Qwen3(cfg, dtype=dtype, rngs=nnx.Rngs(0), attn_impl=name) for name in ("xla", impl)}
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 512)), jnp.int32)
    segs = jnp.asarray(packed_segments(2, 512, seed=1))

    def loss(model):
        logp = jax.nn.log_softmax(model(tokens, segment_ids=segs))
        return -jnp.mean(jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1))

    (l_ref, g_ref), (l_got, g_got) = (nnx.jit(nnx.value_and_grad(loss))(models[n]) for n in ("xla", impl))
    tol = TOL[dtype]
    assert abs(float(l_ref) - float(l_got)) < tol
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_got), strict=True):
        scale = max(1e-3, float(jnp.max(jnp.abs(a))))
        assert float(jnp.max(jnp.abs(a - b))) < tol * 5 * scale


@pytest.mark.skipif(BACKEND != "tpu", reason="the splash kernel runs on TPU only")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_splash_matches_xla_on_tpu(dtype):
    assert_matches_xla(lambda q, k, v, s: training_attention(q, k, v, impl="splash", dtype=dtype, segment_ids=s),
                       dtype, t=1024)
    assert_matches_xla(lambda q, k, v, s: training_attention(q, k, v, impl="splash", dtype=dtype, segment_ids=s),
                       dtype, t=256, seg=False)
    assert_model_matches_xla("splash", dtype)


@pytest.mark.skipif(BACKEND != "gpu", reason="the cuDNN kernel runs on NVIDIA GPUs only")
def test_cudnn_matches_xla_on_gpu():
    dtype = jnp.bfloat16
    for seg in (True, False):
        assert_matches_xla(lambda q, k, v, s: training_attention(q, k, v, impl="cudnn", dtype=dtype, segment_ids=s),
                           dtype, t=1024, seg=seg)
    assert_model_matches_xla("cudnn", dtype)


@pytest.mark.skipif(BACKEND != "gpu", reason="the cuDNN kernel runs on NVIDIA GPUs only")
def test_cudnn_rejects_float32_on_gpu():
    q, k, v = qkv(1, 128, 4, 2, 64, jnp.float32)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        training_attention(q, k, v, impl="cudnn", dtype=jnp.float32)


_MESH_SCRIPT = """
import functools
import jax, jax.numpy as jnp, numpy as np
from rao_jax.models.attention_kernels import _on_mesh, splash_attention
from rao_jax.parallel.sharding import make_mesh
from tests.models.test_attention_kernels import qkv, xla_attention
q, k, v = qkv(2, 128, 4, 2, 128, jnp.float32)
segs = jnp.asarray(np.r_[np.ones(60), 2 * np.ones(68)][None].repeat(2, 0).astype(np.int32))
want = xla_attention(q, k, v, segs, jnp.float32)
kernel = functools.partial(splash_attention, interpret=True)
with jax.set_mesh(make_mesh(data=2, tensor=2)):
    got = jax.jit(lambda q, k, v, s: _on_mesh(kernel, q, k, v, s))(q, k, v, segs)
print("MAXDIFF", float(jnp.max(jnp.abs(got - want))))
"""


def test_splash_runs_per_device_under_a_mesh_in_the_kernel_interpreter():
    """On a (data 2 x tensor 2) fake CPU mesh the kernel runs inside shard_map (rows over data, heads
    over tensor) and still equals the XLA attention."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    diff = float(out.stdout.split("MAXDIFF")[1])
    assert diff < 1e-5
