"""Plots and a Markdown results table from the workdirs of CPU-demo training runs.

    python -m rao_jax.report --runs runs/rec_s0 runs/rec_s1 runs/flat_s0 [--oracle oracle.json] --out report/

Each ``--runs`` folder is a workdir written by ``python -m rao_jax.train``: ``config.json``, ``metrics.jsonl``
and ``eval/step_<N>.json``. A run is *recursive* when its eval JSON has a ``"recursive"`` key, *flat* otherwise
(a recursive run also evaluates flat mode; that figure is not used as the flat baseline). For each run, "before
RL" is the eval at step ``sft.steps`` (the end of the warm start; the first eval when there is none at that step)
and "after RL" the eval at the last step. A run with a single eval has no distinct before-RL result: its before-RL
cells read ``—`` (bars are missing) and it gives no RL gain. ``--oracle`` takes the JSON written by
``python -m rao_jax.evaluate --modes oracle --out FILE``.

The command writes into ``--out``:

- ``learning_curves.png``: warm-start loss per step (left) and RL rollout success per RL step with its moving
  average and the eval success points (right), one colour per run;
- ``success_by_depth.png``: success per difficulty, flat before RL (when a flat run has a distinct before-RL
  eval), flat after RL, recursive before / after RL and the oracle, with 95% intervals (one run) or the min / max
  over seeds; difficulties deeper than trained are shaded;
- ``results.md``: the success table (see :func:`success_table`: flat and recursive, each before and after RL), the
  acceptance figures (see :func:`acceptance`: per seed with 95% intervals of the differences, their mean and
  their spread max - min over seeds, including recursive after RL minus the better of flat before / after RL,
  since the flat baseline can collapse under RL) and the run folders with their seeds;

and prints the table. In Python::

    from rao_jax import report
    runs = [report.load_run(d) for d in dirs]
    rec = [r for r in runs if r.mode == "recursive"]; flat = [r for r in runs if r.mode == "flat"]
    print(report.success_table(rec, flat, oracle="oracle.json"))
    report.write_run_report("runs/rec_s0")  # one run, into runs/rec_s0/report/

With several seeds of one mode a cell reads ``mean (seed_a / seed_b / ...)``, seeds in increasing order; with one
run it reads ``success [ci_lo, ci_hi]``. Differences are in points (100 x success). A recursive - flat difference
pairs each recursive seed with the flat run of the same seed when there is one, else with the flat mean.
matplotlib (Agg backend) is imported only by the plotting functions.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rao_jax.metrics import difference_interval
from rao_jax.paths import as_path, staged

MODES = ("recursive", "flat")
_STEP_FILE = re.compile(r"^step_(\d+)\.json$")
_MISSING = "—"

OracleLike = Mapping[str, float] | str | Path | None


@dataclass
class Run:
    """One training run's workdir, loaded."""

    workdir: Path
    mode: str  # "recursive" or "flat"
    seed: int
    sft_steps: int
    rl_steps: int
    train_difficulties: list[str]
    eval_temperature: float | None
    evals: dict[int, dict[str, Any]]  # step -> {mode: {"all": bucket, "by_difficulty": {...}, ...}}
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.mode} seed {self.seed}"

    @property
    def before_step(self) -> int:
        return self.sft_steps if self.sft_steps in self.evals else min(self.evals)

    @property
    def after_step(self) -> int:
        return max(self.evals)

    def result(self, step: int, mode: str | None = None) -> dict[str, Any]:
        """The eval result of ``mode`` (default: the run's own) at ``step``."""
        return self.evals[step][mode or self.mode]

    @property
    def has_before(self) -> bool:
        """Whether the run has a before-RL eval distinct from its after-RL one (False with a single eval)."""
        return self.before_step != self.after_step

    @property
    def before(self) -> dict[str, Any]:
        """The eval result at :attr:`before_step` (the after-RL one when not :attr:`has_before`; see :func:`_phase`)."""
        return self.result(self.before_step)

    @property
    def after(self) -> dict[str, Any]:
        return self.result(self.after_step)

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.metrics if r.get("kind") == kind]

    def difficulties(self) -> list[str]:
        """Difficulties in the run's evals, in their order of appearance."""
        out: list[str] = []
        for step in sorted(self.evals):
            for d in self.evals[step].get(self.mode, {}).get("by_difficulty", {}):
                if d not in out:
                    out.append(d)
        return out


