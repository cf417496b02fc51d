"""The trainer end to end on CPU: it runs, checkpoints, resumes after kill -9 with the same data order,
and refuses bad configs at start with a message naming the problem."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rao_jax.config import from_config_dict
from rao_jax.models.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny_test.py"


def _config(**overrides):
    sys.path.insert(0, str(ROOT / "configs"))
    try:
        import tiny_test
    finally:
        sys.path.pop(0)
    cfg = tiny_test.get_config().to_dict()
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        target = cfg
        for part in filter(None, section.split(".")):
            target = target[part]
        target[name] = value
    return cfg


def _train_cmd(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rao_jax.train", f"--config={TINY}", f"--config.workdir={workdir}",
            "--noprogress", *extra]


def _env() -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def wait_for_a_step(proc: subprocess.Popen, workdir: Path, seconds: float = 600) -> None:
    """Waits until a running trainer (or pod) has logged its first RL step."""
    deadline = time.time() + seconds
    while not (workdir / "metrics.jsonl").exists() or not _records(workdir):
        assert proc.poll() is None, f"the run ended early:\n{proc.stdout.read()}"
        assert time.time() < deadline, f"no RL step within {seconds:g} s"
        time.sleep(0.2)


def _records(workdir: Path, kind: str = "train") -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


@pytest.mark.timeout(900)
def test_killed_run_resumes_from_its_last_checkpoint_with_the_same_data_order(tmp_path):
    from rao_jax.tasks import TaskSet

    steps = 4
    workdir = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(workdir, f"--config.train.steps={steps}"), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoints = workdir / "checkpoints"
    deadline = time.time() + 600
    try:  # kill -9 once step 2's checkpoint is complete (Orbax renames a finished step into place)
        while not (checkpoints / "2").is_dir():
            assert proc.poll() is None, f"the run ended early:\n{proc.stdout.read()}"
            assert time.time() < deadline, "no checkpoint of step 2 within 10 minutes"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(r["step"] for r in _records(workdir))
    assert killed_at < steps

    resumed = subprocess.run(_train_cmd(workdir, f"--config.train.steps={steps}"), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr
    records = _records(workdir)
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # one history, no duplicated steps

    # An uninterrupted run draws its tasks from the same seeded stream, in order.
    config = from_config_dict(_config(workdir=str(workdir)))
    stream = TaskSet(config).train_iterator()
    expected = [[t.task_id for t in stream.take(config.rollout.tasks_per_step)] for _ in range(steps)]
    assert [r["tasks"] for r in records] == expected
    assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())[-1] == steps
    assert (workdir / "eval" / f"step_{steps}.json").exists()
    for r in records:
        assert r["response_tokens"] > 0 and ("loss" in r or r.get("skipped_update"))


@pytest.mark.timeout(900)
def test_sigterm_checkpoints_the_step_reached_exits_75_and_the_rerun_resumes(tmp_path):
    from rao_jax.train import PREEMPTED_EXIT_CODE

    workdir = tmp_path / "run"
    args = ("--config.train.steps=5", "--config.train.checkpoint_every=4")
    proc = subprocess.Popen(_train_cmd(workdir, *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for_a_step(proc, workdir)
    proc.send_signal(signal.SIGTERM)   # during step 2's rollout or update at the earliest
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == PREEMPTED_EXIT_CODE == 75, output[-3000:]
    assert "preempted: saved a checkpoint of step" in output
    reached = max(r["step"] for r in _records(workdir))
    assert 1 <= reached < 4   # stopped at the next step boundary, before the regular checkpoint at 4
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [reached]

    resumed = subprocess.run(_train_cmd(workdir, *args), cwd=ROOT, env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {reached}" in resumed.stderr
    assert [r["step"] for r in _records(workdir)] == [1, 2, 3, 4, 5]


def test_unknown_config_key_fails_at_start_naming_it(tmp_path):
    out = subprocess.run(_train_cmd(tmp_path, "--config.rl.lamda=0.5"), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "lamda" in out.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("overrides,message", [
    ({"mesh.data": 3}, "mesh: .*needs 3 devices, 1 are available"),
    ({"model.init_checkpoint": "/nonexistent/qwen3"}, "model.init_checkpoint /nonexistent/qwen3 does not exist"),
    ({"tokenizer.path": "/nonexistent/tok.model"}, "tokenizer.path /nonexistent/tok.model does not exist"),
    ({"data.family": "textcraft_sinth"}, "data.family must be one of"),
    ({"rollout.group_size": 1}, "group_size must be >= 2"),
    ({"train.steps": "many"}, "train.steps must be int"),
    ({"rl.staleness": -1}, "rl.staleness must be >= 0"),
    ({"sft.oracle_knobs": {"style": "program", "goal_variables": True}}, "needs rollout.goal_variables=True"),
    ({"sft.schedule": "linear"}, "sft.schedule must be constant or cosine, got 'linear'"),
])
def test_bad_configs_fail_at_start_with_a_clear_message(tmp_path, overrides, message):
    from rao_jax.runtime import Runtime

    with pytest.raises(ConfigError, match=message):
        Runtime.create(from_config_dict(_config(workdir=str(tmp_path), **overrides)))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_warm_start_lr_follows_sft_schedule(schedule):
    from rao_jax.rl.learner import learning_rate_schedule
    from rao_jax.train import sft_optim_config

    config = from_config_dict(_config(**{"sft.steps": 40, "sft.learning_rate": 3e-3, "sft.schedule": schedule}))
    optim = sft_optim_config(config)
    assert optim.weight_decay == 0.0 and optim.grad_clip == config.optim.grad_clip
    lr = learning_rate_schedule(optim)
    if schedule == "constant":
        assert lr == 3e-3
    else:
        np.testing.assert_allclose([lr(0), lr(20), lr(40)], [3e-3, 1.5e-3, 0.0], atol=1e-9)


@pytest.mark.timeout(900)
def test_warm_start_then_rl_then_evaluate_cli_on_the_checkpoint(tmp_path, capsys):
    """SFT on oracle demonstrations lowers the demonstrations' NLL; the RL step, the eval table and
    ``rao_jax.evaluate`` run on the checkpoint (oracle mode solves the held-out tasks)."""
    from rao_jax import evaluate
    from rao_jax.train import train

    workdir = tmp_path / "run"
    config = from_config_dict(_config(**{
        "workdir": str(workdir), "rollout.root_budget": 0, "sft.steps": 3, "sft.num_tasks": 4, "sft.rows": 2,
        "sft.learning_rate": 3e-3, "train.steps": 1, "eval.modes": ["recursive", "oracle"], "eval.num_tasks": 2,
        "train.export_hf": True}))
    out = train(config, progress=False)
    sft = [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "sft"]
    assert [r["step"] for r in sft] == [1, 2, 3]
    assert sft[-1]["loss"] < sft[0]["loss"]          # the warm start fits its demonstrations
    assert out["eval"]["oracle"]["all"]["success"] == 1.0
    assert _records(workdir)[0]["step"] == 4         # RL steps count on from the warm start

    capsys.readouterr()
    result = evaluate.run(config, str(workdir / "checkpoints"), modes=("recursive", "oracle"), num_tasks=2,
                          out=str(tmp_path / "eval.json"))
    printed = capsys.readouterr().out
    assert "checkpoint step 4" in printed and "oracle" in printed and "recursive" in printed
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["oracle"]["all"]["success"] == result["oracle"]["all"]["success"] == 1.0
    assert saved["recursive"]["all"]["trees"] == 2

    # The run's Hugging Face export tokenizes and lays prompts out as the run did (as README command 1's).
    from rao_jax.agent.protocol import sentencepiece_template
    from rao_jax.data.tokenizer import load_tokenizer
    from tests.hf_utils import assert_export_matches

    assert_export_matches(workdir / "hf", load_tokenizer(workdir / "tokenizer.model"), sentencepiece_template())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bounded_staleness_overlaps_rollouts_with_updates_and_keeps_the_data_order(tmp_path):
    from rao_jax.tasks import TaskSet
    from rao_jax.train import train

    workdir = tmp_path / "run"
    config = from_config_dict(_config(**{"workdir": str(workdir), "rl.staleness": 1, "train.steps": 3,
                                         "eval.num_tasks": 1}))
    train(config, progress=False)
    records = _records(workdir)
    assert [r["step"] for r in records] == [1, 2, 3]
    # Step 1's trees come from the initial policy; later steps' sampling began one update behind.
    assert [r["policy_lag"] for r in records] == [0.0, 1.0, 1.0]
    stream = TaskSet(config).train_iterator()
    assert [r["tasks"] for r in records] == [[t.task_id for t in stream.take(1)] for _ in range(3)]
    assert all("loss" in r for r in records)


def _sampler_matches_learner(trainer) -> bool:
    """The first replica's weights are the learner's, cast to the sampler dtype (bfloat16 here)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    sampled = trainer.runtime.sampler.weights(0)
    learner = nnx.state(trainer.model, nnx.Param)
    assert {x.dtype for x in jax.tree.leaves(sampled)} == {jnp.dtype(jnp.bfloat16)}
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b.astype(a.dtype)))),
                        sampled, learner)
    return all(jax.tree.leaves(same))


