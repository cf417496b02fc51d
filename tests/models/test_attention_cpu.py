"""The CPU attention's hand-written gradient equals autodiff's through the plain form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rao_jax.models import attention
from rao_jax.models.attention import attention_mask


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cpu_attention_matches_autodiff_of_the_plain_form(dtype):
    rng = np.random.default_rng(0)
    b, hk, g, t, d = 2, 2, 3, 24, 16
    q, k, v = (jnp.asarray(rng.standard_normal(shape), dtype) for shape in
               ((b, hk, g, t, d), (b, hk, t, d), (b, hk, t, d)))
    segments = jnp.asarray(np.repeat([[1, 1, 2], [1, 2, 3]], t // 3, axis=1), jnp.int32)  # packed rows
    mask = attention_mask(segments)
    probe = jnp.asarray(rng.standard_normal((b, hk, g, t, d)), jnp.float32)

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * probe)

    ours = jax.jit(jax.value_and_grad(loss(lambda q, k, v: attention._attend_cpu(q, k, v, mask)), argnums=(0, 1, 2)))
    plain = jax.jit(jax.value_and_grad(loss(lambda q, k, v: attention._attend_autodiff(q, k, v, mask, dtype)),
                                       argnums=(0, 1, 2)))
    (value, grads), (ref_value, ref_grads) = ours(q, k, v), plain(q, k, v)
    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(value, ref_value, rtol=tol, atol=tol)
    for ours_g, ref_g in zip(grads, ref_grads, strict=True):
        assert ours_g.dtype == ref_g.dtype == dtype
        np.testing.assert_allclose(np.asarray(ours_g, np.float32), np.asarray(ref_g, np.float32), rtol=tol,
                                   atol=tol * float(jnp.max(jnp.abs(ref_g.astype(jnp.float32)))))
