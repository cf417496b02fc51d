"""The memory plan of every shipped TPU config, and the paper configs' protocol."""

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


def test_paper_config_rejects_an_unknown_difficulty():
    with pytest.raises(Exception, match="train_difficulty must be one of"):
        plan_lib.load_config(str(ROOT / "configs" / "qwen3_4b_v5p.py:extreme"))
