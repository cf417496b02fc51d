"""Same loss and gradients on one device and on an 8-device fake CPU mesh (data 2 x fsdp 2 x tensor 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rao_jax.parallel.sharding import TRAIN_RULES, make_mesh, partition_spec

ROOT = Path(__file__).resolve().parents[2]


# MoE under a mesh also runs in the default suite through tests/parallel/test_expert_parallel.py.
@pytest.mark.parametrize("model_type", ["qwen3", pytest.param("qwen3_moe", marks=pytest.mark.slow)])
def test_sharded_step_matches_single_device(model_type):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("mesh_parity_check.py")), model_type],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["value_diff"] <= 1e-5 and result["grad_diff"] <= 1e-5, result
    specs = result["specs"]
    # The mesh is really used: heads over tensor, the model dimension over fsdp, weights on several devices.
    assert specs["layers/0/self_attn/q_proj"] == "P('fsdp', 'tensor', None)"
    assert specs["embed"] == "P('tensor', 'fsdp')"
    assert result["q_proj_devices"] == 8


def test_partition_spec_drops_axes_that_do_not_divide():
    import jax

    mesh = make_mesh(devices=jax.devices()[:1])
    assert partition_spec(("embed", "mlp"), (64, 128), mesh, TRAIN_RULES) == jax.sharding.PartitionSpec(None, None)
    with pytest.raises(KeyError, match="logical axis 'bogus' has no sharding rule"):
        partition_spec(("bogus",), (4,), mesh, TRAIN_RULES)
    with pytest.raises(ValueError, match="needs 4 devices, 1 are available"):
        make_mesh(data=2, tensor=2, devices=jax.devices()[:1])
