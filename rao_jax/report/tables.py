"""The report's Markdown: the success table, the acceptance figures (per seed, with intervals) and
``results.md``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rao_jax.metrics import difference_interval
from rao_jax.report.runs import (
    _MISSING,
    OracleLike,
    Run,
    _all_difficulties,
    _bucket,
    _by_seed,
    _deeper,
    _flat_partner,
    _mean,
    _oracle_map,
    _phase,
    _pooled_success,
    _success,
    _trained,
)
from rao_jax.report.structure import structure_markdown


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
    structure = structure_markdown([*_by_seed(recursive_runs), *_by_seed(flat_runs)])
    if structure:
        out += ["", "## Delegation structure", "",
                "Per bucket after RL: launches per tree, the fraction of launches that ran beside a sibling "
                "(their run times overlap), and the critical path over all model calls (mean over trees); "
                "`chain` / `fork` rows pool a family's buckets by task structure, the fraction weighted by "
                "launches.", "", structure]
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
