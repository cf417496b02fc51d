"""tpu_scripts/: syntax, shellcheck, dry runs of every script for every shipped config, a whole slice's
life against a fake `gcloud` (tests/fake_gcloud.py), and host.sh run here against a fake trainer and uv."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["common", "create", "setup", "launch", "logs", "stop", "watch", "host"]
SHIPPED = ["qwen3_4b_v5p", "qwen3_4b_v6e", "qwen3_30b_a3b_v5p", "qwen3_30b_a3b_v6e"]
SLICES = {"qwen3_4b_v5p": "v5p-16", "qwen3_4b_v6e": "v6e-8", "qwen3_30b_a3b_v5p": "v5p-64",
          "qwen3_30b_a3b_v6e": "v6e-64"}
SH = ROOT / "tpu_scripts"


def _script(name: str) -> str:
    return str(SH / f"{name}.sh")


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_syntax_and_shellcheck(script):
    subprocess.run(["bash", "-n", _script(script)], check=True)
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, "-x", _script(script)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# Constructs bash 3.2 (macOS) does not have, or that fail there under `set -u` (an empty array).
BASH4_ONLY = [r"declare -A", r"\bmapfile\b", r"\breadarray\b", r"\$\{\w+,,", r"\$\{\w+\^\^", r"\|&", r"&>>",
              r";;&", r"\[\[ -v ", r"\bcoproc\b", r"local -n", r"\bwait -n\b", r"EPOCHSECONDS"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_bash4_only_constructs(script):
    text = (SH / f"{script}.sh").read_text()
    for pattern in BASH4_ONLY:
        assert not re.search(pattern, text), (script, pattern)
    # An array expanded whole must be guarded (`${a[@]+"${a[@]}"}`) unless it is never empty.
    always_filled = {"options", "query"}
    for match in re.finditer(r'(?<!\+)"\$\{(\w+)\[@\]\}"', text):
        guarded = text[max(0, match.start() - len(match.group(1)) - 8):match.start()].endswith(
            f"${{{match.group(1)}[@]+")
        assert guarded or match.group(1) in always_filled, (script, match.group(0))


def _dry(script: str, config: str, *args: str, **env: str) -> str:
    full = {**os.environ, "PROJECT": "proj", "GCS_BUCKET": "gs://b", "CONFIG": f"configs/{config}.py", **env}
    result = subprocess.run(["bash", _script(script), "--dry-run", *args], env=full, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _in_order(out: str, wants: list[str]) -> None:
    at = 0
    for want in wants:
        found = out.find(want, at)
        assert found >= 0, (want, out[at:])
        at = found + len(want)


@pytest.mark.parametrize("config", SHIPPED)
def test_dry_runs_print_each_scripts_commands(config):
    sl = SLICES[config]
    node, qr = f"rao-{sl}", f"rao-{sl}-qr"
    runtime = "v2-alpha-tpuv5" if sl.startswith("v5p") else "v2-alpha-tpuv6e"
    _in_order(_dry("create", config), [
        f"gcloud compute tpus queued-resources create {qr} --node-id={node} --runtime-version={runtime}",
        f"--accelerator-type={sl}",
        f"gcloud compute tpus queued-resources describe {qr}", "'--format=value(state.state)'"])   # the wait
    _in_order(_dry("setup", config), [
        "git -C", "archive", "HEAD", f"gcloud compute tpus tpu-vm scp /tmp/{config}-rao_jax.tar.gz {node}:",
        "--worker=all", f"gcloud compute tpus tpu-vm ssh {node}", "--worker=all",
        "PYTHON_VERSION=3.12", "host.sh install", "host.sh fetch"])
    model = "Qwen3-30B-A3B" if "30b" in config else "Qwen3-4B-Instruct-2507"
    assert f"CHECKPOINT_GCS=gs://b/models/{model}" in _dry("setup", config)
    _in_order(_dry("launch", config, "--config.train.steps=5"), [
        f"gcloud compute tpus tpu-vm ssh {node}", "--worker=all",
        f"--config configs/{config}.py --config.workdir=gs://b/rao/runs/{config}",
        f"--config.model.init_checkpoint=/tmp/rao/models/{model}", "--config.train.steps=5", "host.sh start"])
    _in_order(_dry("logs", config), [f"gcloud compute tpus tpu-vm ssh {node}", "--worker=all", "tail", "-F"])
    assert "host.sh status" in _dry("logs", config, "--status")
    _in_order(_dry("stop", config), [f"queued-resources describe {qr}", f"tpu-vm ssh {node}", "host.sh stop",
                                     f"gcloud compute tpus queued-resources delete {qr}", "--force --quiet"])
    # A request still in the queue has no hosts: stop.sh deletes it without ssh.
    queued = _dry("stop", config, DRY_RUN_STATE="WAITING_FOR_RESOURCES")
    assert "tpu-vm ssh" not in queued and f"queued-resources delete {qr}" in queued
    # Spot: code staged in the bucket, the job started by the slice's startup script; watch.sh re-creates.
    _in_order(_dry("create", config, "--config.train.steps=5", SPOT="1"), [
        f"gcloud storage cp /tmp/{config}-rao_jax.tar.gz gs://b/rao/runs/{config}/code/rao_jax.tar.gz",
        f"queued-resources create {qr}", "--spot", f"--metadata-from-file=startup-script=/tmp/{config}-startup.sh",
        f"queued-resources describe {qr}"])
    startup = Path(f"/tmp/{config}-startup.sh").read_text()
    assert "export TRAIN_ARGS=" in startup and "--config.train.steps=5" in startup and "set -- boot" in startup
    subprocess.run(["bash", "-n", f"/tmp/{config}-startup.sh"], check=True)
    _in_order(_dry("watch", config, SPOT="1", DRY_RUN_STATE="SUSPENDED", WATCH_ROUNDS="1"), [
        f"gcloud storage ls gs://b/rao/runs/{config}/DONE", f"queued-resources describe {qr}",
        f"queued-resources delete {qr}", f"queued-resources create {qr}", "--spot", "startup-script="])


def test_direct_tpu_vm_create_and_delete():
    create = _dry("create", "qwen3_4b_v6e", QUEUED="0")
    assert "gcloud compute tpus tpu-vm create rao-v6e-8" in create and "--version=v2-alpha-tpuv6e" in create
    assert "tpu-vm describe rao-v6e-8" in create
    stop = _dry("stop", "qwen3_4b_v6e", QUEUED="0", DRY_RUN_STATE="READY")
    assert "gcloud compute tpus tpu-vm delete rao-v6e-8" in stop


def test_service_account_is_passed_with_the_cloud_platform_scope():
    out = _dry("create", "qwen3_4b_v6e", SERVICE_ACCOUNT="rao@proj.iam.gserviceaccount.com")
    assert "--service-account=rao@proj.iam.gserviceaccount.com" in out
    assert "--scopes=https://www.googleapis.com/auth/cloud-platform" in out


def test_paper_config_copies_the_authors_wheel():
    setup = _dry("setup", "qwen3_4b_v5p", CONFIG="configs/qwen3_4b_v5p.py:hard")
    launch = _dry("launch", "qwen3_4b_v5p", CONFIG="configs/qwen3_4b_v5p.py:hard")
    wheel = "/tmp/rao/data/platoon_textcraft-0.3.0-py3-none-any.whl"
    assert f"PLATOON_WHEEL_GCS=gs://b/data/platoon_textcraft-0.3.0-py3-none-any.whl PLATOON_WHEEL={wheel}" in setup
    assert "--config configs/qwen3_4b_v5p.py:hard" in launch and f"--config.data.knobs.wheel={wheel}" in launch
    assert "--config.workdir=gs://b/rao/runs/qwen3_4b_v5p_hard" in launch
    assert "platoon" not in _dry("setup", "qwen3_30b_a3b_v5p")         # generated data: no wheel


def test_scripts_name_a_missing_config_file():
    env = dict(os.environ, DRY_RUN="1", CONFIG="configs/nope.py:hard")
    result = subprocess.run(["bash", _script("launch")], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "no file configs/nope.py" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# Against a fake gcloud.


class Cloud:
    """Runs the scripts with tests/fake_gcloud.py as `gcloud`; ``calls`` are the recorded argument lists."""

    def __init__(self, tmp: Path, **env: str):
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        gcloud = bin_dir / "gcloud"
        gcloud.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'fake_gcloud.py'} \"$@\"\n")
        gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
        self.state_path, self.log_path = tmp / "state.json", tmp / "calls.jsonl"
        self.log_path.write_text("")
        self.env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_GCLOUD_STATE=str(self.state_path),
                        FAKE_GCLOUD_LOG=str(self.log_path), PROJECT="proj", GCS_BUCKET="gs://b",
                        CONFIG="configs/qwen3_4b_v6e.py", POLL_SECONDS="0", ALLOW_DIRTY="1", **env)

    def run(self, script: str, *args: str, expect: int = 0, **env: str) -> subprocess.CompletedProcess:
        result = subprocess.run(["bash", _script(script), *args], env={**self.env, **env}, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == expect, (script, result.stdout, result.stderr)
        return result

    def calls(self) -> list[str]:
        return [" ".join(json.loads(line)) for line in self.log_path.read_text().splitlines()]

    def take_calls(self) -> list[str]:
        calls = self.calls()
        self.log_path.write_text("")
        return calls

    @property
    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def set_qr_state(self, name: str, value: str) -> None:
        state = self.state
        state["qr"][name]["state"] = value
        self.state_path.write_text(json.dumps(state))


def _kinds(calls: list[str]) -> list[str]:
    out = []
    for call in calls:
        words = call.split()
        out.append(" ".join(words[:2]) if words[0] == "storage" else " ".join(words[2:4]))
        if words[2:4] in (["tpu-vm", "ssh"],):
            out[-1] += " " + re.search(r"host\.sh (\w+)|tail", call).group(0)
    return out


def test_on_demand_slice_lifecycle(tmp_path):
    cloud = Cloud(tmp_path)
    cloud.run("create")
    assert _kinds(cloud.take_calls()) == ["queued-resources create", "queued-resources describe",
                                          "queued-resources describe"]          # waited for ACTIVE
    cloud.run("setup")
    assert _kinds(cloud.take_calls()) == ["tpu-vm scp", "tpu-vm ssh host.sh install"]
    cloud.run("launch", "--config.train.steps=3")
    (launch,) = cloud.take_calls()
    assert "--config.train.steps=3" in launch and "host.sh start" in launch
    cloud.run("stop")
    assert _kinds(cloud.take_calls()) == ["queued-resources describe", "tpu-vm ssh host.sh stop",
                                          "queued-resources delete"]
    assert cloud.state["qr"] == {}


def test_spot_slice_resumes_after_a_preemption_and_is_deleted_when_done(tmp_path):
    cloud = Cloud(tmp_path, SPOT="1")
    cloud.run("create", "--config.train.steps=7")
    assert _kinds(cloud.take_calls()) == ["storage cp", "queued-resources create", "queued-resources describe",
                                          "queued-resources describe"]
    assert cloud.state["boots"] == ["rao-v6e-8-qr"]                       # the startup script started the job
    first = cloud.state["qr"]["rao-v6e-8-qr"]
    assert first["spot"] and "--config.train.steps=7" in first["startup"] and "set -- boot" in first["startup"]
    assert "gs://b/rao/runs/qwen3_4b_v6e/code/rao_jax.tar.gz" in cloud.state["objects"]
    assert "nothing to do" in cloud.run("setup").stderr and cloud.take_calls() == []
    cloud.run("launch", "--config.train.steps=7")                          # a restart, as root under /opt/rao
    (launch,) = cloud.take_calls()
    assert "sudo env RAO_BASE=/opt/rao" in launch and "/opt/rao/rao_jax/tpu_scripts/host.sh start" in launch

    cloud.set_qr_state("rao-v6e-8-qr", "SUSPENDED")                        # preempted
    cloud.run("launch", expect=1)                                          # no hosts to reach
    cloud.take_calls()
    cloud.run("watch", "--config.train.steps=7", WATCH_ROUNDS="3")
    assert _kinds(cloud.take_calls()) == [
        "storage ls", "queued-resources describe", "queued-resources delete", "queued-resources create",
        "storage ls", "queued-resources describe",
        "storage ls", "queued-resources describe"]                          # re-created, then ACTIVE again
    again = cloud.state["qr"]["rao-v6e-8-qr"]
    assert again["state"] == "ACTIVE" and again["startup"] == first["startup"]
    assert cloud.state["boots"] == ["rao-v6e-8-qr", "rao-v6e-8-qr"]        # and the job resumed

    state = cloud.state                                                    # the run finishes
    state["objects"]["gs://b/rao/runs/qwen3_4b_v6e/DONE"] = True
    cloud.state_path.write_text(json.dumps(state))
    cloud.run("watch")
    assert _kinds(cloud.take_calls()) == ["storage ls", "queued-resources describe", "tpu-vm ssh host.sh stop",
                                          "queued-resources delete"]
    assert cloud.state["qr"] == {}


def test_stop_deletes_a_request_still_in_the_queue(tmp_path):
    cloud = Cloud(tmp_path, NO_WAIT="1")
    cloud.run("create")
    cloud.take_calls()
    assert cloud.state["qr"]["rao-v6e-8-qr"]["state"] == "WAITING_FOR_RESOURCES"
    state = cloud.state
    state["qr"]["rao-v6e-8-qr"]["provision_after"] = 10**6
    cloud.state_path.write_text(json.dumps(state))
    out = cloud.run("stop")
    assert _kinds(cloud.take_calls()) == ["queued-resources describe", "queued-resources delete"]
    assert "no hosts to stop" in out.stderr and cloud.state["qr"] == {}
    assert "nothing to delete" in cloud.run("stop").stderr                   # a second stop finds nothing


def test_create_gives_up_waiting_after_the_timeout_and_says_so(tmp_path):
    cloud = Cloud(tmp_path, WAIT_TIMEOUT="3")
    cloud.state_path.write_text(json.dumps({"provision_after": 10**6}))
    out = cloud.run("create", expect=1)
    assert "still WAITING_FOR_RESOURCES after 3 s" in out.stderr
    assert _kinds(cloud.calls()).count("queued-resources describe") == 4


def test_setup_refuses_uncommitted_changes(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(SH, repo / "tpu_scripts")
    (repo / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "qwen3_4b_v6e.py", repo / "configs")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "x"], check=True)
    (repo / "configs" / "qwen3_4b_v6e.py").write_text((repo / "configs" / "qwen3_4b_v6e.py").read_text() + "\n#\n")
    env = dict(os.environ, PROJECT="p", CONFIG="configs/qwen3_4b_v6e.py")
    env.pop("ALLOW_DIRTY", None)
    result = subprocess.run(["bash", str(repo / "tpu_scripts" / "setup.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "uncommitted changes" in result.stderr and "qwen3_4b_v6e.py" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# host.sh, run here: a fake trainer (exit 75 = preempted, as rao_jax.train) and a fake uv.

FAKE_TRAINER = """#!/usr/bin/env bash
if [[ "$1" == "-c" ]]; then exec {python} "$@"; fi
echo "run $*" >> "$FAKE_TRAINER_LOG"
runs=$(grep -c '^run' "$FAKE_TRAINER_LOG")
case "$FAKE_TRAINER_MODE" in
  preempt-then-finish) [[ "$runs" -ge 2 ]] && exit 0; exit 75 ;;
  forever) trap 'echo term >> "$FAKE_TRAINER_LOG"; exit 75' TERM; while true; do sleep 0.1; done ;;
