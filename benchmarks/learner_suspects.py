"""Where the learner step's time goes on a CPU, and what each candidate setting changes, one at a time.

    PYTHONPATH=. python benchmarks/learner_suspects.py [--rows 16] [--row-len 256] [--repeats 5]
        [--variants baseline,ynn_off,...]

Per variant, a fresh process (XLA flags are read once per process) builds the same model and batch as
``benchmarks/train_step_throughput.py`` and times, after a warm-up call of each, ``--repeats`` calls of:

- ``forward``:  the jitted token log-probs alone (``packing.token_logprobs``);
- ``grad``:     the jitted loss and gradient (``learner._accumulate``, one micro-batch);
- ``update``:   the optimizer update alone (``learner._apply``: clipping, AdamW; plus a copy of the
                gradients it donates);
- ``step``:     the whole ``learner.train_step``, host work included.

It prints each part's median milliseconds, and per variant the ratio of its step to the baseline's
(the first variant), which runs again last to show the machine's drift. Variants are XLA:CPU flags
(dot kernels, threading), glibc malloc's own defaults instead of ``rao_jax.host_memory``'s reuse
(``glibc_malloc``), and model settings (the causal block of the training attention, the
log-prob chunk). Every variant's first-step loss must equal the baseline's to 1e-4 (relative), or it
is reported as changing the computation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (extra XLA_FLAGS, settings applied in the child before tracing)
VARIANTS: dict[str, tuple[str, dict]] = {
    "baseline": ("", {}),
    "glibc_malloc": ("", {"env": {"RAO_HOST_MALLOC": "default"}}),
    "ynn_off": ("--xla_cpu_experimental_ynn_fusion_type=", {}),
    "ynn_all": ("--xla_cpu_experimental_ynn_fusion_type=individual_dot,dot,eltwise,reduce", {}),
    "onednn": ("--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true", {}),
    "xnn_dot": ("--xla_cpu_experimental_xnn_fusion_type=dot", {}),
    "eigen_single": ("--xla_cpu_multi_thread_eigen=false", {}),
    "concurrency_sched_off": ("--xla_cpu_enable_concurrency_optimized_scheduler=false", {}),
    "concurrency_sched_on": ("--xla_cpu_enable_concurrency_optimized_scheduler=true", {}),
    "dense_attention": ("", {"causal_block": None}),
    "causal_block_64": ("", {"causal_block": 64}),
    "causal_block_256": ("", {"causal_block": 256}),
    "one_logprob_chunk": ("", {"chunk": 0}),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default=str(ROOT / "configs/models/tiny_qwen3.json"))
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--row-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chunk", type=int, default=256, help="log-prob chunk of the baseline")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    return args


def child(args: argparse.Namespace) -> dict:
    """Runs in the variant's own process: builds, checks and times; returns the figures."""
    from rao_jax import host_memory

    host_memory.apply_default()   # the trainer's host malloc setting, unless the variant's env turns it off
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    jax.config.update("jax_platforms", "cpu")
    from benchmarks.train_step_throughput import make_batch
    from rao_jax.models import ModelConfig, attention_kernels
    from rao_jax.models.qwen3 import Qwen3
    from rao_jax.rl import learner
    from rao_jax.rl.losses import LossConfig
    from rao_jax.rl.packing import token_logprobs

    _, settings = VARIANTS[args.child]
    if "causal_block" in settings:
        attention_kernels.XLA_CAUSAL_BLOCK = settings["causal_block"]
    chunk = settings.get("chunk", args.chunk) or args.row_len
    cfg = ModelConfig.from_json_file(args.model_config)
    model = Qwen3(cfg, rngs=nnx.Rngs(0))
    optimizer = learner.make_optimizer(model, learner.OptimConfig())
    batch = learner.batch_arrays(make_batch(args.rows, args.row_len, cfg.vocab_size, 0))
    loss_cfg = LossConfig()

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    forward = jax.jit(lambda p: token_logprobs(nnx.merge(graphdef, p, rest), batch["tokens"], batch["positions"],
                                               batch["segment_ids"], batch["targets"], chunk=chunk))
    total = jnp.sum(batch["loss_mask"])
    one = jnp.float32(1.0)

    def grad():
        return learner._accumulate(graphdef, params, rest, learner._zero_accumulator(params), batch, total, one,
                                   cfg=loss_cfg, chunk=chunk)

    acc = grad()
    first_loss = float(acc["value"])

    def update():
        return learner._apply(model, optimizer, grad_copy(), total)

    def grad_copy():
        return jax.tree.map(jnp.copy, acc)

    def step():
        return learner.train_step(model, optimizer, batch, loss=loss_cfg, chunk=chunk)

    parts = {"forward": lambda: forward(params), "grad": grad, "update": update, "step": step}
    times: dict[str, float] = {}
    for name, fn in parts.items():
        jax.block_until_ready(fn())   # compile and warm up
        samples = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            samples.append(time.perf_counter() - start)
        times[name] = 1000 * statistics.median(samples)
    return {"variant": args.child, "loss": first_loss, "ms": times,
            "tokens_per_s": args.rows * args.row_len / (times["step"] / 1000), "jax": jax.__version__,
            "np": np.__version__}


def main() -> None:
    args = parse_args()
    if args.child is not None:
        print(json.dumps(child(args)))
        return
    names = args.variants.split(",")
    if names[0] != "baseline":
        names = ["baseline", *names]
    order = [*names, "baseline"]
    results = []
    for i, name in enumerate(order):
        flags, _ = VARIANTS[name]
        env = {**os.environ, **VARIANTS[name][1].get("env", {}), "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip(),
               "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        cmd = [sys.executable, __file__, "--child", name, "--model-config", args.model_config, "--rows",
               str(args.rows), "--row-len", str(args.row_len), "--repeats", str(args.repeats), "--chunk",
               str(args.chunk)]
        print(f"[{i + 1}/{len(order)}] {name} {flags}", file=sys.stderr, flush=True)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"{name}: failed ({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})")
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if not results or results[0]["variant"] != "baseline":
        raise SystemExit("the baseline did not run")
    base = results[0]
    print(f"batch {args.rows} x {args.row_len} tokens, {args.repeats} timed calls per part, jax {base['jax']}")
    print(f"{'variant':<18}{'forward':>9}{'grad':>9}{'update':>9}{'step':>9}{'tokens/s':>10}{'vs baseline':>13}"
          f"  loss check")
    for r in results:
        ms = r["ms"]
        same = abs(r["loss"] - base["loss"]) <= 1e-4 * max(abs(base["loss"]), 1e-12)
        print(f"{r['variant']:<18}{ms['forward']:>9.1f}{ms['grad']:>9.1f}{ms['update']:>9.1f}{ms['step']:>9.1f}"
              f"{r['tokens_per_s']:>10.0f}{base['ms']['step'] / ms['step']:>12.2f}x  "
              f"{'same' if same else 'DIFFERS: ' + format(r['loss'], '.7g')}")


if __name__ == "__main__":
    main()