@pytest.mark.timeout(900)
def test_with_staleness_the_sampler_takes_the_warm_start_and_the_restored_policy(tmp_path):
    import asyncio

    from rao_jax.train import Trainer

    overrides = {"workdir": str(tmp_path / "run"), "rl.staleness": 1, "engine.weights_dtype": "bfloat16",
                 "sft.steps": 2, "sft.num_tasks": 2, "sft.rows": 2, "sft.learning_rate": 3e-3, "train.steps": 1,
                 "train.eval_every": 1, "eval.num_tasks": 1}
    import jax

    trainer = Trainer(from_config_dict(_config(**overrides)), progress=False)
    initial = jax.tree.map(np.array, trainer.runtime.sampler.weights(0))   # a copy: the replica's swaps show through
    seen = []
    evaluate = trainer._evaluate

    async def checked_evaluate():
        seen.append((trainer.sft_done, trainer.rl_done, _sampler_matches_learner(trainer)))
        return await evaluate()

    trainer._evaluate = checked_evaluate
    asyncio.run(trainer.run())
    assert seen[0] == (2, 0, True)   # the evaluation right after the warm start samples the warm-started policy
    assert seen[-1] == (2, 1, True)

    resumed = Trainer(from_config_dict(_config(**{**overrides, "train.steps": 2})), progress=False)
    assert resumed.rl_done == 1 and _sampler_matches_learner(resumed)
    changed = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b)), initial,
                           resumed.runtime.sampler.weights(0))
    assert any(jax.tree.leaves(changed))   # the restored policy, not the freshly built one
    resumed.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_trainer_runs_data_parallel_on_a_two_device_mesh(tmp_path):
    workdir = tmp_path / "run"
    env = dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run(_train_cmd(workdir, "--config.mesh.data=2", "--config.train.steps=2"), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    records = _records(workdir)
    assert [r["step"] for r in records] == [1, 2] and all("loss" in r for r in records)
    assert all(r["rows"] % 2 == 0 for r in records)


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.py")))
def test_every_shipped_config_file_loads_and_validates(name):
    """Each ``configs/*.py`` builds a config that ``from_config_dict`` accepts (types, sections, cross-checks)."""
    from rao_jax.config import config_file

    config = from_config_dict(config_file(ROOT / "configs" / f"{name}.py"))
    assert config.train.steps >= 1 and config.rollout.group_size >= 1


def test_step_statistics_merge_over_processes():
    from rao_jax.train import merge_stats

    parts = [{"trees": 2.0, "nodes": 6.0, "success": 1.0, "node_success": 0.5, "policy_lag": 0.0,
              "policy_lag_mean": 0.0, "response_tokens": 10.0},
             {"trees": 6.0, "nodes": 2.0, "success": 0.0, "node_success": 1.0, "policy_lag": 1.0,
              "policy_lag_mean": 1.0, "response_tokens": 5.0}]
    merged = merge_stats(parts)
    assert merged["trees"] == 8 and merged["nodes"] == 8 and merged["response_tokens"] == 15
    assert merged["success"] == pytest.approx(0.25)          # over trees
    assert merged["node_success"] == pytest.approx(0.625)    # over nodes
    assert merged["policy_lag"] == 1 and merged["policy_lag_mean"] == pytest.approx(0.25)
    # Per family (a mixed run): each family's success over its own trees, its trees summed.
    families = [{"trees_rows": 1.0, "success_rows": 1.0, "trees_hop": 0.0, "success_hop": 0.0},
                {"trees_rows": 3.0, "success_rows": 0.0, "trees_hop": 2.0, "success_hop": 0.5}]
    merged = merge_stats(families)
    assert (merged["trees_rows"], merged["trees_hop"]) == (4.0, 2.0)
    assert merged["success_rows"] == pytest.approx(0.25) and merged["success_hop"] == pytest.approx(0.5)


def test_family_stats_cover_every_family_of_the_run():
    from rao_jax.train_log import family_stats

    class Tree:
        def __init__(self, task_id, success):
            self.task_id, self.root = task_id, type("Root", (), {"success": success})()

    groups = [[Tree("a.1", 1.0), Tree("a.1", 0.0)], [Tree("b.1", 1.0), Tree("b.1", 1.0)]]
    stats = family_stats(groups, {"a.1": "rows", "b.1": "hop"}, ["rows", "hop", "craft"])
    assert stats == {"trees_rows": 2.0, "success_rows": 0.5, "trees_hop": 2.0, "success_hop": 1.0,
                     "trees_craft": 0.0, "success_craft": 0.0}
