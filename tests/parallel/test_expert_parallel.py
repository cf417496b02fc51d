"""Expert-parallel MoE on a fake 8-device CPU mesh (data 2 x expert 4, fsdp 2 x expert 2 x tensor 2)
against the single-device result; each mode of ``expert_parity_check.py`` runs in its own subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest
from flax import nnx

from rao_jax.models import Qwen3, tiny_config
from rao_jax.parallel.expert import configure_expert_parallel

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5


def run_check(mode: str) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("expert_parity_check.py")), mode],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# One mesh in the default run; the other and the capacity / error checks are `slow` (about a minute each).
@pytest.mark.parametrize("mesh", ["data2_expert4", pytest.param("fsdp2_expert2_tensor2", marks=pytest.mark.slow)])
def test_expert_parallel_step_matches_single_device(mesh):
    r = run_check(mesh)
    assert r["value_diff"] <= TOL and r["logits_diff"] <= TOL and r["grad_diff"] <= TOL, r
    assert r["expert_grad_rel_diff"] <= 1e-4 and r["expert_grad_min_max"] > 0, r  # expert gradients do flow
    assert r["all_to_all_in_hlo"] and r["expert_weight_devices"] == 8, r  # the expert-parallel path ran


@pytest.mark.slow
def test_expert_parallel_layer_capacity_and_errors():
    r = run_check("layer")
    for mesh in ("data2_expert4", "fsdp2_expert2_tensor2"):
        m = r[mesh]
        assert m["out_diff"] <= TOL and m["stats_rel_diff"] <= TOL and m["dropped"] == 0, r
        assert m["all_to_all_in_hlo"], r
    assert r["explicit"]["out_diff"] <= TOL and r["explicit"]["same_layout"], r
    cap = r["capacity"]
    assert cap["tight_dropped"] > 0 and cap["tight_diff"] > TOL, r  # drops are counted and do change the result
    assert cap["full_dropped"] == 0 and cap["full_diff"] <= TOL, r
    assert "divisible" in (r["indivisible_error"] or ""), r


def test_configure_expert_parallel():
    model = Qwen3(tiny_config("qwen3_moe"), param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert configure_expert_parallel(model, capacity_factor=2.0) == model.cfg.num_hidden_layers
    assert all(layer.mlp.capacity_factor == 2.0 for layer in model.layers)
    with pytest.raises(ValueError, match="capacity_factor must be positive"):
        configure_expert_parallel(model, capacity_factor=0.0)
