"""Training-step tokens/s of rao_jax's learner against a PyTorch / transformers step, in one run.

    PYTHONPATH=. python benchmarks/train_step_throughput.py [--rows 16] [--row-len 256]
        [--steps 3] [--repeats 5] [--model-config configs/models/tiny_qwen3.json]
        [--device cpu|cuda] [--dtype fp32|bf16] [--peers eager,compiled]

Both sides train the same weights on the same batch with the same objective and optimizer:

- jax:   ``rao_jax.rl.learner.train_step`` (one ``nnx.jit``: chunked token log-probs, CISPO
         token-mean loss, ``clip_by_global_norm(1.0)`` + ``optax.adamw``), micro_batches=1.
- torch: ``transformers.Qwen3ForCausalLM`` (random init, saved with ``save_pretrained`` and loaded
         into rao_jax with ``rao_jax.checkpoint.hf.load_pretrained``), full logits -> log_softmax ->
         gather, the same CISPO loss written in torch, ``clip_grad_norm_(1.0)`` + ``torch.optim.AdamW``
         with the same hyper-parameters (the paper's: lr 3e-6, betas 0.9 / 0.95, wd 0.017).

Every row holds one full-length sequence (one segment, no padding), so both sides compute exactly
the same tokens; the first quarter of each sequence is prompt (no loss). Before timing, the first
step's loss and pre-clip gradient norm of the two sides must agree (relative difference at most
1e-3 in fp32, 2e-2 in bf16), else the script exits: a ratio is only worth printing if it compares
the same computation.

Peers (``--peers``): ``eager`` (the model as loaded) and ``compiled`` (``torch.compile`` of it; left
out with the reason printed when it fails on the machine). Each peer is checked as above.

Timing: one warm-up step per side (the JAX one includes compilation, reported separately), then
``--repeats`` rounds that alternate ``--steps`` JAX steps and ``--steps`` steps of each peer, each
block timed to completion (``block_until_ready`` / ``torch.cuda.synchronize``). Reported: the median
tokens/s per side and, per peer, the ratio of the medians and the median of the per-round ratios
(jax / peer).
``--dtype bf16`` keeps float32 master weights and optimizer state on both sides and computes
matmuls in bfloat16 (rao_jax ``dtype=bfloat16``; torch ``autocast``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from rao_jax import host_memory

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = {"fp32": 1e-3, "bf16": 2e-2}
MAX_WEIGHT = 5.0  # CISPO's cap on the importance weight (RAO_SPEC section 4)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default=str(ROOT / "configs/models/tiny_qwen3.json"),
                   help="a Qwen3 (dense) config.json")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--row-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed block")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds of jax and torch blocks")
    p.add_argument("--chunk", type=int, default=256, help="positions per log-prob chunk on the JAX side")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--peers", default="eager,compiled",
                   help="torch peers, comma-separated: eager, compiled (torch.compile)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attn-impl", default="xla", choices=("xla", "splash", "cudnn"),
                   help="rao_jax training attention (cudnn: GPU, bf16; splash: TPU)")
    args = p.parse_args()
    args.peers = [x for x in args.peers.split(",") if x]
    if not args.peers or set(args.peers) - {"eager", "compiled"}:
        p.error(f"--peers takes eager and / or compiled, got {args.peers}")
    if args.rows < 1 or args.row_len < 8 or args.steps < 1 or args.repeats < 1:
        p.error("need --rows >= 1, --row-len >= 8, --steps >= 1, --repeats >= 1")
    if args.row_len % min(args.chunk, args.row_len):
        p.error(f"--row-len {args.row_len} must be a multiple of --chunk {args.chunk}")
    return args


def select_backends(device: str):
    """Imports jax and torch pinned to ``device``; exits with a clear message if it is missing.

    Before either starts a thread: ``host_memory.apply_default`` (the trainer's malloc setting on a
    CPU-only JAX), which then holds for both sides of the comparison, one process.
    """
    if device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    host_memory.apply_default()
    if device == "cuda":
        # Both frameworks share one GPU: keep jax from preallocating the 75% it takes by default.
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
    import jax

    if device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    elif jax.default_backend() != "gpu":
        raise SystemExit(f"--device cuda asked for, but jax's default backend is {jax.default_backend()!r} "
                         f"(devices: {jax.devices()}); install a CUDA build of jax (jax[cuda12] / jax[cuda13])")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}); install a CUDA build of torch")
    try:
        import transformers
    except ImportError:
        raise SystemExit("the torch peer needs transformers (pip install transformers)") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return jax, torch


def make_batch(rows: int, row_len: int, vocab: int, seed: int):
    """``rows`` full-length sequences packed one per row (segment 1 everywhere, no padding)."""
    from rao_jax.rl.packing import NodeSequence, pack_sequences

    rng = np.random.default_rng(seed)
    prompt = row_len // 4
    sequences = []
    for _ in range(rows):
        mask = np.zeros(row_len, np.float32)
        mask[prompt:] = 1.0
        # Near a random model's log-prob (-log vocab), so importance weights spread around 1 and a few clip.
        behaviour = np.where(mask > 0, -np.log(vocab) + rng.normal(0.0, 0.5, row_len), 0.0).astype(np.float32)
        sequences.append(NodeSequence(tokens=rng.integers(0, vocab, row_len).astype(np.int32), loss_mask=mask,
                                      behaviour_logp=behaviour, advantage=float(rng.uniform(0.25, 1.5))))
    packed = pack_sequences(sequences, row_len, num_rows=rows)
    assert (packed.segment_ids == 1).all(), "every row must hold exactly one full-length sequence"
    return packed


def make_weights(config_path: str, folder: Path, seed: int) -> Path:
    """A transformers Qwen3 with random weights from ``config_path``, saved in fp32; returns its folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads(Path(config_path).read_text())
    if raw.get("model_type") != "qwen3":
        raise SystemExit(f"{config_path}: model_type {raw.get('model_type')!r}; this benchmark takes a dense qwen3")
    src = folder / "config"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(raw))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src)).float()
    out = folder / "hf"
    model.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------------
