"""Sampler replicas: routing by tree, the same tokens as one engine, versioned weights."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_replicas():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("replicas_check.py"))], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_node_of_a_tree_goes_to_one_replica_and_trees_alternate(two_replicas):
    r = two_replicas
    assert r["replicas"] == 2 and r["replica_devices"] == [[0, 1], [2, 3]]
    placed = r["placed"]
    for tree in range(4):
        assert placed[f"{tree}/0"] == placed[f"{tree}/1"] == tree % 2
    assert r["left"] == 0   # released sequences and finished trees are forgotten
    assert r["weights_spec"] == "P(None, 'tensor', None)"   # heads split inside the replica


def test_replicas_sample_what_one_engine_samples(two_replicas):
    assert two_replicas["tokens"] == two_replicas["reference"]


def test_a_sync_installs_a_new_version(two_replicas):
    r = two_replicas
    assert r["versions"] == [0] * 8 + [1]
    assert r["embed_ratio"] == pytest.approx(2.0)


def test_one_device_replica_reads_the_learner_arrays_until_the_next_sync():
    from rao_jax.layout import Layout, learner_init
    from rao_jax.models import tiny_config
    from rao_jax.sampling import EngineConfig
    from rao_jax.sampling.replicas import SamplerReplicas

    cfg = tiny_config("qwen3")
    layout = Layout.create(devices=jax.devices()[:1])
    init = learner_init(cfg, layout.learner, make_optimizers=lambda m: ())
    model, _ = init.merge(init.init())
    replicas = SamplerReplicas(layout, cfg, EngineConfig(max_rows=2, num_pages=80, max_seq_len=1024,
                                                         max_prefill_tokens=1024),
                               weights_dtype="float32", compute_dtype="float32",
                               learner_param_shardings=init.param_shardings, learner_dtype="float32")
    replicas.sync(nnx.state(model, nnx.Param), version=0)
    assert replicas.shares_learner_arrays
    assert replicas.weights(0)["embed"][...] is model.embed[...]          # no copy
    nnx.update(model, jax.tree.map(lambda x: x + 1, nnx.state(model, nnx.Param)))   # an update: new arrays
    assert not np.array_equal(replicas.weights(0)["embed"][...], model.embed[...])   # still the old policy
    replicas.release_weights()   # nothing to free: the arrays are the learner's
    assert replicas.has_weights
    replicas.sync(nnx.state(model, nnx.Param), version=1)
    assert replicas.weights(0)["embed"][...] is model.embed[...] and replicas.engines[0].version == 1
    completion = asyncio.run(replicas.submit([1, 2, 3], seq_id=("t", 0, 0)))
    assert completion.policy_version == 1
