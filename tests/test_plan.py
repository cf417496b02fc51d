"""The memory plan of every shipped TPU config, and the tpu_scripts (syntax, shellcheck, dry run)."""

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from rao_jax import plan as plan_lib
from rao_jax.config import default_config, from_config_dict
from rao_jax.models import ModelConfig, Qwen3

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["qwen3_4b_v5p", "qwen3_4b_v6e", "qwen3_30b_a3b_v5p", "qwen3_30b_a3b_v6e"]
SCRIPTS = ["common", "create", "setup", "launch", "logs", "stop"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_fits_its_slice(name, capsys):
    code = plan_lib.main(["--config", str(ROOT / "configs" / f"{name}.py")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(FITS)" in out
    cfg = plan_lib.load_config(str(ROOT / "configs" / f"{name}.py"))
    assert cfg.slice and f"slice {cfg.slice}:" in out
    assert (cfg.optim.learning_rate, cfg.optim.b1, cfg.optim.b2) == (3e-6, 0.9, 0.95)
    assert (cfg.rollout.tasks_per_step, cfg.rollout.group_size, cfg.rollout.max_new_tokens) == (16, 8, 512)


def test_over_budget_config_fails_naming_the_largest_item(tmp_path, capsys):
    config = tmp_path / "too_small.py"
    config.write_text(textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("base", {str(ROOT / "configs" / "qwen3_4b_v6e.py")!r})
        base = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(base)

        def get_config():
            config = base.get_config()
            config.slice = "v6e-1"
            config.mesh.fsdp = 1
            config.mesh.tensor = 1
            config.engine.replica_tensor = 1
            config.train.micro_batch_rows = 1
            return config
    """))
    assert plan_lib.main(["--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert "OVER BUDGET" in captured.out
    assert "OVER BUDGET on v6e-1" in captured.err and "largest item: kv page pool" in captured.err


def test_mesh_must_match_the_slice(capsys):
    assert plan_lib.main(["--config", str(ROOT / "configs" / "qwen3_4b_v5p.py"), "--slice", "v5p-64"]) == 2
    assert "32 chips" in capsys.readouterr().err


def test_slice_names():
    assert plan_lib.parse_slice("v5p-16").chips == 8 and plan_lib.parse_slice("v5p-16").hosts == 2
    assert plan_lib.parse_slice("v6e-8").hosts == 1 and plan_lib.parse_slice("v6e-64").hosts == 16
    with pytest.raises(ValueError):
        plan_lib.parse_slice("v4-8")


def test_tiny_single_device_plan_equals_the_real_model():
    """One device, fp32 everywhere: the replica reads the learner's arrays (no copy counted)."""
    d = default_config()
    d.slice = "v6e-1"
    d.engine.num_pages = 256
    d.train.micro_batch_rows = 1
    cfg = from_config_dict(d)
    p = plan_lib.plan(cfg)
    model_cfg = ModelConfig.from_json_file(ROOT / cfg.model.config_json)
    state = jax.jit(lambda: nnx.state(Qwen3(model_cfg, param_dtype=jnp.float32, rngs=nnx.Rngs(0)), nnx.Param))()
    real = sum(x.nbytes for x in jax.tree.leaves(state))
    items = {i.name: i.bytes for i in p.items}
    assert items["parameters"] == real and p.param_count * 4 == real
    assert items["adamw moments (2)"] == 2 * real + 8   # mu, nu, and the step counts of optax and nnx
    assert items["sampler weights"] == 0
    assert items["kv page pool"] == model_cfg.num_hidden_layers * 256 * 16 * 2 * model_cfg.num_key_value_heads * \
        model_cfg.head_dim * 4


def test_replicas_must_fit_one_host(capsys):
    assert plan_lib.main(["--config", str(ROOT / "configs" / "qwen3_4b_v5p.py"),
                          "--set", "engine.replica_tensor=8"]) == 2
    assert "does not fit the 4 chips of one v5p-16 host" in capsys.readouterr().err


def test_sampler_weights_resident_only_with_staleness():
    cfg = plan_lib.load_config(str(ROOT / "configs" / "qwen3_4b_v5p.py"))
    phase = {i.name: i.phase for i in plan_lib.plan(cfg).items}["sampler weights"]
    assert phase == "sample"
    stale = from_config_dict({**_dict(cfg), "rl": {**_dict(cfg)["rl"], "staleness": 1}})
    assert {i.name: i.phase for i in plan_lib.plan(stale).items}["sampler weights"] == "resident"


def _dict(cfg):
    from rao_jax.config import to_dict

    return to_dict(cfg)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_syntax_and_shellcheck(script):
    path = ROOT / "tpu_scripts" / f"{script}.sh"
    subprocess.run(["bash", "-n", str(path)], check=True)
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(os.sys.executable).parent))
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, "-x", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


EXPECTED = {
    "create": ["gcloud compute tpus queued-resources create rao-v5p-64-qr", "--accelerator-type=v5p-64",
               "--runtime-version=v2-alpha-tpuv5", "--node-id=rao-v5p-64"],
    "setup": ["git -C", "gcloud compute tpus tpu-vm scp", "--worker=all", "pip install -q -e",
              "gs://b/models/Qwen3-30B-A3B"],
    "launch": ["gcloud compute tpus tpu-vm ssh rao-v5p-64", "--worker=all",
               "-m rao_jax.train --distributed --config configs/qwen3_30b_a3b_v5p.py", "--config.workdir=gs://b/rao/runs/",
               "--config.train.steps=5"],
    "logs": ["gcloud compute tpus tpu-vm ssh rao-v5p-64", "--worker=0", "tail"],
    "stop": ["--worker=all", "kill", "gcloud compute tpus queued-resources delete rao-v5p-64-qr", "--quiet"],
}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_dry_run_prints_the_gcloud_commands(script):
    env = dict(os.environ, PROJECT="proj", GCS_BUCKET="gs://b", CONFIG="configs/qwen3_30b_a3b_v5p.py")
    result = subprocess.run(["bash", str(ROOT / "tpu_scripts" / f"{script}.sh"), "--dry-run",
                             "--config.train.steps=5"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for want in EXPECTED[script] + ["--project=proj"] * (script != "setup"):
        assert want in result.stdout, (want, result.stdout)


def test_direct_tpu_vm_create_and_delete():
    env = dict(os.environ, DRY_RUN="1", QUEUED="0", CONFIG="configs/qwen3_4b_v6e.py")
    create = subprocess.run(["bash", str(ROOT / "tpu_scripts/create.sh")], env=env, capture_output=True, text=True)
    assert "gcloud compute tpus tpu-vm create rao-v6e-8" in create.stdout
    assert "--version=v2-alpha-tpuv6e" in create.stdout
    stop = subprocess.run(["bash", str(ROOT / "tpu_scripts/stop.sh")], env=env, capture_output=True, text=True)
    assert "gcloud compute tpus tpu-vm delete rao-v6e-8" in stop.stdout


@pytest.mark.parametrize("name", ["qwen3_4b_v5p", "qwen3_4b_v6e"])
@pytest.mark.parametrize("arg", ["", "medium", "hard"])
def test_paper_configs_run_the_paper_protocol(name, arg):
    cfg = plan_lib.load_config(str(ROOT / "configs" / f"{name}.py") + (f":{arg}" if arg else ""))
    assert cfg.data.family == "textcraft_official"
    assert cfg.data.train_difficulties == ((arg or "medium"),)
    assert dict(cfg.data.knobs)["errors"] == "return" and dict(cfg.data.knobs)["wheel"].endswith(".whl")
    assert cfg.rollout.root_budget == 200
    assert (cfg.eval.split, cfg.eval.num_tasks, cfg.eval.difficulties, cfg.eval.temperature) == ("val", 100, (), 1.0)
    assert "recursive" in cfg.eval.modes
    assert plan_lib.main(["--config", str(ROOT / "configs" / f"{name}.py") + (f":{arg}" if arg else "")]) == 0


def test_paper_config_rejects_an_unknown_difficulty():
    with pytest.raises(Exception, match="train_difficulty must be one of"):
        plan_lib.load_config(str(ROOT / "configs" / "qwen3_4b_v5p.py:extreme"))


def test_dry_run_copies_the_authors_wheel_for_a_paper_config():
    env = dict(os.environ, PROJECT="proj", GCS_BUCKET="gs://b", CONFIG="configs/qwen3_4b_v5p.py:hard")
    out = {}
    for script in ("setup", "launch"):
        result = subprocess.run(["bash", str(ROOT / "tpu_scripts" / f"{script}.sh"), "--dry-run"], env=env,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        out[script] = result.stdout
    wheel = "/tmp/rao/data/platoon_textcraft-0.3.0-py3-none-any.whl"
    copy = [line for line in out["setup"].splitlines() if "gs://b/data/platoon_textcraft-0.3.0-py3-none-any.whl" in line]
    assert len(copy) == 1 and "gcloud storage cp" in copy[0] and copy[0].rstrip("'").endswith(wheel)
    assert "--config configs/qwen3_4b_v5p.py:hard" in out["launch"]
    assert f"--config.data.knobs.wheel={wheel}" in out["launch"]
    assert "--config.workdir=gs://b/rao/runs/qwen3_4b_v5p_hard" in out["launch"]
    # a config on generated data copies no wheel
    env["CONFIG"] = "configs/qwen3_30b_a3b_v5p.py"
    setup = subprocess.run(["bash", str(ROOT / "tpu_scripts" / "setup.sh"), "--dry-run"], env=env,
                           capture_output=True, text=True, timeout=30)
    assert "platoon" not in setup.stdout


def test_scripts_name_a_missing_config_file():
    env = dict(os.environ, DRY_RUN="1", CONFIG="configs/nope.py:hard")
    result = subprocess.run(["bash", str(ROOT / "tpu_scripts" / "launch.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "no file configs/nope.py" in result.stderr
