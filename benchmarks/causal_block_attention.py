"""Training-step time with the xla attention's causal query blocks against the dense form, in one run.

    PYTHONPATH=. python benchmarks/causal_block_attention.py [--rows 8] [--row-len 1024] [--repeats 5]

Both sides run the same jitted step (forward, chunked token log-probs, token-mean negative log-likelihood,
backward, AdamW) of the same tiny Qwen3 (configs/models/tiny_qwen3.json with the CPU demo's 1024-piece
vocabulary) on the same batch of packed rows (segments of 150-700 tokens, as the demo's node
episodes). They differ only in ``rao_jax.models.attention_kernels.XLA_CAUSAL_BLOCK``: ``None`` is the
dense ``[t, t]`` form, the default (128) skips the query/key blocks above the diagonal. Before timing
the two steps' losses and gradient norms must agree (relative difference at most 1e-5), else the script
exits. Then ``--repeats`` rounds alternate one step of each; reported: the median seconds per side and
the median of the per-round ratios (dense / blocked).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rao_jax.models import ModelConfig, Qwen3, attention_kernels
from rao_jax.rl.packing import token_logprobs

ROOT = Path(__file__).resolve().parent.parent


def packed_batch(rows: int, row_len: int, vocab: int, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    segments = np.zeros((rows, row_len), np.int32)
    positions = np.zeros((rows, row_len), np.int32)
    for r in range(rows):
        start, seg = 0, 1
        while start < row_len - 50:
            length = min(int(rng.integers(150, 700)), row_len - start)
            segments[r, start:start + length] = seg
            positions[r, start:start + length] = np.arange(length)
            start, seg = start + length, seg + 1
    tokens = rng.integers(0, vocab, (rows, row_len)).astype(np.int32)
    return {"tokens": jnp.asarray(tokens), "positions": jnp.asarray(positions), "segment_ids": jnp.asarray(segments),
            "targets": jnp.asarray(np.roll(tokens, -1, axis=1)), "loss_mask": jnp.asarray((segments > 0), jnp.float32)}


def make_step(graphdef, tx):
    """A fresh jitted step (its own compilation cache, traced with the attention setting of its first call)."""
    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            logp = token_logprobs(nnx.merge(graphdef, p), batch["tokens"], batch["positions"], batch["segment_ids"],
                                  batch["targets"], chunk=512)
            return -jnp.sum(logp * batch["loss_mask"]) / jnp.sum(batch["loss_mask"])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default=str(ROOT / "configs/models/tiny_qwen3.json"))
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--row-len", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    raw = json.loads(Path(args.model_config).read_text()) | {"vocab_size": args.vocab}
    model = Qwen3(ModelConfig.from_hf_dict(raw), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)
    batch = packed_batch(args.rows, args.row_len, args.vocab)
    default_block = attention_kernels.XLA_CAUSAL_BLOCK

    steps, first = {}, {}
    for name, block in (("dense", None), ("blocked", default_block)):
        attention_kernels.XLA_CAUSAL_BLOCK = block  # read when the step is traced, i.e. on its first call
        steps[name] = make_step(graphdef, tx)
        start = time.perf_counter()
        out = jax.block_until_ready(steps[name](params, opt_state, batch))
        first[name] = (time.perf_counter() - start, float(out[2]), float(out[3]))
    attention_kernels.XLA_CAUSAL_BLOCK = default_block
    for name, (seconds, loss, norm) in first.items():
        print(f"{name:<8} first step (compile included) {seconds:6.1f} s  loss {loss:.6f}  grad norm {norm:.6f}")
    (_, loss_a, norm_a), (_, loss_b, norm_b) = first["dense"], first["blocked"]
    if abs(loss_a - loss_b) > 1e-5 * abs(loss_a) or abs(norm_a - norm_b) > 1e-5 * abs(norm_a):
        raise SystemExit("the two attention forms disagree: not timing them")

    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step(params, opt_state, batch))
            times[name].append(time.perf_counter() - start)
    ratios = [d / b for d, b in zip(times["dense"], times["blocked"], strict=True)]
    print(f"\n{args.rows} rows x {args.row_len} tokens, causal block {default_block}, backend {jax.default_backend()}, "
          f"{args.repeats} interleaved rounds")
    for name, ts in times.items():
        print(f"{name:<8} median {statistics.median(ts):6.2f} s per step")
    print(f"blocked speed-up (median of per-round dense / blocked): {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
