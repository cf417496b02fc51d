"""rao_jax.report on small hand-built workdirs: table cells and acceptance figures checked by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rao_jax import report
from rao_jax.metrics import difference_interval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SFT_STEPS = 20
TREES = {"t1": 10, "t2": 10, "t3": 20}  # t1 trained; t2, t3 deeper than trained
LAST = SFT_STEPS + 10


def bucket(success: float, trees: int) -> dict:
    return {"trees": trees, "success": success, "success_ci95": [success / 2, (1 + success) / 2],
            "mean_reward": success, "depth_max": 1, "depth_mean": 0.5, "context_overflows": 0}


def mode_result(by_difficulty: dict[str, float]) -> dict:
    trees = sum(TREES[d] for d in by_difficulty)
    pooled = sum(s * TREES[d] for d, s in by_difficulty.items()) / trees
    return {"all": bucket(pooled, trees), "by_difficulty": {d: bucket(s, TREES[d]) for d, s in by_difficulty.items()},
            "by_depth": {}, "eval_seconds": 1.0}


def make_workdir(root: Path, name: str, mode: str, seed: int, evals: dict[int, dict[str, float]]) -> Path:
    workdir = root / name
    (workdir / "eval").mkdir(parents=True)
    config = {"seed": seed, "sft": {"steps": SFT_STEPS}, "train": {"steps": 10},
              "data": {"train_difficulties": ["t1"]}, "eval": {"temperature": 0.0}}
    (workdir / "config.json").write_text(json.dumps(config))
    records = [{"kind": "sft", "step": s, "loss": 5.0 / s} for s in range(1, SFT_STEPS + 1)]
    records += [{"kind": "train", "step": SFT_STEPS + k, "rl_step": k, "success": 0.1 * (k % 4), "root_reward": 0.0,
                 "node_success": 0.0, "entropy": 1.0} for k in range(1, 11)]
    for step, by_difficulty in evals.items():
        result = mode_result(by_difficulty)
        (workdir / "eval" / f"step_{step}.json").write_text(json.dumps({mode: result}))
        record = {"kind": "eval", "step": step, f"{mode}_success": result["all"]["success"]}
        record.update({f"{mode}_success_{d}": s for d, s in by_difficulty.items()})
        records.append(record)
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return workdir


@pytest.fixture
def workdirs(tmp_path: Path) -> dict[str, Path]:
    last = SFT_STEPS + 10
    return {
        # all before = (5+1+0)/40 = 0.15, after = (8+3+3)/40 = 0.35; an intermediate eval at step 25 is ignored
        "rec0": make_workdir(tmp_path, "rec0", "recursive", 0, {
            SFT_STEPS: {"t1": 0.5, "t2": 0.1, "t3": 0.0},
            SFT_STEPS + 5: {"t1": 0.0, "t2": 0.0, "t3": 0.0},
            last: {"t1": 0.8, "t2": 0.3, "t3": 0.15}}),
        # all before = (7+2+1)/40 = 0.25, after = (9+4+4)/40 = 0.425
        "rec1": make_workdir(tmp_path, "rec1", "recursive", 1, {
            SFT_STEPS: {"t1": 0.7, "t2": 0.2, "t3": 0.05},
            last: {"t1": 0.9, "t2": 0.4, "t3": 0.2}}),
        "flat0": make_workdir(tmp_path, "flat0", "flat", 0, {
            SFT_STEPS: {"t1": 0.6, "t2": 0.0, "t3": 0.0},
            last: {"t1": 0.7, "t2": 0.1, "t3": 0.05}}),
    }


def load(workdirs: dict[str, Path]) -> tuple[list[report.Run], list[report.Run]]:
    return [report.load_run(workdirs["rec1"]), report.load_run(workdirs["rec0"])], [report.load_run(workdirs["flat0"])]


def table_rows(table: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return {row[0]: row[1:] for row in rows}


def test_load_run(workdirs):
    run = report.load_run(workdirs["rec0"])
    assert (run.mode, run.seed, run.sft_steps, run.rl_steps) == ("recursive", 0, SFT_STEPS, 10)
    assert run.train_difficulties == ["t1"] and run.eval_temperature == 0.0
    assert sorted(run.evals) == [20, 25, 30]
    assert (run.before_step, run.after_step) == (20, 30)
    assert run.before["all"]["success"] == pytest.approx(0.15)
    assert run.after["all"]["success"] == pytest.approx(0.35)
    assert len(run.records("sft")) == SFT_STEPS and len(run.records("train")) == 10
    assert report.load_run(workdirs["flat0"]).mode == "flat"


def test_load_run_errors(tmp_path, workdirs):
    no_eval = make_workdir(tmp_path, "no_eval", "recursive", 0, {})
    with pytest.raises(ValueError, match="no_eval"):
        report.load_run(no_eval)
    (workdirs["rec0"] / "metrics.jsonl").unlink()
    with pytest.raises(ValueError, match="rec0.*metrics.jsonl"):
        report.load_run(workdirs["rec0"])


def test_success_table(workdirs):
    rec, flat = load(workdirs)
    rows = table_rows(report.success_table(rec, flat, oracle={"t1": 1.0, "t2": 0.9, "t3": 0.75, "all": 0.85}))
    assert list(rows) == ["t1", "t2 (deeper than trained)", "t3 (deeper than trained)", "all"]
    flat_b, flat_c, before, after, gain, diff, oracle = rows["t1"]
    assert flat_b == "0.60 [0.30, 0.80]"  # the flat run's warm-start (step 20) eval
    assert flat_c == "0.70 [0.35, 0.85]"  # one flat run: success [ci]
    assert before == "0.60 (0.50 / 0.70)"  # mean (seed 0 / seed 1)
    assert after == "0.85 (0.80 / 0.90)"
    assert gain == "+25.0 (+30.0 / +20.0)"  # after - before, points
    assert diff == "+15.0 (+10.0 / +20.0)"  # seed 0 vs flat seed 0; seed 1 vs the flat mean (0.70)
    assert oracle == "1.00"
    flat_b, flat_c, before, after, gain, diff, oracle = rows["t3 (deeper than trained)"]
    assert flat_b == "0.00 [0.00, 0.50]"
    assert flat_c.startswith("0.05 [")
    assert gain == "+15.0 (+15.0 / +15.0)"
    assert diff == "+12.5 (+10.0 / +15.0)"
    assert oracle == "0.75"
    assert rows["t2 (deeper than trained)"][:2] == ["0.00 [0.00, 0.50]", "0.10 [0.05, 0.55]"]
    assert rows["all"][0] == "0.15 [0.07, 0.57]"  # flat before RL on all: (6 + 0 + 0) / 40
    mean, per_seed = rows["all"][4].rstrip(")").split(" (")
    assert float(mean) == pytest.approx(18.75, abs=0.06)  # (20 + 17.5) / 2
    assert [float(v) for v in per_seed.split(" / ")] == [20.0, 17.5]  # 35 - 15 and 42.5 - 25


def test_success_table_single_run(workdirs):
    rec = [report.load_run(workdirs["rec0"])]
    rows = table_rows(report.success_table(rec, []))
    assert len(rows["t1"]) == 6  # no oracle column
    assert rows["t1"] == ["—", "—", "0.50 [0.25, 0.75]", "0.80 [0.40, 0.90]", "+30.0", "—"]


def test_single_eval_has_no_before(tmp_path, workdirs):
    rec_single = report.load_run(make_workdir(tmp_path, "rec_single", "recursive", 1, {
        LAST: {"t1": 0.9, "t2": 0.4, "t3": 0.2}}))
    flat_single = report.load_run(make_workdir(tmp_path, "flat_single", "flat", 0, {
        LAST: {"t1": 0.7, "t2": 0.1, "t3": 0.05}}))
    assert rec_single.before_step == rec_single.after_step == LAST and not rec_single.has_before
    assert report.load_run(workdirs["rec0"]).has_before
    # only single-eval runs: every before-RL cell and the RL gain are dashes, not copies of "after"
    rows = table_rows(report.success_table([rec_single], [flat_single]))
    assert rows["t1"] == ["—", "0.70 [0.35, 0.85]", "—", "0.90 [0.45, 0.95]", "—", "+20.0"]
    assert rows["all"][0] == "—" and rows["all"][2] == "—" and rows["all"][4] == "—"
    # mixed with a two-eval run: the before cell and the gain come from rec0 alone
    rec0 = report.load_run(workdirs["rec0"])
    rows = table_rows(report.success_table([rec0, rec_single], [flat_single]))
    assert rows["t1"][2:5] == ["0.50 [0.25, 0.75]", "0.85 (0.80 / 0.90)", "+30.0"]
    acc = report.acceptance([rec0, rec_single], [flat_single])
    assert acc["per_seed"][1]["rl_gain_points"] is None
    assert acc["per_seed"][0]["rl_gain_points"] == pytest.approx(20.0)
    assert acc["mean"]["rl_gain_points"] == pytest.approx(20.0)
    assert acc["spread"]["rl_gain_points"] is None  # one seed with a value
    # a flat run without a distinct before eval: the best flat is its after value (1/15 on deeper tiers)
    assert acc["per_seed"][0]["rec_minus_best_flat_deeper_points"] == pytest.approx(40 / 3)
    assert acc["per_seed"][1]["rec_minus_best_flat_deeper_points"] == pytest.approx(80 / 3 - 20 / 3)
    # bars: no flat before-RL series; the recursive before-RL bars are missing (NaN)
    series = {name: heights for name, heights, _ in
              report.success_by_depth_series([rec_single], [flat_single], ["t1", "t2", "t3"])}
    assert list(series) == ["flat (after RL)", "recursive before RL", "recursive after RL"]
    assert all(math.isnan(h) for h in series["recursive before RL"])
    assert series["recursive after RL"] == pytest.approx([0.9, 0.4, 0.2])
    md = report.results_markdown([rec0, rec_single], [flat_single])
    assert "| 1 | — | +20.0 | +20.0 | 40 |" in md
    assert "a single eval at step 30 (no distinct before-RL eval)" in md


def test_acceptance(workdirs):
    rec, flat = load(workdirs)
    acc = report.acceptance(rec, flat)
    assert acc["deeper_difficulties"] == ["t2", "t3"]
    # gain on all held-out tasks: seed 0: 35 - 15 = 20; seed 1: 42.5 - 25 = 17.5
    # deeper pooled by trees (t2: 10, t3: 20): flat = (0.1*10 + 0.05*20)/30 = 1/15
    #   seed 0: (0.3*10 + 0.15*20)/30 = 0.2 -> 20 - 6.667 = 13.333 (an unpooled mean would give 15)
    #   seed 1: (0.4*10 + 0.2*20)/30 = 0.2667 -> 26.667 - 6.667 = 20
    assert acc["per_seed"][0]["rl_gain_points"] == pytest.approx(20.0)
    assert acc["per_seed"][1]["rl_gain_points"] == pytest.approx(17.5)
    assert acc["per_seed"][0]["rec_minus_flat_deeper_points"] == pytest.approx(40 / 3)
    assert acc["per_seed"][1]["rec_minus_flat_deeper_points"] == pytest.approx(20.0)
    assert acc["per_seed"][0]["held_out_trees"] == 40
    # intervals of the differences from the counts: gain 14/40 - 6/40 (seed 0) and 17/40 - 10/40 (seed 1);
    # deeper 6/30 - 2/30 (seed 0 vs flat seed 0); seed 1 has no flat run of its own: no interval
    points = lambda *counts: pytest.approx([100 * x for x in difference_interval(*counts)])  # noqa: E731
    assert acc["per_seed"][0]["rl_gain_ci95"] == points(14, 40, 6, 40)
    assert acc["per_seed"][1]["rl_gain_ci95"] == points(17, 40, 10, 40)
    assert acc["per_seed"][0]["rec_minus_flat_deeper_ci95"] == points(6, 30, 2, 30)
    assert acc["per_seed"][1]["rec_minus_flat_deeper_ci95"] is None
    # a pooled rate of 1 that float sums put a hair above 1 still gets an interval
    assert report.tables._points_interval(1.0 + 2e-16, 105, 0.0, 105) == pytest.approx(
        [100 * x for x in difference_interval(105, 105, 0, 105)])
    assert acc["mean"]["rl_gain_points"] == pytest.approx(18.75)
    assert acc["mean"]["rec_minus_flat_deeper_points"] == pytest.approx((40 / 3 + 20) / 2)
    assert acc["mean"]["held_out_trees"] == pytest.approx(40)
    # flat before RL pools to 0 on the deeper tiers (< 1/15 after RL): the best flat is the after-RL value
    assert acc["per_seed"][0]["rec_minus_best_flat_deeper_points"] == pytest.approx(40 / 3)
    assert acc["per_seed"][1]["rec_minus_best_flat_deeper_points"] == pytest.approx(20.0)
    # spread over the two recursive seeds: max - min
    assert acc["spread"]["rl_gain_points"] == pytest.approx(2.5)
    assert acc["spread"]["rec_minus_flat_deeper_points"] == pytest.approx(20 - 40 / 3)
    assert acc["spread"]["rec_minus_best_flat_deeper_points"] == pytest.approx(20 - 40 / 3)
    assert acc["spread"]["held_out_trees"] == 0
    one_seed = report.acceptance(rec[1:], flat)
    assert list(one_seed["per_seed"]) == [0]
    assert one_seed["spread"] == {key: None for key in report.ACCEPTANCE_KEYS}
    assert one_seed["mean"]["rl_gain_points"] == pytest.approx(20.0)
    no_flat = report.acceptance(rec, [])
    assert no_flat["per_seed"][0]["rec_minus_flat_deeper_points"] is None
    assert no_flat["mean"]["rec_minus_flat_deeper_points"] is None
    assert no_flat["per_seed"][0]["rec_minus_best_flat_deeper_points"] is None
    assert no_flat["spread"]["rec_minus_best_flat_deeper_points"] is None


def test_acceptance_best_flat_when_flat_collapses(tmp_path, workdirs):
    rec, _ = load(workdirs)
    # flat seed 0 collapses under RL: deeper pooled before = (0.4*10 + 0.25*20)/30 = 0.3, after = 0
    collapsed = make_workdir(tmp_path, "flat_collapsed", "flat", 0, {
        SFT_STEPS: {"t1": 0.6, "t2": 0.4, "t3": 0.25},
        LAST: {"t1": 0.0, "t2": 0.0, "t3": 0.0}})
    # flat seed 2 improves: deeper pooled before = 0, after = 0.1
    improved = make_workdir(tmp_path, "flat_improved", "flat", 2, {
        SFT_STEPS: {"t1": 0.5, "t2": 0.0, "t3": 0.0},
        LAST: {"t1": 0.6, "t2": 0.1, "t3": 0.1}})
    flat = [report.load_run(collapsed), report.load_run(improved)]
    acc = report.acceptance(rec, flat)
    # recursive deeper pooled after RL: seed 0 = 0.2, seed 1 = 0.8/3
    # seed 0 vs flat seed 0: after RL 20 - 0 = 20; best flat (before, 0.3): 20 - 30 = -10
    assert acc["per_seed"][0]["rec_minus_flat_deeper_points"] == pytest.approx(20.0)
    assert acc["per_seed"][0]["rec_minus_best_flat_deeper_points"] == pytest.approx(-10.0)
    # seed 1 has no flat partner: after-RL mean (0 + 0.1)/2 = 0.05; best-flat mean (0.3 + 0.1)/2 = 0.2
    assert acc["per_seed"][1]["rec_minus_flat_deeper_points"] == pytest.approx(80 / 3 - 5)
    assert acc["per_seed"][1]["rec_minus_best_flat_deeper_points"] == pytest.approx(80 / 3 - 20)
    assert acc["mean"]["rec_minus_best_flat_deeper_points"] == pytest.approx((-10 + 20 / 3) / 2)
    assert acc["spread"]["rec_minus_best_flat_deeper_points"] == pytest.approx(20 / 3 + 10)
    md = report.results_markdown(rec, flat)
    assert "| 0 | +20.0 [+0.9, +37.4] | +20.0 [+4.5, +37.3] | -10.0 | 40 |" in md
    assert "| 1 | +17.5 [-3.2, +36.2] | +21.7 | +6.7 | 40 |" in md  # flat partner is a mean: no interval
    assert "| spread (max - min) | 2.5 | 1.7 | 16.7 | 0 |" in md
    rows = table_rows(report.success_table(rec, flat))
    assert rows["t2 (deeper than trained)"][:2] == ["0.20 (0.40 / 0.00)", "0.05 (0.00 / 0.10)"]


def test_duplicate_seeds_rejected(workdirs):
    run = report.load_run(workdirs["rec0"])
    with pytest.raises(ValueError, match="seed"):
        report.success_table([run, run], [])


def test_success_by_depth_series(workdirs):
    rec, flat = load(workdirs)
    series = report.success_by_depth_series(rec, flat, ["t1", "t2", "t3"], {"t1": 1.0, "t3": 0.5})
    names = [name for name, _, _ in series]
    assert names == ["flat before RL", "flat (after RL)", "recursive before RL", "recursive after RL", "oracle"]
    heights = {name: h for name, h, _ in series}
    assert heights["flat before RL"] == pytest.approx([0.6, 0.0, 0.0])
    assert heights["flat (after RL)"] == pytest.approx([0.7, 0.1, 0.05])
    assert heights["recursive before RL"] == pytest.approx([0.6, 0.15, 0.025])


def test_plots(tmp_path, workdirs):
    rec, flat = load(workdirs)
    curves = report.plot_learning_curves([*rec, *flat], tmp_path / "out" / "curves.png")
    bars = report.plot_success_by_depth(rec, flat, tmp_path / "out" / "bars.png", oracle={"t1": 1.0, "t3": 0.5})
    single = report.plot_success_by_depth(rec[:1], [], tmp_path / "out" / "single.png")
    for path in (curves, bars, single):
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_cli(tmp_path, workdirs, capsys):
    oracle_path = tmp_path / "oracle.json"
    oracle_path.write_text(json.dumps({"oracle": mode_result({"t1": 1.0, "t2": 0.9, "t3": 0.8})}))
    out = tmp_path / "report"
    argv = ["--runs", str(workdirs["rec0"]), str(workdirs["flat0"]), str(workdirs["rec1"]),
            "--oracle", str(oracle_path), "--out", str(out)]
    assert report.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| t1 | 0.60 [0.30, 0.80] | 0.70 [0.35, 0.85] | 0.60 (0.50 / 0.70) |" in printed
    assert "oracle" in printed
    for name in ("learning_curves.png", "success_by_depth.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    md = (out / "results.md").read_text()
    assert "| t3 (deeper than trained) |" in md
    assert "| difficulty | flat before RL | flat (after RL) | recursive before RL |" in md
    assert ("| seed | RL gain, all held-out (pts) | recursive - flat, deeper pooled (pts) "
            "| recursive - best flat (before or after RL), deeper pooled (pts) | held-out trees |") in md
    lines = md.splitlines()
    start = lines.index("| seed | RL gain, all held-out (pts) | recursive - flat, deeper pooled (pts) "
                        "| recursive - best flat (before or after RL), deeper pooled (pts) | held-out trees |")
    assert lines[start + 1:start + 6] == [
        "|---|---|---|---|---|",
        "| 0 | +20.0 [+0.9, +37.4] | +13.3 [-4.7, +31.3] | +13.3 | 40 |",
        "| 1 | +17.5 [-3.2, +36.2] | +20.0 | +20.0 | 40 |",
        "| mean | +18.8 | +16.7 | +16.7 | 40 |",
        "| spread (max - min) | 2.5 | 6.7 | 6.7 | 0 |",
    ]
    assert lines[start + 6] == ""
    for key in ("rec0", "rec1", "flat0"):
        assert str(workdirs[key]) in md


def test_write_run_report(workdirs):
    out = report.write_run_report(workdirs["rec0"])
    assert out == workdirs["rec0"] / "report"
    for name in ("learning_curves.png", "success_by_depth.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert "| t1 | — | — | 0.50 [0.25, 0.75] | 0.80 [0.40, 0.90] | +30.0 | — |" in (out / "results.md").read_text()