esac
"""


def _host(tmp: Path, cloud: Cloud, mode: str, **env: str) -> dict:
    base = tmp / "host"
    (base / "rao_jax").mkdir(parents=True)
    (base / "rao_venv" / "bin").mkdir(parents=True)
    python = base / "rao_venv" / "bin" / "python"
    python.write_text(FAKE_TRAINER.format(python=sys.executable))
    python.chmod(0o755)
    return {**cloud.env, "RAO_BASE": str(base), "SUDO": "", "FAKE_TRAINER_LOG": str(tmp / "trainer.log"),
            "FAKE_TRAINER_MODE": mode, "DONE_GCS": "gs://b/run/DONE", "STOP_WAIT": "10",
            "TRAIN_ARGS": "--config configs/x.py --config.train.steps=3", **env}


def _host_sh(env: dict, action: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", _script("host"), action], env=env, capture_output=True, text=True, timeout=60)


def test_host_resumes_after_a_preemption_exit_and_marks_the_run_done(tmp_path):
    cloud = Cloud(tmp_path)
    env = _host(tmp_path, cloud, "preempt-then-finish")
    result = _host_sh(env, "supervise")
    assert result.returncode == 0, result.stderr
    runs = (tmp_path / "trainer.log").read_text().splitlines()
    assert runs == ["run -m rao_jax.train --distributed --config configs/x.py --config.train.steps=3"] * 2
    assert "exit 75 is a preemption notice" in result.stderr
    assert cloud.state["objects"] == {"gs://b/run/DONE": True}
    assert (tmp_path / "host" / "rao_train.rc").read_text().strip() == "0"


def test_host_start_stop_status(tmp_path):
    cloud = Cloud(tmp_path)
    env = _host(tmp_path, cloud, "forever")
    assert "no trainer started" in _host_sh(env, "status").stdout
    started = _host_sh(env, "start")
    assert started.returncode == 0 and "running (pid" in started.stdout, started.stderr
    pid = int((tmp_path / "host" / "rao_train.pid").read_text())
    again = _host_sh(env, "start")                        # a second start stops the first trainer first
    assert "SIGTERM to trainer" in again.stderr and "running (pid" in again.stdout
    assert int((tmp_path / "host" / "rao_train.pid").read_text()) != pid
    stopped = _host_sh(env, "stop")
    assert stopped.returncode == 0 and "SIGTERM to trainer" in stopped.stderr
    deadline = time.time() + 20
    while "exited with code" not in _host_sh(env, "status").stdout and time.time() < deadline:
        time.sleep(0.2)
    assert "exited with code 75" in _host_sh(env, "status").stdout
    time.sleep(1)
    log = (tmp_path / "trainer.log").read_text().splitlines()
    assert log.count("term") == 2 and sum(line.startswith("run") for line in log) == 2   # no restart after stop
    assert "DONE" not in json.dumps(cloud.state.get("objects", {}))


def test_host_install_makes_a_supported_python_environment_and_fetches_once(tmp_path):
    cloud = Cloud(tmp_path)
    env = _host(tmp_path, cloud, "forever")
    (tmp_path / "host" / "rao_venv" / "bin" / "python").unlink()
    uv = tmp_path / "uv"
    uv.write_text(f"""#!/usr/bin/env bash
