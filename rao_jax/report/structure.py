"""Two views of held-out results beyond success per difficulty, from the same eval JSON (after RL):

- *input size*: buckets named ``<m>x`` (LabeledRows: the input is m times the model's window, possibly
  prefixed ``family/``) as a curve of success against m, recursive and flat (``input_size_series``,
  ``plot_success_by_input_size``);
- *delegation structure*: per bucket, the parallel-launch fraction, the critical path over all model
  calls and launches per tree; pooled per structure for a family with ``*_fork`` buckets (ChainHop's
  two independent chains), whose other buckets are chains (``structure_rows``, ``structure_markdown``).

A pooled parallel fraction weighs each bucket by its launches (the fraction of all launches that ran
beside a sibling), so a bucket without launches adds nothing to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rao_jax.report.runs import Run

_SIZE = re.compile(r"^(?:(?P<family>[^/]+)/)?(?P<m>\d+(?:\.\d+)?)x$")


def input_multiple(difficulty: str) -> float | None:
    """m of a ``<m>x`` bucket (``"labeled_rows/4x"`` -> 4.0); None for any other name."""
    match = _SIZE.match(difficulty)
    return float(match.group("m")) if match else None


def structure_of(difficulty: str) -> str:
    """``"<family>fork"`` for a ``*_fork`` bucket, ``"<family>chain"`` otherwise (family prefix kept)."""
    family, _, name = difficulty.rpartition("/")
    prefix = f"{family}/" if family else ""
    return prefix + ("fork" if name.endswith("_fork") else "chain")


def input_size_series(runs: Sequence[Run]) -> list[tuple[str, list[float], list[float], list[tuple[float, float]]]]:
    """Per run (after RL): (label, multiples, success, 95% intervals) over its ``<m>x`` buckets, by m."""
    out = []
    for run in runs:
        buckets = run.after.get("by_difficulty", {})
        sizes = sorted((m, name) for name in buckets if (m := input_multiple(name)) is not None)
        if sizes:
            out.append((run.label, [m for m, _ in sizes], [float(buckets[n]["success"]) for _, n in sizes],
                        [tuple(buckets[n]["success_ci95"]) for _, n in sizes]))
    return out


def plot_success_by_input_size(runs: Sequence[Run], path: str | Path) -> Path | None:
    """Success against input size in multiples of the window (log2 axis), one line per run with its 95%
    band; None (nothing written) when no run has ``<m>x`` buckets."""
    from rao_jax.report.plots import _pyplot, _save

    series = input_size_series(runs)
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, xs, ys, cis in series:
        style = "-o" if label.startswith("recursive") else "--s"
        ax.plot(xs, ys, style, label=label)
        ax.fill_between(xs, [lo for lo, _ in cis], [hi for _, hi in cis], alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="input size (multiples of the model's window)", ylabel="held-out success (after RL)",
           ylim=(0, 1.05), title="Success vs input size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def _pooled(buckets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    trees = sum(b["trees"] for b in buckets)
    launches = sum(b.get("launches", 0) for b in buckets)
    parallel = sum((b.get("parallel_fraction") or 0.0) * b.get("launches", 0) for b in buckets)
    ratios = [(b["critical_over_total"], b["trees"]) for b in buckets if b.get("critical_over_total") is not None]
    weight = sum(n for _, n in ratios)
    return {"trees": trees, "success": sum(b["success"] * b["trees"] for b in buckets) / trees if trees else None,
            "launches_per_tree": launches / trees if trees else None,
            "parallel_fraction": parallel / launches if launches else None,
            "critical_over_total": sum(r * n for r, n in ratios) / weight if weight else None}


def structure_rows(run: Run) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """``(per bucket, per structure)`` delegation figures of a run's after-RL eval (``_pooled`` keys)."""
    buckets = run.after.get("by_difficulty", {})
    per_bucket = {name: _pooled([b]) for name, b in buckets.items()}
    forking = {name.rpartition("/")[0] for name in buckets if name.endswith("_fork")}
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for name, bucket in buckets.items():
        if name.rpartition("/")[0] in forking:
            groups.setdefault(structure_of(name), []).append(bucket)
    return per_bucket, {name: _pooled(group) for name, group in sorted(groups.items())}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def structure_markdown(runs: Sequence[Run]) -> str:
    """A table per run: delegation figures per bucket, then pooled per structure (chain / fork)."""
    header = "| bucket | trees | success | launches / tree | parallel fraction | critical path / calls |"
    out = []
    for run in runs:
        per_bucket, per_structure = structure_rows(run)
        if not per_bucket:
            continue
        out += [f"{run.label}, after RL (step {run.after_step}):", "", header, "|---|---|---|---|---|---|"]
        for name, f in [*per_bucket.items(), *((f"{k} (pooled)", v) for k, v in per_structure.items())]:
            out.append(f"| {name} | {f['trees']} | {_fmt(f['success'], '.3f')} | {_fmt(f['launches_per_tree'], '.2f')}"
                       f" | {_fmt(f['parallel_fraction'], '.2f')} | {_fmt(f['critical_over_total'], '.2f')} |")
        out.append("")
    return "\n".join(out)
