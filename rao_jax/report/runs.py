"""Runs of the report: a training workdir's config, metrics and evals (``load_run``), the oracle's
evals, and the per-difficulty figures the tables and plots read."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rao_jax.paths import as_path

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
        train_difficulties=_train_buckets(config, evals, mode),
        eval_temperature=_get(config, "eval.temperature"),
        evals=evals,
        metrics=metrics,
    )


def _train_buckets(config: Mapping[str, Any], evals: Mapping[int, Any], mode: str) -> list[str]:
    """The eval buckets RL trained on: ``data.train_difficulties`` (empty: all); for a run of several
    families (buckets ``family/difficulty``) each family's ``train_difficulties``, or all its buckets."""
    families = _get(config, "data.families", {}) or {}
    if not families:
        return list(_get(config, "data.train_difficulties", []) or [])
    from rao_jax.envs import families as registry

    seen = sorted({key for e in evals.values() for key in e.get(mode, {}).get("by_difficulty", {})})
    out = []
    for name, entry in families.items():
        prefix = f"{registry.get(name).task_family}/"
        wanted = entry.get("train_difficulties") or []
        out += [prefix + d for d in wanted] if wanted else [k for k in seen if k.startswith(prefix)]
    return out


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


def split_by_mode(runs: Sequence[Run]) -> tuple[list[Run], list[Run]]:
    return [r for r in runs if r.mode == "recursive"], [r for r in runs if r.mode == "flat"]
