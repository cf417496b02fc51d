"""Rollout throughput per process of a local pod with 1 and with 2 processes, same work per process.

Each pod is ``python -m rao_jax.local_pod --processes P --devices-per-process 1`` running the real
trainer on configs/tiny_test.py (a random tiny policy, so trees are mostly one node) with the data
mesh over the P processes and ``2 x P`` tasks x 4 trees per step: every process rolls out 2 tasks x
4 trees per step on its own replica, whatever P is. From ``metrics.jsonl``: per RL step, trees per
process / the step's rollout seconds (the slowest process's). Prints the median over the steps after
the first (which compiles) and the 2-process / 1-process ratio. Each process gets the same CPU share
in both: the 1-process pod is pinned to one core (``os.sched_setaffinity``), the 2-process pod runs
on two, so the ratio shows what running as a pod costs each host's rollouts (nothing is
synchronised while rolling out), not two processes fighting over cores.

    python benchmarks/local_pod_rollout.py [--steps 12] [--budget 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_pod(processes: int, steps: int, budget: int, workdir: Path, cores: set[int]) -> list[float]:
    cmd = [sys.executable, "-m", "rao_jax.local_pod", f"--processes={processes}", "--devices-per-process=1",
           f"--log-dir={workdir / 'logs'}", "--", f"--config={ROOT / 'configs' / 'tiny_test.py'}",
           f"--config.workdir={workdir / 'run'}", "--noprogress", f"--config.mesh.data={processes}",
           f"--config.rollout.tasks_per_step={2 * processes}", "--config.rollout.group_size=4",
           f"--config.rollout.root_budget={budget}", "--config.rollout.max_new_tokens=32",
           f"--config.train.steps={steps}", "--config.train.checkpoint_every=1000", "--config.train.export_hf=false",
           "--config.eval.num_tasks=1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if out.returncode:
        raise SystemExit(f"pod of {processes} failed:\n{out.stderr[-3000:]}")
    records = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r["trees"] / processes / r["rollout_seconds"] for r in records if r["kind"] == "train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--budget", type=int, default=3, help="root step budget of each tree")
    args = parser.parse_args()
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        raise SystemExit("needs two cores (one per process of the 2-process pod)")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            cores = set(available[:processes])
            rates[processes] = run_pod(processes, args.steps, args.budget, Path(tmp) / f"pod{processes}", cores)[1:]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (one per process); "
          f"configs/tiny_test.py, 2 tasks x 4 trees per process per step, root budget {args.budget}, "
          f"{args.steps} RL steps (the first not counted)")
    for processes, values in rates.items():
        print(f"{processes} process(es): {statistics.median(values):6.2f} trees/s per process "
              f"(steps: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"2 processes / 1 process, per process: {statistics.median(rates[2]) / statistics.median(rates[1]):.2f}x")


if __name__ == "__main__":
    main()
