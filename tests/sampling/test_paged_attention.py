"""Paged attention (reference) against dense causal attention and JAX's own eager oracle."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rao_jax.models.attention import attention_mask, dot_product_attention
from rao_jax.sampling.kv_cache import write_kv
from rao_jax.sampling.paged_attention import reference_paged_attention

HQ, HK, D, S, W = 4, 2, 8, 4, 8  # query heads, kv heads, head dim, page size, pages per row


_write = jax.jit(write_kv)


def _setup(lengths, new, seed=0, d=D, s=S):
    """Rows with `lengths[i]` cached tokens then `new[i]` new tokens, pages scattered over the pool."""
    rng = np.random.default_rng(seed)
    rows = len(lengths)
    num_pages = 1 + rows * W
    perm = rng.permutation(np.arange(1, num_pages))
    table = perm.reshape(rows, W).astype(np.int32)
    total = [a + b for a, b in zip(lengths, new, strict=True)]
    k = [rng.standard_normal((n, HK, d)).astype(np.float32) for n in total]
    v = [rng.standard_normal((n, HK, d)).astype(np.float32) for n in total]
    q = [rng.standard_normal((n, HQ, d)).astype(np.float32) for n in total]
    pages = jnp.zeros((num_pages, s, 2 * HK, d), jnp.float32)
    for r in range(rows):  # write everything (the cached prefix and the new tokens)
        pos = np.arange(total[r], dtype=np.int32)
        pages = _write(pages, jnp.asarray(k[r]), jnp.asarray(v[r]), jnp.asarray(table),
                         jnp.full(total[r], r, jnp.int32), jnp.asarray(pos), jnp.ones(total[r], bool))
    return pages, table, q, k, v, total


@pytest.mark.parametrize("lengths, new", [([0, 0, 0], [5, 17, 1]), ([7, 0, 12], [3, 9, 1]), ([20, 31], [1, 1])])
def test_matches_dense_causal_attention_for_prefill_extend_and_decode(lengths, new):
    pages, table, q, k, v, total = _setup(lengths, new)
    flat_q = np.concatenate([q[r][lengths[r]:] for r in range(len(total))])
    row = np.concatenate([np.full(new[r], r) for r in range(len(total))]).astype(np.int32)
    pos = np.concatenate([np.arange(lengths[r], total[r]) for r in range(len(total))]).astype(np.int32)
    got = reference_paged_attention(jnp.asarray(flat_q), pages, jnp.asarray(table), jnp.asarray(row),
                                    jnp.asarray(pos), sm_scale=D ** -0.5)
    expected = []
    for r in range(len(total)):
        seg = jnp.zeros((1, total[r]), jnp.int32)
        out = dot_product_attention(jnp.asarray(q[r])[None], jnp.asarray(k[r])[None], jnp.asarray(v[r])[None],
                                    attention_mask(seg), jnp.float32)[0]
        expected.append(np.asarray(out)[lengths[r]:])
    np.testing.assert_allclose(np.asarray(got), np.concatenate(expected), atol=1e-5)


def test_chunked_path_equals_unchunked():
    pages, table, q, k, v, total = _setup([0, 3], [40, 24])
    flat_q = jnp.asarray(np.concatenate([q[0], q[1][3:]]))
    row = jnp.asarray(np.repeat([0, 1], [40, 24]).astype(np.int32))
    pos = jnp.asarray(np.concatenate([np.arange(40), np.arange(3, 27)]).astype(np.int32))
    whole = reference_paged_attention(flat_q, pages, jnp.asarray(table), row, pos, sm_scale=0.3, chunk=64)
    chunked = jax.jit(lambda *a: reference_paged_attention(*a, sm_scale=0.3, chunk=16))(
        flat_q, pages, jnp.asarray(table), row, pos)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), atol=1e-6)


def test_matches_jax_ragged_paged_attention_oracle():
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ref_ragged_paged_attention

    lengths, new = [6, 0, 13], [2, 7, 1]
    pages, table, q, k, v, total = _setup(lengths, new)
    flat_q = np.concatenate([q[r][lengths[r]:] for r in range(3)])
    row = np.repeat(np.arange(3), new).astype(np.int32)
    pos = np.concatenate([np.arange(lengths[r], total[r]) for r in range(3)]).astype(np.int32)
    ours = reference_paged_attention(jnp.asarray(flat_q), pages, jnp.asarray(table), jnp.asarray(row),
                                     jnp.asarray(pos), sm_scale=D ** -0.5)
    theirs = ref_ragged_paged_attention(
        jnp.asarray(flat_q), pages, jnp.asarray(total, jnp.int32), jnp.asarray(table),
        jnp.asarray(np.concatenate([[0], np.cumsum(new)]).astype(np.int32)), jnp.asarray([3], jnp.int32),
        sm_scale=D ** -0.5)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "tpu", reason="the Pallas kernel runs on TPU only")
def test_pallas_kernel_matches_reference_on_tpu():
    from rao_jax.sampling.paged_attention import pallas_paged_attention

    d, s = 128, 16  # the kernel's tiling wants a lane-sized head_dim
    lengths, new = [6, 0, 13], [2, 7, 1]
    pages, table, q, k, v, total = _setup(lengths, new, d=d, s=s)
    flat_q = jnp.asarray(np.concatenate([q[r][lengths[r]:] for r in range(3)]))
    row = jnp.asarray(np.repeat(np.arange(3), new).astype(np.int32))
    pos = jnp.asarray(np.concatenate([np.arange(lengths[r], total[r]) for r in range(3)]).astype(np.int32))
    ref = reference_paged_attention(flat_q, pages, jnp.asarray(table), row, pos, sm_scale=d ** -0.5)
    got = pallas_paged_attention(flat_q, pages, jnp.asarray(table), jnp.asarray(total, jnp.int32),
                                 jnp.asarray(np.concatenate([[0], np.cumsum(new)]).astype(np.int32)),
                                 jnp.asarray([3], jnp.int32), sm_scale=d ** -0.5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-3)


# group: one block per lax.map step / all blocks in one / 3, not a divisor of the 8 blocks; chunk:
# one page of keys per step (rows need 2-5 chunks) / three pages, which do not divide the table's
# 8 (its last chunk reads null-page columns) / the whole width in one. None: the backend default.
@pytest.mark.parametrize("group, chunk", [(1, 4), (64, 4), (64, 12), (3, 64), (64, 64), (None, 64)])
def test_block_prefill_attention_equals_the_per_token_reference(group, chunk):
    from rao_jax.sampling.paged_attention import reference_prefill_attention

    block = 4
    lengths, new = [6, 0, 13, 2], [2, 7, 1, 5]
    pages, table, q, k, v, total = _setup(lengths, new)
    # Each row's new tokens start a block; the gaps hold invalid padding tokens of the same row,
    # and two whole blocks of padding (row 0) end the buffer.
    flat_q, row, pos, valid = [], [], [], []
    for r in range(4):
        pad = -new[r] % block
        flat_q += [q[r][lengths[r]:], np.zeros((pad, HQ, D), np.float32)]
        row += [r] * (new[r] + pad)
        pos += list(range(lengths[r], total[r])) + [max(total[r] - 1, 0)] * pad
        valid += [True] * new[r] + [False] * pad
    flat_q.append(np.zeros((2 * block, HQ, D), np.float32))
    row, pos, valid = row + [0] * 2 * block, pos + [0] * 2 * block, valid + [False] * 2 * block
    args = [jnp.asarray(np.concatenate(flat_q)), jnp.asarray(np.array(row, np.int32)),
            jnp.asarray(np.array(pos, np.int32))]
    valid = np.array(valid)
    expected = reference_paged_attention(args[0], pages, jnp.asarray(table), args[1], args[2], sm_scale=0.35)
    got = jax.jit(lambda q, t, r, p: reference_prefill_attention(q, pages, t, r, p, block=block, sm_scale=0.35,
                                                                 group=group, chunk=chunk))(
        args[0], jnp.asarray(table), args[1], args[2])
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(expected)[valid], atol=1e-5)
    with pytest.raises(ValueError, match="multiple of the prefill block"):
        reference_prefill_attention(args[0][:-1], pages, jnp.asarray(table), args[1][:-1], args[2][:-1],
                                    block=block, sm_scale=0.35)


def test_decode_attention_over_the_gathered_context_equals_the_reference():
    """One decode step as the sampler runs it: the rows' context gathered from the pages before the
    step (the current token not yet in them), the token's key / value written into the context at
    its position, then attention over positions 0..pos of each row."""
    from rao_jax.sampling.paged_attention import (
        gather_decode_context,
        read_decode_context,
        reference_decode_attention,
        write_decode_context,
    )

    pos = [5, 12, 0, W * S - 1]  # the current token's position (the last row fills its pages)
    pages, table, q, k, v, total = _setup([p + 1 for p in pos], [0, 0, 0, 0])
    rows, page_rows = len(pos), np.asarray(table)
    # The pages before the step: every row's slot at `pos` still holds stale numbers.
    stale = pages.at[page_rows[np.arange(rows), np.array(pos) // S], np.array(pos) % S].set(7.0)
    k_rows, v_rows = gather_decode_context(stale, jnp.asarray(table))
    assert k_rows.shape == (rows, HK, D, W * S) and v_rows.shape == (rows, HK, W * S, D)
    k_new = jnp.asarray(np.stack([k[r][p] for r, p in enumerate(pos)]))
    v_new = jnp.asarray(np.stack([v[r][p] for r, p in enumerate(pos)]))
    pos_arr = jnp.asarray(pos, jnp.int32)
    k_rows, v_rows = write_decode_context(k_rows, v_rows, k_new, v_new, pos_arr)
    query = jnp.asarray(np.stack([q[r][p] for r, p in enumerate(pos)]))
    got = reference_decode_attention(query, k_rows, v_rows, pos_arr, sm_scale=0.35)
    expected = reference_paged_attention(query, pages, jnp.asarray(table), jnp.arange(rows, dtype=jnp.int32),
                                         pos_arr, sm_scale=0.35)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
    # Reading the context back gives the page layout (key head h at 2h, value head h at 2h + 1);
    # positions past the end repeat the last one.
    back = np.asarray(read_decode_context(k_rows, v_rows, pos_arr, 2))
    for r, p in enumerate(pos):
        np.testing.assert_array_equal(back[r, 0, 0::2], k[r][p])
        np.testing.assert_array_equal(back[r, 0, 1::2], v[r][p])
    np.testing.assert_array_equal(back[3, 1], back[3, 0])
    # A position past the context is dropped, not wrapped around.
    k_out, v_out = write_decode_context(k_rows, v_rows, k_new, v_new, jnp.full(rows, W * S, jnp.int32))
    np.testing.assert_array_equal(np.asarray(k_out), np.asarray(k_rows))
    np.testing.assert_array_equal(np.asarray(v_out), np.asarray(v_rows))


def test_the_kernel_call_splits_heads_over_a_replica_tensor_axis():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("sharded_kernel_check.py"))],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["diff"] <= 1e-5 and r["crossed_diff"] > 1e-2, r
    assert r["out_spec"] == "P(None, 'tensor', None)" and r["devices"] == 2
