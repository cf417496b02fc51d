"""The report's plots (matplotlib, Agg backend, imported only here): learning curves and success by depth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rao_jax.report.runs import (
    OracleLike,
    Run,
    _all_difficulties,
    _bucket,
    _deeper,
    _mean,
    _oracle_map,
    _phase,
    _success,
    _trained,
)


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
    return _save(fig, path)


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
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """Lays ``fig`` out, writes it to ``path`` (creating its folder) and closes it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Entry points
