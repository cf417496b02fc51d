"""End-to-end check of the foundation on CPU: tiny Qwen3 models train, checkpoint and export.

    python -m rao_jax.foundation_demo --out runs/foundation_demo

For each tiny model config (dense and MoE by default) it trains a few dozen next-token steps on
generated packed sequences (counting runs ``a, a+1, a+2, ...`` modulo the vocabulary, so the loss
must fall from ln(vocab) towards zero), writes Orbax checkpoints, exports the last one to a Hugging
Face folder, loads that folder back and checks the logits are unchanged: a one-minute smoke run of
the model, checkpoint and export layers (the main job is the CPU demo, ``configs/cpu_demo.py``). The
default model configs are read from the repository's ``configs/models``, so run it from a checkout.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from rao_jax.checkpoint.hf import load_pretrained, save_pretrained
from rao_jax.checkpoint.orbax_io import CheckpointStore, restore_model, save_model_checkpoint
from rao_jax.models import ModelConfig, Qwen3

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"
DEFAULT_CONFIGS = [CONFIG_DIR / "tiny_qwen3.json", CONFIG_DIR / "tiny_qwen3_moe.json"]


def counting_batch(rng: np.random.Generator, vocab: int, rows: int, row_len: int, seq_len: int):
    """Rows of packed counting sequences, with segment ids marking the packed sequences."""
    per_row = row_len // seq_len
    starts = rng.integers(0, vocab, (rows, per_row, 1))
    tokens = (starts + np.arange(seq_len)) % vocab
    segments = np.broadcast_to(np.arange(per_row)[None, :, None], tokens.shape)
    return (jnp.asarray(tokens.reshape(rows, -1), jnp.int32),
            jnp.asarray(segments.reshape(rows, -1), jnp.int32))


def next_token_loss(model: Qwen3, tokens, segments):
    """Mean next-token cross-entropy within each packed sequence, plus the scaled MoE aux loss."""
    out = model.forward(tokens, segment_ids=segments)
    logp = jax.nn.log_softmax(model.logits(out.hidden[:, :-1]))
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    same = (segments[:, 1:] == segments[:, :-1]).astype(jnp.float32)
    ce = jnp.sum(nll * same) / jnp.sum(same)
    return ce + model.cfg.router_aux_loss_coef * out.aux_loss, ce


@nnx.jit
def train_step(model: Qwen3, optimizer: nnx.Optimizer, tokens, segments):
    (_, ce), grads = nnx.value_and_grad(next_token_loss, has_aux=True)(model, tokens, segments)
    optimizer.update(model, grads)
    return ce


def run_one(config_path: Path, out: Path, steps: int, seed: int) -> dict:
    cfg = ModelConfig.from_json_file(config_path)
    name = config_path.stem
    model = Qwen3(cfg, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3, b1=0.9, b2=0.95), wrt=nnx.Param)
    rng = np.random.default_rng(seed)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    ckpt_dir = out / name / "checkpoints"
    losses = []
    start = time.perf_counter()
    with CheckpointStore(ckpt_dir, max_to_keep=2) as store:
        bar = tqdm(range(1, steps + 1), desc=f"{name} ({n_params / 1e6:.2f}M params)", unit="step")
        for step in bar:
            tokens, segments = counting_batch(rng, cfg.vocab_size, rows=8, row_len=64, seq_len=16)
            losses.append(float(train_step(model, optimizer, tokens, segments)))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step % max(steps // 2, 1) == 0:
                save_model_checkpoint(store, step, model, metadata={"loss": losses[-1]})
    train_s = time.perf_counter() - start

    restored, restored_cfg, info = restore_model(ckpt_dir)
    hf_dir = save_pretrained(restored, restored_cfg, out / name / "hf", dtype="float32")
    reloaded, _ = load_pretrained(hf_dir)
    tokens, segments = counting_batch(rng, cfg.vocab_size, rows=2, row_len=64, seq_len=16)
    forward = nnx.jit(lambda m, t, s: m(t, segment_ids=s))
    diff = float(jnp.max(jnp.abs(forward(model, tokens, segments) - forward(reloaded, tokens, segments))))
    return dict(model=name, params=n_params, first_loss=losses[0], last_loss=losses[-1],
                train_s=train_s, checkpoint_step=info.step, hf_dir=str(hf_dir), max_logit_diff=diff)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rao_jax.foundation_demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/foundation_demo", help="output folder")
    p.add_argument("--config", action="append", type=Path,
                   help="model config.json to train (repeatable; default: the two tiny configs)")
    p.add_argument("--steps", type=int, default=60, help="training steps per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="delete an existing non-empty --out first")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            p.error(f"{out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    if args.steps < 1:
        p.error("--steps must be at least 1")

    results = [run_one(path, out, args.steps, args.seed) for path in args.config or DEFAULT_CONFIGS]
    print(f"\n{'model':<16}{'params':>10}{'loss: first':>13}{'last':>8}{'train s':>9}{'export diff':>13}")
    ok = True
    for r in results:
        print(f"{r['model']:<16}{r['params']:>10,}{r['first_loss']:>13.3f}{r['last_loss']:>8.3f}"
              f"{r['train_s']:>9.1f}{r['max_logit_diff']:>13.2g}")
        ok &= r["max_logit_diff"] == 0.0 and r["last_loss"] < 0.25 * r["first_loss"]
    print(f"\nHugging Face exports: {', '.join(r['hf_dir'] for r in results)}")
    if not ok:
        print("FAILED: a model did not learn, or its export changed its logits", file=sys.stderr)
        return 1
    print("OK: every model learned, and checkpoint -> export -> reload kept its logits exactly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
