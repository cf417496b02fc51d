"""``layers.dense``: ``x @ w`` whose CPU backward transposes the narrower operand itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rao_jax.models.layers import dense


@pytest.mark.parametrize("k,n", [(16, 48), (48, 16), (32, 32)])
def test_dense_gives_the_matmul_and_its_gradients(k, n):
    rng = np.random.default_rng(k * n)
    x = jnp.asarray(rng.standard_normal((3, 5, k)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, n)), jnp.float32)
    probe = jnp.asarray(rng.standard_normal((3, 5, n)), jnp.float32)

    def loss(f):
        return lambda x, w: jnp.sum(jnp.tanh(f(x, w)) * probe)

    np.testing.assert_allclose(dense(x, w), x @ w, rtol=1e-6, atol=1e-6)
    ours = jax.jit(jax.grad(loss(dense), argnums=(0, 1)))(x, w)
    plain = jax.jit(jax.grad(loss(jnp.matmul), argnums=(0, 1)))(x, w)
    for a, b in zip(ours, plain, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_on_a_cpu_the_weight_gradient_transposes_the_narrower_operand_behind_a_barrier():
    x, w = jnp.ones((64, 8)), jnp.ones((8, 32))
    hlo = jax.jit(jax.grad(lambda x, w: jnp.sum(dense(x, w)), argnums=1)).lower(x, w).as_text()
    assert "optimization_barrier" in hlo and "transpose" in hlo
