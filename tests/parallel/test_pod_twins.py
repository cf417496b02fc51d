"""The memory plan is what a run allocates, and a sampler replica decodes without leaving its devices.

For each shipped pod config, its scaled-down twin (same learner mesh, replica shape, rules and dtypes;
2 layers, a small vocabulary and pool) is allocated on as many fake CPU devices as the slice has chips
by ``rao_jax.runtime.allocate``, the function a run allocates with, in a subprocess
(``pod_twin_check.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHIPS = {"qwen3_4b_v5p": 8, "qwen3_4b_v6e": 8, "qwen3_30b_a3b_v5p": 32, "qwen3_30b_a3b_v6e": 64}


@pytest.fixture(scope="module", params=sorted(CHIPS))
def twin(request, tmp_path_factory):
    name = request.param
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={CHIPS[name]}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("pod_twin_check.py")),
                          str(ROOT / "configs" / f"{name}.py"), str(tmp_path_factory.mktemp(name))],
                         capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return name, json.loads(out.stdout.strip().splitlines()[-1])


def test_every_device_holds_what_the_plan_counts(twin):
    name, r = twin
    assert r["devices"] == CHIPS[name]
    for item, planned in r["planned"].items():
        held = r["real"][item]
        assert planned > 0, item
        # the learner on every device; the replicas' weights and pools on the devices of the replicas
        assert len(held) == r["devices"], (item, sorted(held))
        for device, nbytes in held.items():
            assert abs(nbytes - planned) <= 0.01 * planned, (name, item, device, nbytes, planned)


def test_replicas_hold_bf16_weights_and_a_pool_split_over_tensor(twin):
    name, r = twin
    assert r["weights_dtypes"] == ["bfloat16"] and r["pool_dtype"] == "bfloat16"
    assert r["pool_spec"] == "P(None, None, 'tensor', None)"
    assert r["replicas"] == r["devices"] // r["replica_size"] and r["replica_size"] == 4


@pytest.mark.parametrize("step", ["decode", "prefill"])
def test_a_replica_step_gathers_nothing_and_stays_on_its_devices(twin, step):
    name, r = twin
    assert r["decode_devices"] == r["replica0_devices"]          # the program runs on replica 0 alone
    ops = dict(r[step]["ops"])
    assert "all-gather" not in ops and "all-to-all" not in ops, ops
    assert ops.get("all-reduce", 0) > 0                            # tensor parallel inside the replica
    assert 1 < r[step]["largest_group"] <= r["replica_size"]
