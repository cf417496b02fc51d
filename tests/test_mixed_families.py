"""One policy trained on TextCraft, LabeledRows and ChainHop at once: the warm start imitates each
family's oracle, RL draws from all three, every tree runs under its family's budget, and the metrics
and evaluation report each family on its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rao_jax.config import from_config_dict

ROOT = Path(__file__).resolve().parent.parent

FAMILIES = {
    "textcraft_synth": {"knobs": {"preset": "tiny", "per_difficulty": 6}},
    "labeled_rows": {"knobs": {"num_tasks": 3, "window_tokens": 256, "context_multiples": [1]},
                     "root_budget": 3, "max_context": 768},
    "chain_hop": {"knobs": {"num_tasks": 2, "hops": [2], "branches": [1, 2]}},
}


def _config(workdir: Path):
    sys.path.insert(0, str(ROOT / "configs"))
    try:
        import tiny_test
    finally:
        sys.path.pop(0)
    cfg = tiny_test.get_config()
    cfg.workdir = str(workdir)
    cfg.data.knobs = {"preset": "tiny", "per_difficulty": 40}   # the default: data.families replaces it
    cfg.data.families = FAMILIES
    cfg.tokenizer.corpus_tasks = 6
    cfg.rollout.root_budget = 2
    cfg.rollout.tasks_per_step = 3
    cfg.sft.steps = 2
    cfg.sft.num_tasks = 6
    cfg.train.steps = 2
    cfg.train.save_trees = True
    cfg.eval.num_tasks = 6
    return from_config_dict(cfg)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_mixed_run_trains_and_reports_each_family(tmp_path):
    from rao_jax.train import train

    workdir = tmp_path / "run"
    train(_config(workdir), progress=False)

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    assert len(steps) == 2
    names = ("textcraft_synth", "labeled_rows", "chain_hop")
    for r in steps:
        assert sum(r[f"trees_{n}"] for n in names) == r["trees"] == 3 * 2
        assert all(0.0 <= r[f"success_{n}"] <= 1.0 for n in names)

    final = json.loads((workdir / "eval" / "step_4.json").read_text())["recursive"]
    assert set(final["by_family"]) == set(names)
    assert all(b["trees"] == 2 for b in final["by_family"].values())
    assert all(key.split("/")[0] in names for key in final["by_difficulty"])
    evals = [r for r in records if r["kind"] == "eval"]
    assert all(f"recursive_success_{n}" in evals[-1] for n in names)

    # Each tree ran under its family's root budget.
    budgets = {}
    for trace in (workdir / "trees").rglob("*.jsonl"):
        header = json.loads(trace.read_text().splitlines()[0])
        budgets.setdefault(header["task_id"].split(".")[0], set()).add(header["root_budget"])
    assert budgets == {"labeled_rows": {3}, "textcraft_synth": {2}, "chain_hop": {2}}
    assert (workdir / "report" / "results.md").exists()
