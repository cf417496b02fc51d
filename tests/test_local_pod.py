"""The real trainer as a pod of 2 processes x 4 CPU devices (``python -m rao_jax.local_pod``):
learner mesh fsdp=2 (across the processes) x tensor=4, one 4-device sampler replica per process."""

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
from tests.test_train import wait_for_a_step

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny_test.py"
POD = ["--config.mesh.fsdp=2", "--config.mesh.tensor=4", "--config.engine.replica_tensor=4",
       "--config.rollout.tasks_per_step=2", "--config.train.save_trees=true", "--config.train.export_hf=false"]


def _pod_cmd(workdir: Path, logs: Path, *extra: str, processes: int = 2, devices: int = 4) -> list[str]:
    return [sys.executable, "-m", "rao_jax.local_pod", f"--processes={processes}",
            f"--devices-per-process={devices}", f"--log-dir={logs}", "--", f"--config={TINY}",
            f"--config.workdir={workdir}", "--noprogress", *POD, *extra]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1")


def _records(workdir: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _trees(workdir: Path, step: int) -> dict[str, dict[int, list]]:
    """``{task_id: {process: [node token lists of each tree]}}`` of one RL step's saved trees."""
    out: dict[str, dict[int, list]] = {}
    for path in sorted((workdir / "trees" / f"step_{step}").glob("process_*/tree_*.jsonl")):
        process = int(path.parent.name.split("_")[1])
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        nodes = [line["tokens"] for line in lines[1:]]
        out.setdefault(lines[0]["task_id"], {}).setdefault(process, []).append(nodes)
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_pod_warm_starts_trains_evaluates_and_resumes_after_one_process_is_killed(tmp_path):
    from rao_jax.tasks import TaskSet

    workdir, logs = tmp_path / "run", tmp_path / "logs"
    args = ["--config.sft.steps=2", "--config.sft.num_tasks=4", "--config.sft.rows=4", "--config.train.steps=3",
            "--config.eval.num_tasks=2"]
    pod = subprocess.Popen(_pod_cmd(workdir, logs, *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 900
    try:   # kill -9 process 1 once the checkpoint of RL step 2 (global step 4) is complete
        while not (workdir / "checkpoints" / "4").is_dir():
            assert pod.poll() is None, f"the pod ended early:\n{pod.stdout.read()}"
            assert time.time() < deadline, "no checkpoint of RL step 2 within 15 minutes"
            time.sleep(0.2)
        os.kill(json.loads((logs / "pids.json").read_text())[1], signal.SIGKILL)
        first, _ = pod.communicate(timeout=300)
    finally:
        if pod.poll() is None:
            pod.kill()
    assert pod.returncode != 0                                         # the pod stops when a process dies
    assert first.count("Dataset rao_tasks downloaded and prepared") == 1    # built once, by process 0
    assert "Dataset rao_tasks downloaded" not in (logs / "process_1.log").read_text()
    assert "warm start: " in first

    second = subprocess.run(_pod_cmd(workdir, logs, *args), cwd=ROOT, env=_env(), capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from step 4" in second.stderr
    records = _records(workdir)
    assert [r["step"] for r in records] == [3, 4, 5] and [r["rl_step"] for r in records] == [1, 2, 3]
    # The tasks of an uninterrupted run, and each process rolled out its own half of them.
    config = from_config_dict({"workdir": str(workdir), "data": {"knobs": {"preset": "tiny", "per_difficulty": 6}},
                               "rollout": {"tasks_per_step": 2}})
    stream = TaskSet(config).train_iterator()
    assert [r["tasks"] for r in records] == [[t.task_id for t in stream.take(2)] for _ in range(3)]
    for r in records:
        (mine, theirs) = r["tasks_by_process"]
        assert mine and theirs and not set(mine) & set(theirs) and sorted(mine + theirs) == sorted(r["tasks"])
        assert "loss" in r and r["rows"] % 4 == 0
        trees = _trees(workdir, r["step"])
        assert {task: sorted(by) for task, by in trees.items()} == {t: [0] for t in mine} | {t: [1] for t in theirs}
    assert (workdir / "eval" / "step_5.json").exists()
    saved = json.loads((workdir / "eval" / "step_5.json").read_text())
    assert saved["recursive"]["all"]["trees"] == 2                     # one eval task per process, gathered
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == 5


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_greedy_pod_and_one_process_with_eight_devices_agree(tmp_path):
    """At temperature 0 the pod (2 x 4 devices) and one process with 8 devices sample the same trees
    for every task and end with the same parameters: the layout changes where work runs, not what
    it computes. The warm start and an entropy bonus give the updates non-zero gradients."""
    from rao_jax.checkpoint.orbax_io import restore_model

    args = ["--config.rollout.temperature=0", "--config.rl.entropy_coef=0.01", "--config.sft.steps=2",
            "--config.sft.num_tasks=4", "--config.sft.rows=4", "--config.train.steps=2", "--config.eval.num_tasks=1"]
    pod, single = tmp_path / "pod", tmp_path / "single"
    out = subprocess.run(_pod_cmd(pod, tmp_path / "logs", *args), cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    env = dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "rao_jax.train", f"--config={TINY}", f"--config.workdir={single}",
                          "--noprogress", *POD, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]

    for step in (3, 4):
        pod_trees, single_trees = _trees(pod, step), _trees(single, step)
        assert sorted(pod_trees) == sorted(single_trees) and len(pod_trees) == 2
        for task, by_process in pod_trees.items():
            (trees,) = by_process.values()
            assert trees == single_trees[task][0], f"step {step}, task {task}: the trees differ"
    pod_model = restore_model(pod / "checkpoints", 4)[0]
    single_model = restore_model(single / "checkpoints", 4)[0]
    import jax
    from flax import nnx

    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                         nnx.state(pod_model, nnx.Param), nnx.state(single_model, nnx.Param))
    assert max(jax.tree.leaves(diffs)) <= 1e-5
    # ... while each RL update did move them (the warm start's even more)
    assert all(r["grad_norm"] > 1e-4 for r in _records(pod) + _records(single))
    before = restore_model(single / "checkpoints", 2)[0]
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                         nnx.state(before, nnx.Param), nnx.state(single_model, nnx.Param))
    assert max(jax.tree.leaves(moved)) > 1e-4


@pytest.mark.timeout(300)
def test_a_tensor_group_across_two_hosts_is_refused_and_the_pod_stops(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rao_jax.local_pod", "--processes=2", "--devices-per-process=1",
                          f"--log-dir={tmp_path / 'logs'}", "--", f"--config={TINY}",
                          f"--config.workdir={tmp_path / 'run'}", "--config.mesh.tensor=2", "--noprogress"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "mesh.tensor (2) must divide the devices of each process ([1, 1])" in out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_to_the_pod_checkpoints_one_step_on_every_process_and_exits_75(tmp_path):
    """A preemption notice reaching the pod: every process stops after the same step (JAX's
    preemption sync point), the checkpoint of that step is saved, and the pod exits with 75."""
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    args = ["--config.train.steps=6", "--config.train.checkpoint_every=5"]
    pod = subprocess.Popen(_pod_cmd(workdir, logs, *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    wait_for_a_step(pod, workdir)
    pod.send_signal(signal.SIGTERM)
    output, _ = pod.communicate(timeout=600)
    assert pod.returncode == 75, output[-3000:]
    reached = max(r["step"] for r in _records(workdir))
    assert reached < 5
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [reached]
    assert f"preempted: saved a checkpoint of step {reached}" in (logs / "process_1.log").read_text()
