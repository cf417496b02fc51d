"""Training-attention kernels vs "xla": max abs difference (forward + gradients) and speed ratio.

A packed [4, 2048] batch (several segments per row), GQA 32 query / 8 key-value heads, head_dim 128,
bfloat16 (and float32 where the kernel takes it). Each available implementation on this backend
("splash" on TPU, "cudnn" on GPU) is compared with "xla"; on CPU only "xla" runs, on [1, 512].

    PYTHONPATH=. python3 benchmarks/attention_kernels.py [--batch 4 --seq 2048 --iters 20]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from rao_jax.models.attention import attention_mask
from rao_jax.models.attention_kernels import ATTN_IMPLS, check_attn_impl, training_attention


def packed_segments(b: int, t: int, per_row: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.zeros((b, t), np.int32)
    for r in range(b):
        for i, cut in enumerate(np.sort(rng.choice(np.arange(1, t), per_row - 1, replace=False))):
            rows[r, cut:] = i + 1
    return rows


def step_fn(impl: str, dtype):
    """Forward and input gradients under one jit; every array is an argument (no folded constants)."""

    @jax.jit
    def step(q, k, v, cot, segs):
        mask = attention_mask(segs) if impl == "xla" else None
        out, vjp = jax.vjp(lambda *a: training_attention(*a, impl=impl, dtype=dtype, mask=mask, segment_ids=segs),
                           q, k, v)
        return out, vjp(cot.astype(out.dtype))

    return step


def timed(fn, args, iters: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="default 4 (1 on CPU)")
    parser.add_argument("--seq", type=int, default=None, help="default 2048 (512 on CPU)")
    parser.add_argument("--q_heads", type=int, default=32)
    parser.add_argument("--kv_heads", type=int, default=8)
    parser.add_argument("--head_dim", type=int, default=128)
    parser.add_argument("--segments", type=int, default=6, help="segments packed into each row")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()

    backend = jax.default_backend()
    on_cpu = backend == "cpu"  # only "xla" runs there; a smaller batch keeps the run short
    args.batch = args.batch or (1 if on_cpu else 4)
    args.seq = args.seq or (512 if on_cpu else 2048)
    args.iters = min(args.iters, 2) if on_cpu else args.iters
    available = []
    for impl in ATTN_IMPLS:
        try:
            check_attn_impl(impl)
            available.append(impl)
        except ValueError as err:
            print(f"skip {impl}: {err}")
    print(f"backend={backend} device={jax.devices()[0].device_kind} batch=[{args.batch}, {args.seq}] "
          f"heads={args.q_heads}/{args.kv_heads} head_dim={args.head_dim} segments/row={args.segments}")

    b, t, d = args.batch, args.seq, args.head_dim
    rng = np.random.default_rng(0)
    base = [rng.standard_normal((b, t, h, d), np.float32) for h in (args.q_heads, args.kv_heads, args.kv_heads)]
    cot32 = rng.standard_normal((b, t, args.q_heads, d), np.float32)
    segs = jnp.asarray(packed_segments(b, t, args.segments))
    for dtype in (jnp.bfloat16, jnp.float32):
        qkv = [jnp.asarray(x, dtype) for x in base] + [jnp.asarray(cot32, dtype), segs]
        ref_step = step_fn("xla", dtype)
        ref_out, ref_grads = ref_step(*qkv)
        ref_time = timed(ref_step, qkv, args.iters)
        print(f"[{jnp.dtype(dtype).name}] xla: {ref_time * 1e3:.2f} ms per forward+backward")
        for impl in available:
            if impl == "xla":
                continue
            try:
                step = step_fn(impl, dtype)
                out, grads = step(*qkv)
                seconds = timed(step, qkv, args.iters)
            except (ValueError, NotImplementedError) as err:
                print(f"[{jnp.dtype(dtype).name}] {impl}: not run ({err})")
                continue
            diff = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref_out.astype(jnp.float32))))
            gdiff = [float(jnp.max(jnp.abs(g.astype(jnp.float32) - r.astype(jnp.float32))))
                     for g, r in zip(grads, ref_grads, strict=True)]
            gscale = [float(jnp.max(jnp.abs(r.astype(jnp.float32)))) for r in ref_grads]
            print(f"[{jnp.dtype(dtype).name}] {impl}: {seconds * 1e3:.2f} ms, speed vs xla {ref_time / seconds:.2f}x; "
                  f"max|out diff| {diff:.3e}; max|grad diff| dq {gdiff[0]:.3e} dk {gdiff[1]:.3e} dv {gdiff[2]:.3e} "
                  f"(grad max |dq| {gscale[0]:.2e} |dk| {gscale[1]:.2e} |dv| {gscale[2]:.2e})")


if __name__ == "__main__":
    main()
