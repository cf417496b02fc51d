"""Decode-step attention over a cached context, written three ways, timed against each other in one run.

    python benchmarks/decode_attention_forms.py [--batch 64] [--length 384] [--layers 4]

The sampler's reference decode attention (``rao_jax.sampling.paged_attention.reference_decode_attention``)
multiplies one query per row with keys laid out ``[b, k, d, l]`` and values ``[b, k, l, d]``. This
script asks whether another formulation of the same two products is faster on the current backend:

- ``einsum_kdl``: ``einsum`` with keys ``[b, k, d, l]`` (what the sampler does);
- ``einsum_kld``: ``einsum`` with keys ``[b, k, l, d]`` (the page layout, no transpose);
- ``mul_sum``: broadcast multiply and sum instead of a dot, keys ``[b, k, d, l]``.

Each runs ``--steps`` decode steps inside one ``fori_loop`` over ``--layers`` separate caches (so the
working set is that of a real model, not one layer's cache sitting in L2/L3). Shapes default to the
sampler benchmark's tiny model: 2 KV heads, 2 query heads per KV head, head dim 32, fp32. Prints ms per
layer-step and the ratio to ``einsum_kdl``; all three must agree numerically (checked first).

A second table times the start of a decode chunk: every row's keys and values gathered from a page
pool (``[pages, page_size, 2 * kv_heads, head_dim]``, keys and values interleaved) through a
shuffled page table into the layouts above, for ``--layers`` pools:

- ``split_then_gather``: keys and values split off the pool, then each gathered and laid out
  (``rao_jax.sampling.paged_attention.gather_decode_context``, what the sampler does);
- ``gather_then_split``: the interleaved pages gathered, then split and transposed (the sampler's
  form before 29f7eab).

The gathered context then goes through a two-step loop that writes one position per step, as in a
decode chunk, so its copy into the loop state is counted. Both must give identical arrays.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from rao_jax.sampling.paged_attention import gather_decode_context


def _einsum_kdl(q, k, v):
    scores = jnp.einsum("bkgd,bkdl->bkgl", q, k)
    return jnp.einsum("bkgl,bkld->bkgd", jax.nn.softmax(scores, axis=-1), v)


def _einsum_kld(q, k, v):
    scores = jnp.einsum("bkgd,bkld->bkgl", q, k)
    return jnp.einsum("bkgl,bkld->bkgd", jax.nn.softmax(scores, axis=-1), v)


def _mul_sum(q, k, v):
    scores = (q[..., None] * k[:, :, None]).sum(axis=3)
    return (jax.nn.softmax(scores, axis=-1)[..., None] * v[:, :, None]).sum(axis=3)


def _gather_then_split(pages, page_table):
    b, w = page_table.shape
    _, s, kk, d = pages.shape
    kv = pages[page_table].reshape(b, w * s, kk, d)
    return kv[:, :, 0::2].transpose(0, 2, 3, 1), kv[:, :, 1::2].transpose(0, 2, 1, 3)


GATHERS = {"split_then_gather": gather_decode_context, "gather_then_split": _gather_then_split}
FORMS = {"einsum_kdl": (_einsum_kdl, "kdl"), "einsum_kld": (_einsum_kld, "kld"), "mul_sum": (_mul_sum, "kdl")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=384, help="cached positions per row")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--group", type=int, default=2, help="query heads per KV head")
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    rng = np.random.default_rng(0)
    b, kv, g, d, length = args.batch, args.kv_heads, args.group, args.head_dim, args.length
    q = jnp.asarray(rng.normal(size=(b, kv, g, d)), jnp.float32)
    keys = [jnp.asarray(rng.normal(size=(b, kv, length, d)), jnp.float32) for _ in range(args.layers)]
    values = [jnp.asarray(rng.normal(size=(b, kv, length, d)), jnp.float32) for _ in range(args.layers)]
    layouts = {"kld": keys, "kdl": [jnp.swapaxes(k, 2, 3) for k in keys]}

    def looped(attend):
        @jax.jit
        def run(q, keys, values):
            def step(_, x):
                for k, v in zip(keys, values, strict=True):
                    x = x + 1e-3 * attend(x, k, v)  # each layer's output feeds the next, as in a model
                return x
            return jax.lax.fori_loop(0, args.steps, step, q)
        return run

    runs = {name: (looped(fn), layouts[layout]) for name, (fn, layout) in FORMS.items()}
    outputs = {name: np.asarray(fn(q, k, values)) for name, (fn, k) in runs.items()}  # compile + check
    for name, out in outputs.items():
        err = float(np.abs(out - outputs["einsum_kdl"]).max())
        if err > 1e-4:
            raise SystemExit(f"{name} disagrees with einsum_kdl by {err:.2e}")
    best = {name: float("inf") for name in runs}
    for _ in range(args.rounds):
        for name, (fn, k) in runs.items():
            start = time.perf_counter()
            fn(q, k, values).block_until_ready()
            best[name] = min(best[name], time.perf_counter() - start)
    mb = 2 * args.layers * b * kv * length * d * 4 / 2**20
    print(f"batch {b}, {kv} KV heads x {g} queries, head dim {d}, {length} cached positions, {args.layers} layers "
          f"({mb:.0f} MiB of K/V read per step), backend {jax.default_backend()}, best of {args.rounds}")
    print(f"{'form':<12}{'ms / layer-step':>17}{'vs einsum_kdl':>15}")
    per_step = {name: 1e3 * t / (args.steps * args.layers) for name, t in best.items()}
    for name, ms in per_step.items():
        print(f"{name:<12}{ms:>17.3f}{ms / per_step['einsum_kdl']:>14.2f}x")

    # Chunk start: gather every row's context from a shuffled page pool.
    page_size = 16
    width = -(-length // page_size)
    num_pages = b * width + 1
    pools = [jnp.asarray(rng.normal(size=(num_pages, page_size, 2 * kv, d)), jnp.float32) for _ in range(args.layers)]
    table = jnp.asarray(rng.permutation(np.arange(1, num_pages)).reshape(b, width), jnp.int32)

    def chunk_start(gather):
        @jax.jit
        def run(pools, table):
            context = tuple(gather(pages, table) for pages in pools)

            def step(i, context):  # one position written per step, as a decode chunk does
                return tuple((k.at[:, :, :, i].add(1.0), v.at[:, :, i].add(1.0)) for k, v in context)

            return jax.lax.fori_loop(0, 2, step, context)
        return run

    gathers = {name: chunk_start(fn) for name, fn in GATHERS.items()}
    results = {name: fn(pools, table) for name, fn in gathers.items()}
    expected = jax.tree.leaves(results["split_then_gather"])
    for name, out in results.items():
        if not all(np.array_equal(a, r) for a, r in zip(jax.tree.leaves(out), expected, strict=True)):
            raise SystemExit(f"{name} gathers a different context than split_then_gather")
    del results
    best = {name: float("inf") for name in gathers}
    for _ in range(args.rounds):
        for name, fn in gathers.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(pools, table))
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"\nchunk start: {b} rows x {width} pages of {page_size} tokens, {args.layers} layers ({mb:.0f} MiB of K/V "
          f"gathered), best of {args.rounds}")
    print(f"{'gather':<20}{'ms / chunk':>12}{'vs split_then_gather':>22}")
    for name, seconds in best.items():
        print(f"{name:<20}{1e3 * seconds:>12.1f}{seconds / best['split_then_gather']:>21.2f}x")


if __name__ == "__main__":
    main()
