"""Generated tokens/s of the paged-KV engine against three peers, measured in one run.

    python benchmarks/sampler_throughput.py [--batch 64] [--new 128] [--rounds 2]

All four decode the same model (configs/models/tiny_qwen3.json, random weights) greedily from the
same batch of mixed-length prompts, for exactly ``--new`` tokens each:

- engine:       rao_jax.sampling.SamplingEngine (paged KV, ragged prefill, chunked decode; on a CPU
                in four concurrent row groups of similar lengths, ``--decode-groups``)
- dense_cache:  a plain JAX decode loop with an unpaged [layers, batch, max_len] KV cache, one jit
- no_cache:     the full training forward over the whole padded sequence at every step, one jit
- transformers: ``generate`` on the same weights (left-padded batch; torch on the CPU, or on
  ``--torch-device cuda`` when JAX runs on a GPU, so both sides use the same chip)

Every method is warmed up once (compilation excluded), then timed ``--rounds`` times in
interleaved order; the best round counts. Ratios are engine / peer.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rao_jax.checkpoint.hf import save_pretrained
from rao_jax.models import ModelConfig, Qwen3
from rao_jax.models.attention import attention_mask, dot_product_attention
from rao_jax.sampling import EngineConfig, SamplingEngine

ROOT = Path(__file__).resolve().parent.parent


def make_prompts(batch: int, vocab: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, int(n)).tolist() for n in rng.integers(lo, hi + 1, batch)]


# ------------------------------------------------------------------------------------------------
# Peer: dense unpaged cache


def dense_cache_decode(model: Qwen3, tokens, lengths, *, new: int, max_len: int):
    """Greedy decoding with a [batch, max_len] K/V cache per layer; returns i32[batch, new]."""
    cfg = model.cfg
    b, t = tokens.shape
    rows = jnp.arange(b)
    seg = jnp.where(jnp.arange(t)[None, :] < lengths[:, None], 0, 1)
    mask = attention_mask(seg) | (jnp.arange(t)[None, :, None] == jnp.arange(t)[None, None, :])
    shape = (b, max_len, cfg.num_key_value_heads, cfg.head_dim)
    caches = []
    x = model.embed_tokens(tokens)
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    for layer in model.layers:
        kept = []

        def attend(q, k, v, kept=kept):
            kept.append((jnp.zeros(shape, k.dtype).at[:, :t].set(k), jnp.zeros(shape, v.dtype).at[:, :t].set(v)))
            return dot_product_attention(q, k, v, mask, model.dtype)

        x, _ = layer.block(x, positions, jnp.ones((b, t)), attend)
        caches.append(kept[0])
    hidden = model.norm(x)[rows, lengths - 1]
    first = jnp.argmax(model.logits(hidden), axis=-1).astype(jnp.int32)

    def step(i, carry):
        caches, last, out = carry
        pos = lengths + i  # position of `last`
        x = model.embed_tokens(last)[:, None]
        new_caches = []
        for layer, (kc, vc) in zip(model.layers, caches, strict=True):
            box = []

            def attend(q, k, v, kc=kc, vc=vc, box=box):
                kc = kc.at[rows, pos].set(k[:, 0])
                vc = vc.at[rows, pos].set(v[:, 0])
                box.append((kc, vc))
                visible = (jnp.arange(max_len)[None, :] <= pos[:, None])[:, None, :]
                return dot_product_attention(q, kc, vc, visible, model.dtype)

            x, _ = layer.block(x, pos[:, None], jnp.ones((b, 1)), attend)
            new_caches.append(box[0])
        nxt = jnp.argmax(model.logits(model.norm(x)[:, 0]), axis=-1).astype(jnp.int32)
        return new_caches, nxt, out.at[:, i].set(last)

    _, _, out = jax.lax.fori_loop(0, new, step, (caches, first, jnp.zeros((b, new), jnp.int32)))
    return out


# ------------------------------------------------------------------------------------------------
# Peer: no cache at all


def no_cache_decode(model: Qwen3, tokens, lengths, *, new: int):
    """Greedy decoding re-running the full causal forward over the padded buffer at every step."""
    b = tokens.shape[0]
    rows = jnp.arange(b)

    def step(i, carry):
        buf, out = carry
        logits = model(buf)[rows, lengths + i - 1]
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return buf.at[rows, lengths + i].set(nxt), out.at[:, i].set(nxt)

    _, out = jax.lax.fori_loop(0, new, step, (tokens, jnp.zeros((b, new), jnp.int32)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/models/tiny_qwen3.json"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--min-prompt", type=int, default=16)
    p.add_argument("--max-prompt", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--decode-groups", type=int, default=None,
                   help="EngineConfig.decode_groups (default: 4 on a CPU backend, where one decode call uses one "
                        "core, else 1)")
    p.add_argument("--torch-device", default="cpu", help="where transformers runs: cpu (default) or cuda")
    p.add_argument("--methods", default="engine,dense_cache,no_cache,transformers",
                   help="comma-separated subset of: engine, dense_cache, no_cache, transformers")
    args = p.parse_args()

    cfg = ModelConfig.from_json_file(args.config)
    model = Qwen3(cfg, rngs=nnx.Rngs(0))
    prompts = make_prompts(args.batch, cfg.vocab_size, args.min_prompt, args.max_prompt)
    lengths = np.array([len(q) for q in prompts], np.int32)
    max_len = int(-(-(lengths.max() + args.new) // 64) * 64)
    padded = np.zeros((args.batch, max_len), np.int32)
    for i, q in enumerate(prompts):
        padded[i, : len(q)] = q
    generated = args.batch * args.new

    # One prefill call for the whole batch: each row's tokens start a block of the reference prefill
    # attention (EngineConfig.prefill_block, 16), so the call takes the lengths rounded up to 16.
    prefill_tokens = int((-(-lengths // 16) * 16).sum())
    groups = args.decode_groups or (4 if jax.default_backend() == "cpu" else 1)
    engine = SamplingEngine(model, EngineConfig(max_rows=args.batch, page_size=16, max_seq_len=max_len,
                                                num_pages=args.batch * max_len // 16 + 1, decode_steps=32,
                                                decode_groups=groups,
                                                max_prefill_tokens=max(max_len, prefill_tokens),
                                                min_prefill_bucket=256, prefill_buckets_per_octave=4,
                                                prefill_block=16))
    dense_fn = nnx.jit(dense_cache_decode, static_argnames=("new", "max_len"))
    naive_fn = nnx.jit(no_cache_decode, static_argnames=("new",))
    t_tokens, t_lengths = jnp.asarray(padded), jnp.asarray(lengths)

    def run_engine():
        return [o.tokens for o in engine.generate(prompts, max_new_tokens=args.new, temperature=0.0)]

    def run_dense():
        return np.asarray(dense_fn(model, t_tokens[:, : lengths.max()], t_lengths, new=args.new, max_len=max_len))

    def run_naive():
        return np.asarray(naive_fn(model, t_tokens, t_lengths, new=args.new))

    wanted = args.methods.split(",")
    methods = {"engine": run_engine, "dense_cache": run_dense, "no_cache": run_naive}
    if "transformers" in wanted:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(os.cpu_count() or 1)
        folder = Path(tempfile.mkdtemp()) / "hf"
        save_pretrained(model, cfg, folder, dtype="float32")
        hf = AutoModelForCausalLM.from_pretrained(folder).eval().to(args.torch_device)
        left = np.zeros((args.batch, lengths.max()), np.int64)
        attn = np.zeros_like(left)
        for i, q in enumerate(prompts):
            left[i, lengths.max() - len(q):] = q
            attn[i, lengths.max() - len(q):] = 1

        def run_hf():
            with torch.no_grad():
                out = hf.generate(torch.tensor(left, device=args.torch_device),
                                  attention_mask=torch.tensor(attn, device=args.torch_device), max_new_tokens=args.new,
                                  min_new_tokens=args.new, do_sample=False, eos_token_id=None, pad_token_id=0)
            return out[:, lengths.max():].cpu().numpy()  # .cpu() waits for the GPU

        methods["transformers"] = run_hf

    methods = {name: fn for name, fn in methods.items() if name in wanted}
    if "engine" not in methods:
        raise SystemExit("--methods must include engine (the ratios are relative to it)")
    outputs = {name: fn() for name, fn in methods.items()}  # warm-up: compile, allocate
    reference = np.array(outputs["engine"])
    print(f"engine device calls per batch: {engine.stats['prefill_calls']} prefill, "
          f"{engine.stats['decode_chunks']} decode chunks of {groups} row group(s): "
          f"{engine.stats['decode_calls']} decode calls")
    for name, out in outputs.items():
        agree = float((np.asarray(out) == reference).mean())
        print(f"warm-up {name:<13} token agreement with engine: {agree:.3f}")
    best = {name: float("inf") for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)

    print(f"\nbatch {args.batch}, prompts {args.min_prompt}-{args.max_prompt} tokens, {args.new} new tokens, "
          f"model {Path(args.config).name} ({sum(x.size for x in jax.tree.leaves(nnx.state(model))):,} params), "
          f"backend {jax.default_backend()}, transformers on {args.torch_device}, best of {args.rounds}")
    print(f"{'method':<14}{'seconds':>9}{'tokens/s':>11}{'engine speed-up':>17}")
    for name, seconds in best.items():
        print(f"{name:<14}{seconds:>9.2f}{generated / seconds:>11.0f}{seconds / best['engine']:>16.2f}x")


if __name__ == "__main__":
    main()