def _phase(run: Run, which: str) -> dict[str, Any] | None:
    """The run's own eval result ``"before"`` or ``"after"`` RL; None for "before" when the run has no distinct
    before-RL eval (see :attr:`Run.has_before`). Every figure of this module reads results through this."""
    if which == "before":
        return run.before if run.has_before else None
    if which == "after":
        return run.after
    raise ValueError(f"which must be 'before' or 'after', got {which!r}")


def _get(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def load_run(workdir: str | Path) -> Run:
    """Loads ``config.json``, ``metrics.jsonl`` and every ``eval/step_<N>.json`` of a training workdir.

    Raises ValueError (naming the path) when the workdir has no metrics.jsonl, no config.json or no eval results.
    """
    workdir = as_path(workdir)
    metrics_path = workdir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise ValueError(f"{workdir}: no metrics.jsonl (not a training workdir?)")
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{workdir}: no config.json")
    config = json.loads(config_path.read_text())
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    evals: dict[int, dict[str, Any]] = {}
    eval_dir = workdir / "eval"
    if eval_dir.is_dir():
        for path in eval_dir.iterdir():
            match = _STEP_FILE.match(path.name)
            if match and path.is_file():
                evals[int(match.group(1))] = json.loads(path.read_text())
    if not evals:
        raise ValueError(f"{workdir}: no eval results ({eval_dir}/step_<N>.json)")
    keys = set().union(*(set(e) for e in evals.values()))
    mode = next((m for m in MODES if m in keys), None)
    if mode is None:
        raise ValueError(f"{workdir}: eval results have neither a 'recursive' nor a 'flat' key (found {sorted(keys)})")
    evals = {step: e for step, e in evals.items() if mode in e}
    return Run(
        workdir=workdir,
        mode=mode,
        seed=int(_get(config, "seed", 0)),
        sft_steps=int(_get(config, "sft.steps", 0) or 0),
        rl_steps=int(_get(config, "train.steps", 0) or 0),
        train_difficulties=list(_get(config, "data.train_difficulties", []) or []),
        eval_temperature=_get(config, "eval.temperature"),
        evals=evals,
        metrics=metrics,
    )


def load_oracle(path: str | Path) -> dict[str, float]:
    """Oracle success per difficulty (and ``"all"``) from an eval JSON with an ``"oracle"`` mode key."""
    path = as_path(path)
    data = json.loads(path.read_text())
    if "oracle" not in data:
        raise ValueError(f"{path}: no 'oracle' key (found {sorted(data)})")
    out = {d: float(b["success"]) for d, b in data["oracle"].get("by_difficulty", {}).items()}
    if "all" in data["oracle"]:
        out["all"] = float(data["oracle"]["all"]["success"])
    return out


def _oracle_map(oracle: OracleLike) -> dict[str, float] | None:
    if oracle is None:
        return None
    if isinstance(oracle, str | Path):
        return load_oracle(oracle)
    return {k: float(v) for k, v in oracle.items()}


# ---------------------------------------------------------------------------------------------------------------
# Figures


def _bucket(result: Mapping[str, Any], difficulty: str) -> dict[str, Any] | None:
    if difficulty == "all":
        return result.get("all")
    return result.get("by_difficulty", {}).get(difficulty)


def _success(result: Mapping[str, Any] | None, difficulty: str) -> float | None:
    if result is None:
        return None
    bucket = _bucket(result, difficulty)
    return None if bucket is None or bucket.get("success") is None else float(bucket["success"])


def _by_seed(runs: Sequence[Run]) -> list[Run]:
    seeds = [r.seed for r in runs]
    dup = {s for s in seeds if seeds.count(s) > 1}
    if dup:
        names = [str(r.workdir) for r in runs if r.seed in dup]
        raise ValueError(f"several {runs[0].mode} runs with seed(s) {sorted(dup)}: {names}")
    return sorted(runs, key=lambda r: r.seed)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _all_difficulties(runs: Sequence[Run], oracle: Mapping[str, float] | None = None) -> list[str]:
    out: list[str] = []
    for run in runs:
        out.extend(d for d in run.difficulties() if d not in out)
    if oracle:
        out.extend(d for d in oracle if d != "all" and d not in out)
    return out


def _trained(recursive_runs: Sequence[Run], flat_runs: Sequence[Run]) -> set[str]:
    """Trained difficulties (union over the recursive runs, else the flat ones); empty means all."""
    runs = recursive_runs or flat_runs
    return set().union(*(set(r.train_difficulties) for r in runs)) if runs else set()


def _deeper(difficulties: Sequence[str], trained: set[str]) -> list[str]:
    return [d for d in difficulties if trained and d not in trained]


def _pooled_success(result: Mapping[str, Any] | None, difficulties: Sequence[str]) -> tuple[float, int] | None:
    """Success over several difficulties pooled by tree counts, and the pooled tree count."""
    if result is None:
        return None
    hits, trees = 0.0, 0
    for d in difficulties:
        bucket = _bucket(result, d)
        if bucket is None:
            continue
        hits += float(bucket["success"]) * int(bucket["trees"])
        trees += int(bucket["trees"])
    return (hits / trees, trees) if trees else None


def _flat_partner(seed: int, flat_values: Mapping[int, float]) -> float | None:
    """The flat figure a recursive seed is compared with: the same seed's, else the mean over flat seeds."""
    if not flat_values:
        return None
    return flat_values[seed] if seed in flat_values else _mean(list(flat_values.values()))


# ---------------------------------------------------------------------------------------------------------------
# Table


def _fmt_success_cell(runs: Sequence[Run], difficulty: str, which: str) -> str:
    results = [(r, _phase(r, which)) for r in runs]
    values = [(r, res, _success(res, difficulty)) for r, res in results]
    values = [(r, res, v) for r, res, v in values if v is not None]
    if not values:
        return _MISSING
    if len(values) == 1:
        _, res, v = values[0]
        ci = (_bucket(res, difficulty) or {}).get("success_ci95")
        return f"{v:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v:.2f}"
    per_seed = " / ".join(f"{v:.2f}" for _, _, v in values)
    return f"{_mean([v for _, _, v in values]):.2f} ({per_seed})"


def _fmt_points(values: Sequence[float]) -> str:
    if not values:
        return _MISSING
    if len(values) == 1:
        return f"{values[0]:+.1f}"
    return f"{_mean(values):+.1f} ({' / '.join(f'{v:+.1f}' for v in values)})"


def _gains(runs: Sequence[Run], difficulty: str) -> list[float]:
    """RL gain (after - before, points) of each run with a distinct before-RL eval and both values."""
    out = []
    for r in runs:
        before, after = _success(_phase(r, "before"), difficulty), _success(_phase(r, "after"), difficulty)
        if before is not None and after is not None:
            out.append(100.0 * (after - before))
    return out


def _rec_minus_flat(recursive_runs: Sequence[Run], flat_runs: Sequence[Run], difficulty: str) -> list[float]:
    flat_values = {r.seed: v for r in flat_runs if (v := _success(r.after, difficulty)) is not None}
    out = []
    for r in recursive_runs:
        rec, flat = _success(r.after, difficulty), _flat_partner(r.seed, flat_values)
        if rec is not None and flat is not None:
            out.append(100.0 * (rec - flat))
    return out


def success_table(recursive_runs: Sequence[Run], flat_runs: Sequence[Run], oracle: OracleLike = None) -> str:
    """Markdown table of held-out success per difficulty (and "all"): flat before RL, flat after RL, recursive
    before / after RL, the recursive RL gain (after - before, points), recursive after RL - flat after RL (points)
    and the oracle when given. A before-RL cell leaves out the runs with a single eval (``—`` when none is left);
    the flat before-RL column matters because the flat baseline can do worse after RL than after its warm start.

    ``oracle``: a mapping difficulty -> success or the path of an oracle eval JSON (see :func:`load_oracle`).
    """
    recursive_runs, flat_runs = _by_seed(recursive_runs), _by_seed(flat_runs)
    oracle_map = _oracle_map(oracle)
    difficulties = _all_difficulties([*recursive_runs, *flat_runs], oracle_map)
    trained = _trained(recursive_runs, flat_runs)
    header = [
        "difficulty",
        "flat before RL",
        "flat (after RL)",
        "recursive before RL",
        "recursive after RL",
        "RL gain (pts)",
        "recursive - flat (pts)",
    ]
    if oracle_map is not None:
        header.append("oracle")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for d in [*difficulties, "all"]:
        name = f"{d} (deeper than trained)" if d in _deeper(difficulties, trained) else d
        row = [
            name,
            _fmt_success_cell(flat_runs, d, "before"),
            _fmt_success_cell(flat_runs, d, "after"),
            _fmt_success_cell(recursive_runs, d, "before"),
            _fmt_success_cell(recursive_runs, d, "after"),
            _fmt_points(_gains(recursive_runs, d)),
            _fmt_points(_rec_minus_flat(recursive_runs, flat_runs, d)),
        ]
        if oracle_map is not None:
            row.append(f"{oracle_map[d]:.2f}" if d in oracle_map else _MISSING)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


ACCEPTANCE_KEYS = ("rl_gain_points", "rec_minus_flat_deeper_points", "rec_minus_best_flat_deeper_points",
                   "held_out_trees")


def acceptance(recursive_runs: Sequence[Run], flat_runs: Sequence[Run]) -> dict[str, Any]:
    """The acceptance figures, per recursive seed, as the mean over seeds and as the spread over seeds.

    Returns ``{"deeper_difficulties": [...], "per_seed": {seed: figures}, "mean": figures, "spread": figures}``
    where figures are

    - ``rl_gain_points``: recursive after - before RL on all held-out tasks, points (None for a run with a single
      eval);
    - ``rec_minus_flat_deeper_points``: recursive after RL - flat after RL on the untrained difficulties pooled by
      tree counts, points (None without flat runs or untrained difficulties);
    - ``rec_minus_best_flat_deeper_points``: the same, but minus the better of the flat run's pooled deeper success
      before RL and after RL (its after-RL value when it has no distinct before-RL eval), since the flat baseline
      can collapse under RL;
    - ``held_out_trees``: trees in the recursive run's last eval;
    - ``rl_gain_ci95`` and ``rec_minus_flat_deeper_ci95``: 95% intervals of the first two figures, in points
      (Newcombe's interval for a difference of proportions, which treats the two evaluations as independent
      samples and so is conservative for evaluations on the same tasks); the second only when the flat partner
      is one run (the same seed's), else None.

    The flat partner of a recursive seed is the flat run of the same seed, else the mean over the flat seeds (for
    the best-flat figure, the mean of each flat seed's better value). ``"mean"`` averages the seeds with a value
    (None when none has one); ``"spread"`` is max - min over the seeds with a value (None with fewer than two).
    """
    recursive_runs, flat_runs = _by_seed(recursive_runs), _by_seed(flat_runs)
    difficulties = _all_difficulties([*recursive_runs, *flat_runs])
    deeper = _deeper(difficulties, _trained(recursive_runs, flat_runs))
    flat_after: dict[int, float] = {}
    flat_after_trees: dict[int, int] = {}
    flat_best: dict[int, float] = {}
    for r in flat_runs:
        before, after = _pooled_success(_phase(r, "before"), deeper), _pooled_success(_phase(r, "after"), deeper)
        if after is not None:
            flat_after[r.seed], flat_after_trees[r.seed] = after
        candidates = [p[0] for p in (before, after) if p is not None]  # before is None without a distinct eval
        if candidates:
            flat_best[r.seed] = max(candidates)
    per_seed: dict[int, dict[str, Any]] = {}
    for r in recursive_runs:
        before, after = _success(_phase(r, "before"), "all"), _success(_phase(r, "after"), "all")
        rec_pooled = _pooled_success(_phase(r, "after"), deeper)
        flat, best_flat = _flat_partner(r.seed, flat_after), _flat_partner(r.seed, flat_best)
        gain_ci = deeper_ci = None
        if before is not None and after is not None:
            gain_ci = _points_interval(after, _trees(_phase(r, "after")), before, _trees(_phase(r, "before")))
        if rec_pooled is not None and r.seed in flat_after:
            deeper_ci = _points_interval(*rec_pooled, flat_after[r.seed], flat_after_trees[r.seed])
        per_seed[r.seed] = {
            "rl_gain_points": None if before is None or after is None else 100.0 * (after - before),
            "rec_minus_flat_deeper_points": None if rec_pooled is None or flat is None
            else 100.0 * (rec_pooled[0] - flat),
            "rec_minus_best_flat_deeper_points": None if rec_pooled is None or best_flat is None
            else 100.0 * (rec_pooled[0] - best_flat),
            "held_out_trees": _trees(r.after),
            "rl_gain_ci95": gain_ci,
            "rec_minus_flat_deeper_ci95": deeper_ci,
        }
    mean: dict[str, Any] = {}
    spread: dict[str, Any] = {}
    for key in ACCEPTANCE_KEYS:
        values = [f[key] for f in per_seed.values() if f[key] is not None]
        mean[key] = _mean(values) if values else None
        spread[key] = max(values) - min(values) if len(values) >= 2 else None
    return {"deeper_difficulties": deeper, "per_seed": per_seed, "mean": mean, "spread": spread}


def _trees(result: Mapping[str, Any] | None) -> int:
    return int((_bucket(result, "all") or {}).get("trees", 0)) if result is not None else 0


def _points_interval(rate_a: float, n_a: int, rate_b: float, n_b: int) -> tuple[float, float] | None:
    """95% interval of ``rate_a - rate_b`` in points, from success rates over ``n_a`` / ``n_b`` trees."""
    if not n_a or not n_b:
        return None
    # rates pooled from per-difficulty floats can land a hair outside [0, 1]: clamp the counts
    lo, hi = difference_interval(min(max(rate_a * n_a, 0.0), n_a), n_a, min(max(rate_b * n_b, 0.0), n_b), n_b)
    return 100.0 * lo, 100.0 * hi


def _fmt_opt(value: float | None, spec: str = "+.1f") -> str:
    return _MISSING if value is None else format(value, spec)


def results_markdown(recursive_runs: Sequence[Run], flat_runs: Sequence[Run], oracle: OracleLike = None) -> str:
    """``results.md``: the success table, the acceptance figures and the run folders with their seeds."""
    oracle_map = _oracle_map(oracle)
    acc = acceptance(recursive_runs, flat_runs)
    out = ["# Results", "", "Held-out success per difficulty (95% interval for one run; mean (per seed) for several).",
           "", success_table(recursive_runs, flat_runs, oracle_map), "", "## Acceptance", ""]
    deeper = ", ".join(acc["deeper_difficulties"]) or "none"
    out.append(f"Untrained (deeper) difficulties: {deeper}. Per seed, 95% intervals of the differences in brackets "
               "(Newcombe's interval for two proportions; it treats the two evaluations as independent samples, "
               "so it is conservative for evaluations on the same tasks).")
    out.append("")
    header = ["seed", "RL gain, all held-out (pts)", "recursive - flat, deeper pooled (pts)",
              "recursive - best flat (before or after RL), deeper pooled (pts)", "held-out trees"]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join(["---"] * len(header)) + "|")

    intervals = {"rl_gain_points": "rl_gain_ci95", "rec_minus_flat_deeper_points": "rec_minus_flat_deeper_ci95"}

    def row(name: str, f: Mapping[str, Any], points: str, trees: str) -> str:
        cells = [name]
        for key in ACCEPTANCE_KEYS[:-1]:
            cell, ci = _fmt_opt(f[key], points), f.get(intervals.get(key, ""))
            cells.append(f"{cell} [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci is not None else cell)
        cells.append(_fmt_opt(f["held_out_trees"], trees))
        return "| " + " | ".join(cells) + " |"

    for seed, f in acc["per_seed"].items():
        out.append(row(str(seed), f, "+.1f", "d"))
    out.append(row("mean", acc["mean"], "+.1f", ".0f"))
    out.append(row("spread (max - min)", acc["spread"], ".1f", ".0f"))
    out += ["", "## Runs", ""]
    for r in [*_by_seed(recursive_runs), *_by_seed(flat_runs)]:
        evals = (f"evals at steps {r.before_step} (before RL) and {r.after_step} (after RL)" if r.has_before
                 else f"a single eval at step {r.after_step} (no distinct before-RL eval)")
        out.append(f"- `{r.workdir}`: {r.mode}, seed {r.seed}, warm start {r.sft_steps} steps, RL {r.rl_steps} steps, "
                   f"trained on {', '.join(r.train_difficulties) or 'all'}, {evals}, "
                   f"eval temperature {r.eval_temperature}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _moving_average(values: Sequence[float], window: int) -> tuple[list[int], list[float]]:
    """Trailing moving average; returns (indices of the window ends, averages)."""
    window = max(1, min(window, len(values)))
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            out.append(total / window)
    return list(range(window - 1, len(values))), out


def plot_learning_curves(runs: Sequence[Run], path: str | Path) -> Path:
    """Warm-start loss per step (left) and RL rollout success per RL step with eval success points (right)."""
    plt = _pyplot()
    path = Path(path)
    fig, (ax_sft, ax_rl) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(sorted(runs, key=lambda r: (r.mode, r.seed))):
        colour = colours[i % len(colours)]
        sft = [r for r in run.records("sft") if r.get("loss") is not None]
        if sft:
            ax_sft.plot([r["step"] for r in sft], [r["loss"] for r in sft], color=colour, lw=1, label=run.label)
        train = [r for r in run.records("train") if r.get("success") is not None]
        if train:
            xs = [int(r.get("rl_step", r["step"] - run.sft_steps)) for r in train]
            ys = [float(r["success"]) for r in train]
            ax_rl.plot(xs, ys, color=colour, lw=0.8, alpha=0.3)
            idx, avg = _moving_average(ys, max(1, len(ys) // 10) if len(ys) >= 20 else min(5, len(ys)))
            ax_rl.plot([xs[j] for j in idx], avg, color=colour, lw=1.8, label=f"{run.label} (rollouts, moving avg)")
        key = f"{run.mode}_success"
        evals = [(r["step"], r[key]) for r in run.records("eval") if r.get(key) is not None]
        if not evals:  # fall back on the eval JSON files
            evals = [(s, v) for s in sorted(run.evals) if (v := _success(run.result(s), "all")) is not None]
        if evals:
            ax_rl.plot([s - run.sft_steps for s, _ in evals], [v for _, v in evals], color=colour, ls="--",
                       marker="o", ms=6, label=f"{run.label} (eval)")
    ax_sft.set(title="Warm start (SFT)", xlabel="step", ylabel="loss")
    ax_rl.set(title="RL", xlabel="RL step (0 = end of warm start)", ylabel="success", ylim=(-0.02, 1.02))
    for ax in (ax_sft, ax_rl):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bar_series(runs: Sequence[Run], difficulties: Sequence[str], which: str) -> tuple[list[float], list[list[float]]]:
    """Heights (mean over runs; NaN when missing) and asymmetric error bars (CI for one run, min/max for several)."""
    heights, lo_err, hi_err = [], [], []
    results = [res for r in runs if (res := _phase(r, which)) is not None]
    for d in difficulties:
        with_value = [(res, v) for res in results if (v := _success(res, d)) is not None]
        values = [v for _, v in with_value]
        if not values:
            heights.append(float("nan"))
            lo_err.append(0.0)
            hi_err.append(0.0)
            continue
        mean = _mean(values)
        if len(values) == 1:
            ci = (_bucket(with_value[0][0], d) or {}).get("success_ci95") or [mean, mean]
            lo, hi = float(ci[0]), float(ci[1])
        else:
            lo, hi = min(values), max(values)
        heights.append(mean)
        lo_err.append(max(0.0, mean - lo))
        hi_err.append(max(0.0, hi - mean))
    return heights, [lo_err, hi_err]


def success_by_depth_series(recursive_runs: Sequence[Run], flat_runs: Sequence[Run], difficulties: Sequence[str],
                            oracle: Mapping[str, float] | None = None
                            ) -> list[tuple[str, list[float], list[list[float]] | None]]:
    """The bar series of :func:`plot_success_by_depth`: (name, heights per difficulty, error bars or None)."""
    series: list[tuple[str, list[float], list[list[float]] | None]] = []
    if any(r.has_before for r in flat_runs):
        series.append(("flat before RL", *_bar_series(flat_runs, difficulties, "before")))
    if flat_runs:
        series.append(("flat (after RL)", *_bar_series(flat_runs, difficulties, "after")))
    if recursive_runs:
        series.append(("recursive before RL", *_bar_series(recursive_runs, difficulties, "before")))
        series.append(("recursive after RL", *_bar_series(recursive_runs, difficulties, "after")))
    if oracle is not None:
        series.append(("oracle", [oracle.get(d, float("nan")) for d in difficulties], None))
    return series


def plot_success_by_depth(recursive_runs: Sequence[Run], flat_runs: Sequence[Run], path: str | Path,
                          oracle: OracleLike = None) -> Path:
    """Grouped bars of held-out success per difficulty: flat before RL (when a flat run has a distinct before-RL
    eval), flat after RL, recursive before / after RL, oracle (see :func:`success_by_depth_series`)."""
    plt = _pyplot()
    path = Path(path)
    oracle_map = _oracle_map(oracle)
    difficulties = _all_difficulties([*recursive_runs, *flat_runs], oracle_map)
    deeper = set(_deeper(difficulties, _trained(recursive_runs, flat_runs)))
    series = success_by_depth_series(recursive_runs, flat_runs, difficulties, oracle_map)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(difficulties) + 2), 4.5))
    width = 0.8 / max(1, len(series))
    for i, d in enumerate(difficulties):
        if d in deeper:
            ax.axvspan(i - 0.45, i + 0.45, color="grey", alpha=0.12, lw=0)
    for k, (name, heights, err) in enumerate(series):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(difficulties))]
        ax.bar(xs, heights, width, yerr=err, capsize=3, label=name)
    labels = [f"{d}\n(deeper than\ntrained)" if d in deeper else d for d in difficulties]
    ax.set_xticks(range(len(difficulties)), labels, fontsize=8)
    ax.set(ylabel="held-out success", ylim=(0, 1.05), title="Success by difficulty (shaded: deeper than trained)")
    ax.grid(axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Entry points


def split_by_mode(runs: Sequence[Run]) -> tuple[list[Run], list[Run]]:
    return [r for r in runs if r.mode == "recursive"], [r for r in runs if r.mode == "flat"]


def write_report(runs: Sequence[Run], out: str | Path, oracle: OracleLike = None) -> str:
    """Writes learning_curves.png, success_by_depth.png and results.md into ``out``; returns the table."""
    with staged(out) as local:
        return _write_report(runs, local, oracle)


def _write_report(runs: Sequence[Run], out: Path, oracle: OracleLike) -> str:
    out.mkdir(parents=True, exist_ok=True)
    oracle_map = _oracle_map(oracle)
    recursive_runs, flat_runs = split_by_mode(runs)
    plot_learning_curves(runs, out / "learning_curves.png")
    plot_success_by_depth(recursive_runs, flat_runs, out / "success_by_depth.png", oracle_map)
    (out / "results.md").write_text(results_markdown(recursive_runs, flat_runs, oracle_map))
    return success_table(recursive_runs, flat_runs, oracle_map)


def write_run_report(workdir: str | Path) -> Path:
    """The report of one run, into ``<workdir>/report/``; returns that folder."""
    out = as_path(workdir) / "report"
    write_report([load_run(workdir)], out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rao_jax.report", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="training workdirs (recursive and flat)")
    parser.add_argument("--oracle", default=None, help="oracle eval JSON (python -m rao_jax.evaluate --modes oracle)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    runs = [load_run(d) for d in args.runs]
    table = write_report(runs, args.out, args.oracle)
    print(table)
    print(f"\nwrote {Path(args.out) / 'results.md'}, learning_curves.png, success_by_depth.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
