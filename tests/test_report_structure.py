"""rao_jax.report.structure: success against input size and the delegation structure per bucket / per
chain-or-fork, on a hand-built run of several families (figures checked by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rao_jax import report
from rao_jax.report.structure import input_multiple, input_size_series, structure_of

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bucket(success, trees, launches, parallel, critical):
    return {"trees": trees, "success": success, "success_ci95": [success / 2, (1 + success) / 2],
            "mean_reward": success, "depth_max": 1, "depth_mean": 0.5, "context_overflows": 0,
            "launches": launches, "parallel_fraction": parallel, "critical_over_total": critical}


BUCKETS = {
    "chain_hop/k2": bucket(1.0, 10, 20, 0.0, 1.0),
    "chain_hop/k5": bucket(0.5, 10, 50, 0.1, 0.9),
    "chain_hop/k2_fork": bucket(1.0, 10, 40, 1.0, 0.5),
    "chain_hop/k5_fork": bucket(0.4, 10, 60, 0.5, 0.7),
    "labeled_rows/1x": bucket(0.9, 20, 0, None, None),
    "labeled_rows/32x": bucket(0.3, 20, 100, 1.0, 0.2),
    "labeled_rows/4x": bucket(0.6, 20, 30, 1.0, 0.4),
    "textcraft_synth/t1": bucket(0.8, 10, 0, None, None),
}


def make_run(root: Path, name: str, mode: str, buckets=BUCKETS) -> Path:
    workdir = root / name
    (workdir / "eval").mkdir(parents=True)
    families = {"chain_hop": {}, "labeled_rows": {"train_difficulties": ["1x"]}, "textcraft_synth": {}}
    (workdir / "config.json").write_text(json.dumps({"seed": 0, "sft": {"steps": 0}, "train": {"steps": 2},
                                                     "data": {"families": families}, "eval": {"temperature": 1.0}}))
    result = {"all": bucket(0.5, 110, 300, 0.6, 0.6), "by_difficulty": buckets, "by_depth": {}}
    (workdir / "eval" / "step_2.json").write_text(json.dumps({mode: result}))
    (workdir / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "success": 0.5}) + "\n")
    return workdir


def test_bucket_names():
    assert input_multiple("labeled_rows/4x") == 4.0 and input_multiple("1.5x") == 1.5
    assert input_multiple("k5") is None and input_multiple("labeled_rows/x") is None
    assert structure_of("chain_hop/k8_fork") == "chain_hop/fork" and structure_of("k8") == "chain"


def test_input_size_series_orders_by_multiple(tmp_path):
    run = report.load_run(make_run(tmp_path, "rec", "recursive"))
    ((label, xs, ys, cis),) = input_size_series([run])
    assert label == "recursive seed 0" and xs == [1.0, 4.0, 32.0] and ys == [0.9, 0.6, 0.3]
    assert cis[0] == (0.45, 0.95)


def test_a_mixed_runs_trained_buckets_are_its_families_filters_or_all_their_buckets(tmp_path):
    run = report.load_run(make_run(tmp_path, "rec", "recursive"))
    assert sorted(run.train_difficulties) == ["chain_hop/k2", "chain_hop/k2_fork", "chain_hop/k5",
                                              "chain_hop/k5_fork", "labeled_rows/1x", "textcraft_synth/t1"]


def test_structure_rows_pool_forks_and_chains_by_launches(tmp_path):
    run = report.load_run(make_run(tmp_path, "rec", "recursive"))
    per_bucket, per_structure = report.structure_rows(run)
    assert set(per_structure) == {"chain_hop/chain", "chain_hop/fork"}   # only a family with forks is pooled
    fork, chain = per_structure["chain_hop/fork"], per_structure["chain_hop/chain"]
    assert fork["parallel_fraction"] == pytest.approx((40 * 1.0 + 60 * 0.5) / 100)
    assert chain["parallel_fraction"] == pytest.approx((20 * 0.0 + 50 * 0.1) / 70)
    assert chain["launches_per_tree"] == pytest.approx(70 / 20) and chain["success"] == pytest.approx(0.75)
    assert fork["critical_over_total"] == pytest.approx(0.6)
    assert per_bucket["labeled_rows/1x"]["parallel_fraction"] is None
    text = report.structure_markdown([run])
    assert "| chain_hop/fork (pooled) | 20 | 0.700 | 5.00 | 0.70 | 0.60 |" in text
    assert "| labeled_rows/1x | 20 | 0.900 | 0.00 | - | - |" in text


def test_the_report_adds_the_input_size_plot_and_the_structure_section(tmp_path):
    runs = [report.load_run(make_run(tmp_path, "rec", "recursive")),
            report.load_run(make_run(tmp_path, "flat", "flat"))]
    report.write_report(runs, tmp_path / "out")
    assert (tmp_path / "out" / "success_by_input_size.png").read_bytes().startswith(PNG_MAGIC)
    results = (tmp_path / "out" / "results.md").read_text()
    assert "## Delegation structure" in results and "flat seed 0, after RL (step 2):" in results
    # A run without `<m>x` buckets draws no input-size plot.
    plain = make_run(tmp_path, "plain", "recursive", {"t1": bucket(0.5, 4, 0, None, None)})
    report.write_report([report.load_run(plain)], tmp_path / "out2")
    assert not (tmp_path / "out2" / "success_by_input_size.png").exists()
