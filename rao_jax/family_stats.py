"""python -m rao_jax.family_stats [--wheel W] [--per-difficulty N]: the tables of docs/task_families.md.

Prints markdown: TextCraft-Synth task statistics (ours vs the official files when a wheel is given) and
the oracle table of every family, measured with the in-process scripted driver
(``rao_jax.agent.scripted_rollout``) under the budget rules of RAO_SPEC section 1.
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Iterable

from tqdm import tqdm

from rao_jax.agent.oracles import make_oracle
from rao_jax.agent.scripted_rollout import run_tree
from rao_jax.envs import chain_hop, labeled_rows, textcraft_official, textcraft_synth
from rao_jax.envs.base import Task
from rao_jax.envs.families import open_episode

DIFFICULTIES = ("easy", "medium", "hard", "extreme")


def _quantiles(values: list[int]) -> str:
    v = sorted(values)
    n = len(v)
    return " / ".join(str(v[min(n - 1, int(q * n))]) for q in (0.0, 0.25, 0.5, 0.75)) + f" / {v[-1]}"


def task_table(name: str, tasks: list[Task]) -> list[str]:
    by = collections.defaultdict(list)
    for task in tasks:
        by[task.difficulty].append(task)
    lines = [f"| {name} | difficulty | tasks | crafts per task (min / q25 / median / q75 / max) "
             "| target depth: tasks |", "|---|---|---|---|---|"]
    for difficulty in DIFFICULTIES:
        group = by.get(difficulty, [])
        if group:
            crafts = [len(t.spec["gold_plan"]) for t in group]
            depth = collections.Counter(t.spec.get("max_depth") for t in group)
            hist = ", ".join(f"{d}: {n}" for d, n in sorted(depth.items()))
            lines.append(f"| | {difficulty} | {len(group)} | {_quantiles(crafts)} | {hist} |")
    return lines


def oracle_rows(name: str, tasks: Iterable[Task], settings: list[tuple[str, bool, int | None, dict]],
                context: int | None) -> list[str]:
    """One row per (difficulty, setting): success, all-nodes success, calls, depth, parallel share, overflows."""
    stats: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0, 0, 0, 0, 0, 0, 0, 0])
    tasks = list(tasks)
    for task in tqdm(tasks, desc=name, file=sys.stderr):
        for label, recursive, budget, knobs in settings:
            nodes = run_tree(open_episode(task), make_oracle(task, recursive, **knobs),
                             budget or task.max_steps, recursive, context)
            row = stats[(task.difficulty, label)]
            row[0] += 1
            row[1] += nodes[0].success
            row[2] += all(n.success == 1.0 for n in nodes)
            row[3] += sum(n.steps for n in nodes)
            row[4] += max(n.depth for n in nodes)
            row[5] += any(n.overflow for n in nodes)
            row[6] += sum(n.launches for n in nodes)
            row[7] += sum(n.parallel_launches for n in nodes)
    lines = []
    order = {d: k for k, d in enumerate(dict.fromkeys(t.difficulty for t in tasks))}
    for (difficulty, label), r in sorted(stats.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        n = r[0]
        parallel = f"{r[7] / r[6]:.2f}" if r[6] else "-"
        lines.append(f"| {name} | {difficulty} | {label} | {int(n)} | {r[1] / n:.3f} | {r[2] / n:.3f} | "
                     f"{r[3] / n:.1f} | {r[4] / n:.1f} | {parallel} | {int(r[5])} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wheel", help="platoon-textcraft wheel or data folder (official rows)")
    parser.add_argument("--per-difficulty", type=int, default=150, help="our generated tasks per difficulty")
    parser.add_argument("--oracle-tasks", type=int, default=25, help="generated tasks per bucket in oracle runs")
    args = parser.parse_args(argv)
    out: list[str] = ["## TextCraft-Synth tasks", ""]
    config = textcraft_synth.SynthConfig.paper()
    ours = {s: list(textcraft_synth.generate_tasks(config, s, args.per_difficulty)) for s in ("train", "val")}
    files = textcraft_official.TaskFiles(args.wheel) if args.wheel else None
    for split in ("train", "val"):
        if files:
            out += task_table(f"official {split}", textcraft_official.load_synth_tasks(files, split)) + [""]
        out += task_table(f"ours {split} (seed 0)", ours[split]) + [""]
    paced = {"crafts_per_step": 1}
    craft_settings = [("flat, 1 craft/step, 75 steps", False, 75, paced),
                      ("flat, 4 crafts/step, 75 steps", False, 75, {}),
                      ("recursive, 4 crafts/step, 200 steps", True, 200, {})]
    head = ["| family | bucket | oracle | tasks | root success | all nodes succeed | model calls / tree | "
            "max depth | parallel launches | overflows |", "|---|---|---|---|---|---|---|---|---|---|"]
    out += ["## Oracles", ""] + head
    if files:
        out += oracle_rows("official synth val", textcraft_official.load_synth_tasks(files, "val"), craft_settings,
                           8192)
        out += oracle_rows("official minecraft val", textcraft_official.load_minecraft_tasks(files, "val"),
                           [("flat", False, None, {}), ("recursive", True, None, {})], 8192)
    gen_val = list(textcraft_synth.generate_tasks(config, "val", args.oracle_tasks))
    out += oracle_rows("ours synth val", gen_val, craft_settings, 8192)
    rows = []
    for multiple in (1, 2, 4, 8, 16, 32):
        cfg = labeled_rows.RowsConfig(context_multiple=float(multiple))
        rows += [labeled_rows.generate_task(cfg, "val", 1000 * multiple + i, difficulty=f"{multiple}x window")
                 for i in range(2 * len(labeled_rows.QUESTIONS))]
    both = [("flat", False, None, {}), ("recursive", True, None, {})]
    out += oracle_rows("labeled_rows (window 2048)", rows, both, 2048)
    hops = [chain_hop.generate_task(chain_hop.HopConfig(), "val", 100 * k + 10 * b + i, k, b)
            for k in (2, 3, 5, 8) for b in (1, 2) for i in range(args.oracle_tasks // 2)]
    out += oracle_rows("chain_hop (window 2048)", hops, both, 2048)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