# Torch side


class TorchStep:
    """One CISPO training step in PyTorch, mirroring ``rao_jax.rl.learner.train_step``."""

    def __init__(self, torch, folder: Path, batch, *, device: str, dtype: str, compile_model: bool, opt):
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(folder).float().to(device).train()
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2),
                                           weight_decay=opt.weight_decay, eps=1e-8, fused=device == "cuda")
        self.grad_clip = opt.grad_clip
        self.autocast_dtype = torch.bfloat16 if dtype == "bf16" else None

        def put(x, kind):
            return torch.as_tensor(np.asarray(x), dtype=kind, device=device)

        self.tokens = put(batch.tokens, torch.long)
        self.positions = put(batch.positions, torch.long)
        self.targets = put(batch.targets, torch.long)
        self.mask = put(batch.loss_mask, torch.float32)
        self.behaviour = put(batch.behaviour_logp, torch.float32)
        self.advantage = put(batch.advantage, torch.float32)

    def loss(self):
        torch = self.torch
        with torch.autocast(self.device, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            logits = self.forward(input_ids=self.tokens, position_ids=self.positions, use_cache=False).logits
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, self.targets[..., None])[..., 0]
        weight = torch.clamp(torch.exp(logp - self.behaviour), 0.0, MAX_WEIGHT).detach()
        return -torch.sum(weight * self.advantage * logp * self.mask) / torch.clamp(self.mask.sum(), min=1.0)

    def __call__(self):
        """One update; returns the loss and the pre-clip gradient norm as tensors (no host sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        value = self.loss()
        value.backward()
        norm = self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return value.detach(), norm

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------


def relative_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def main() -> None:
    args = parse_args()
    jax, torch = select_backends(args.device)
    import jax.numpy as jnp
    from flax import nnx

    from rao_jax.checkpoint.hf import load_pretrained
    from rao_jax.models import ModelConfig
    from rao_jax.rl.learner import OptimConfig, batch_arrays, make_optimizer, train_step

    cfg = ModelConfig.from_json_file(args.model_config)
    batch = make_batch(args.rows, args.row_len, cfg.vocab_size, args.seed)
    opt = OptimConfig()
    step_tokens = args.rows * args.row_len
    chunk = min(args.chunk, args.row_len)

    with tempfile.TemporaryDirectory(prefix="train_step_bench_") as tmp:
        folder = make_weights(args.model_config, Path(tmp), args.seed)
        compute = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
        model, _ = load_pretrained(folder, dtype=compute, param_dtype=jnp.float32, attn_impl=args.attn_impl)
        peers = {name: TorchStep(torch, folder, batch, device=args.device, dtype=args.dtype,
                                 compile_model=name == "compiled", opt=opt) for name in args.peers}
    optimizer = make_optimizer(model, opt)
    arrays = batch_arrays(batch)
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    def jax_block(steps: int):
        out = None
        for _ in range(steps):
            out = train_step(model, optimizer, arrays, loss="cispo", micro_batches=1, chunk=chunk)
        jax.block_until_ready((out, nnx.state(model, nnx.Param)))
        return out

    def peer_block(peer: TorchStep):
        def block(steps: int):
            out = None
            for _ in range(steps):
                out = peer()
            peer.sync()
            return out
        return block

    print(f"model {Path(args.model_config).name}: {params:,} params; batch {args.rows} rows x {args.row_len} tokens; "
          f"dtype {args.dtype}; attn {args.attn_impl}; jax {jax.__version__} ({jax.default_backend()}: "
          f"{jax.devices()[0].device_kind}), torch {torch.__version__} ({args.device}); host malloc "
          f"{'reuse' if host_memory.applied else 'glibc default'} (both sides: one process)")
    # First step of each side from identical weights: the compile time and the agreement check.
    start = time.perf_counter()
    jax_out = jax_block(1)
    first = {"jax": time.perf_counter() - start}
    blocks = {"jax": jax_block}
    for name, peer in peers.items():
        start = time.perf_counter()
        try:
            peer_loss, peer_norm = peer_block(peer)(1)
        except Exception as err:  # torch.compile needs a working C++ toolchain; say why it is left out
            print(f"peer {name}: left out, its first step failed: {type(err).__name__}: {str(err)[:200]}")
            continue
        first[name] = time.perf_counter() - start
        for what, a, b in (("loss", float(jax_out["loss"]), float(peer_loss)),
                           ("grad norm", float(jax_out["grad_norm"]), float(peer_norm))):
            diff = relative_diff(a, b)
            print(f"first step {what:<9}  jax {a:.7g}  {name} {b:.7g}  relative diff {diff:.2e}")
            if diff > TOLERANCE[args.dtype]:
                raise SystemExit(f"jax and the {name} peer disagree on the first step's {what} (tolerance "
                                 f"{TOLERANCE[args.dtype]:.0e}): not the same computation; no timing")
        blocks[f"torch {name}"] = peer_block(peer)
    if len(blocks) == 1:
        raise SystemExit("no torch peer ran: nothing to compare with")
    print("first call (s): " + ", ".join(f"{name} {t:.2f}" for name, t in first.items()))

    for block in blocks.values():   # a second warm-up: torch.compile may recompile on its second call
        block(1)
    rates: dict[str, list[float]] = {name: [] for name in blocks}
    for _ in range(args.repeats):
        for name, block in blocks.items():
            start = time.perf_counter()
            block(args.steps)
            rates[name].append(args.steps * step_tokens / (time.perf_counter() - start))

    print(f"\n{args.repeats} rounds x {args.steps} steps per side, interleaved; tokens/s per round:")
    for name, values in rates.items():
        print(f"  {name:<15}" + "".join(f"{v:>10.0f}" for v in values))
    print(f"\n{'side':<17}{'median tokens/s':>16}{'ms/step':>10}{'min':>10}{'max':>10}")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"{name:<17}{med:>16.0f}{1000 * step_tokens / med:>10.1f}{min(values):>10.0f}{max(values):>10.0f}")
    jax_median = statistics.median(rates["jax"])
    print()
    for name in list(rates)[1:]:
        paired = statistics.median(j / t for j, t in zip(rates["jax"], rates[name], strict=True))
        print(f"jax / {name}: {jax_median / statistics.median(rates[name]):.2f}x (ratio of medians), "
              f"{paired:.2f}x (median of per-round ratios)")
    print(f"jax compile: {first['jax']:.2f} s for the first call, about "
          f"{max(first['jax'] - step_tokens / jax_median, 0.0):.2f} s of it compilation")


if __name__ == "__main__":
    main()