echo "uv $*" >> {tmp_path / 'uv.log'}
if [[ "$1" == venv ]]; then mkdir -p "$4/bin" && ln -s {sys.executable} "$4/bin/python"; fi
""")
    uv.chmod(0o755)
    env.update(UV=str(uv), CHECKPOINT_GCS="gs://b/models/Q", CHECKPOINT_DIR=str(tmp_path / "ckpt"))
    state = {"objects": {"gs://b/models/Q/config.json": True}}
    cloud.state_path.write_text(json.dumps(state))
    result = _host_sh(env, "install")
    assert result.returncode == 0, result.stderr
    venv = tmp_path / "host" / "rao_venv"
    assert (tmp_path / "uv.log").read_text().splitlines() == [
        f"uv venv --python 3.12 {venv}", f"uv pip install --python {venv}/bin/python -q -e .[tpu]"]
    for _ in range(2):
        assert _host_sh(env, "fetch").returncode == 0
    copies = [c for c in cloud.calls() if c.startswith("storage cp")]
    assert copies == [f"storage cp -r gs://b/models/Q/* {tmp_path / 'ckpt'}/"]     # the second fetch skips it


def test_startup_script_sets_a_fresh_host_up_and_runs_the_job_to_the_end(tmp_path):
    """The spot path on one 'host' here: create.sh stages the committed code in the (fake) bucket and
    writes the startup script; the script, run as a fresh VM would at boot, fetches and unpacks the code,
    makes the environment (fake uv), copies the checkpoint, runs the trainer (fake: preempted once, then
    done), and marks the run finished; at the next boot it does nothing."""
    bucket = tmp_path / "bucket"
    cloud = Cloud(tmp_path, SPOT="1", FAKE_GCS_DIR=str(bucket), CHECKPOINT_DIR=str(tmp_path / "ckpt"),
                  PLATOON_WHEEL=str(tmp_path / "data" / "platoon.whl"))
    state = {"objects": {"gs://b/models/Qwen3-4B-Instruct-2507/config.json": True,
                         "gs://b/data/platoon_textcraft-0.3.0-py3-none-any.whl": True}}
    cloud.state_path.write_text(json.dumps(state))
    cloud.run("create", "--config.train.steps=7")
    startup = Path("/tmp/qwen3_4b_v6e-startup.sh")
    assert (bucket / "b/rao/runs/qwen3_4b_v6e/code/rao_jax.tar.gz").stat().st_size > 0
    base = tmp_path / "vm"
    uv = tmp_path / "uv"
    uv.write_text("#!/usr/bin/env bash\n"
                  f"echo \"uv $*\" >> {tmp_path / 'uv.log'}\n"
                  'if [[ "$1" == venv ]]; then mkdir -p "$4/bin" && cp "$FAKE_TRAINER_SRC" "$4/bin/python" '
                  '&& chmod +x "$4/bin/python"; fi\n')
    uv.chmod(0o755)
    trainer = tmp_path / "fake_python"
    trainer.write_text(FAKE_TRAINER.format(python=sys.executable))
    env = {**cloud.env, "RAO_BASE": str(base), "SUDO": "", "UV": str(uv), "FAKE_TRAINER_SRC": str(trainer),
           "FAKE_TRAINER_LOG": str(tmp_path / "trainer.log"), "FAKE_TRAINER_MODE": "preempt-then-finish"}
    for name in ("CHECKPOINT_DIR", "PLATOON_WHEEL"):
        env.pop(name)                  # the startup script carries its own settings
    boot = subprocess.run(["bash", str(startup)], env=env, capture_output=True, text=True, timeout=120)
    assert boot.returncode == 0, boot.stderr
    assert (base / "rao_jax" / "tpu_scripts" / "host.sh").is_file()              # the code, unpacked
    assert (base / "rao_jax" / "configs" / "qwen3_4b_v6e.py").is_file()
    assert "uv venv --python 3.12" in (tmp_path / "uv.log").read_text()
    runs = [line for line in (tmp_path / "trainer.log").read_text().splitlines() if line.startswith("run -m")]
    assert len(runs) == 2 and "--config configs/qwen3_4b_v6e.py" in runs[0] and "--config.train.steps=7" in runs[0]
    assert "gs://b/rao/runs/qwen3_4b_v6e/DONE" in cloud.state["objects"]
    copies = [c for c in cloud.calls() if c.startswith("storage cp -r gs://b/models/")]
    assert copies == [f"storage cp -r gs://b/models/Qwen3-4B-Instruct-2507/* {tmp_path / 'ckpt'}/"]
    assert (tmp_path / "data" / "platoon.whl").is_file()
    assert f"--config.data.knobs.wheel={tmp_path / 'data' / 'platoon.whl'}" in runs[0]
    again = subprocess.run(["bash", str(startup)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "the run has finished, nothing to do" in again.stderr
