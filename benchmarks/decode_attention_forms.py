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
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def _einsum_kdl(q, k, v):
    scores = jnp.einsum("bkgd,bkdl->bkgl", q, k)
    return jnp.einsum("bkgl,bkld->bkgd", jax.nn.softmax(scores, axis=-1), v)


def _einsum_kld(q, k, v):
    scores = jnp.einsum("bkgd,bkld->bkgl", q, k)
    return jnp.einsum("bkgl,bkld->bkgd", jax.nn.softmax(scores, axis=-1), v)


def _mul_sum(q, k, v):
    scores = (q[..., None] * k[:, :, None]).sum(axis=3)
    return (jax.nn.softmax(scores, axis=-1)[..., None] * v[:, :, None]).sum(axis=3)


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


if __name__ == "__main__":
    main()
