"""Orbax training checkpoints and the export_hf command."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rao_jax import export_hf
from rao_jax.checkpoint.hf import load_pretrained
from rao_jax.checkpoint.orbax_io import CheckpointNotFoundError, CheckpointStore, restore_model, save_model_checkpoint
from rao_jax.models import Qwen3, tiny_config
from tests.hf_utils import ragged_batch, torch_logits


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_save_restore_params_opt_state_and_metadata(tmp_path):
    model = Qwen3(tiny_config("qwen3_moe"), rngs=nnx.Rngs(0))
    params = _params(model)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-trivial moments and count
    meta = {"data_cursor": {"epoch": 1, "index": 37}, "rng": [1, 2], "note": "ok"}

    with CheckpointStore(tmp_path / "ckpt") as store:
        store.save(10, params, opt_state=opt_state, metadata=meta)
    with CheckpointStore(tmp_path / "ckpt", create=False) as store:
        restored = store.restore(params=params, opt_state=opt_state)
    assert restored.step == 10 and restored.metadata == meta
    _assert_trees_equal(restored.params, params)
    _assert_trees_equal(restored.opt_state, opt_state)
    assert type(restored.opt_state[0]).__name__ == "ScaleByAdamState"


def test_keep_n_latest_and_missing_steps(tmp_path):
    params = {"w": jnp.arange(4.0)}
    with CheckpointStore(tmp_path / "ckpt", max_to_keep=2) as store:
        for step in range(1, 6):
            store.save(step, {"w": params["w"] + step}, metadata={"step": step})
        store.wait()
        assert store.all_steps() == [4, 5]
        assert store.latest_step() == 5
        np.testing.assert_array_equal(store.restore(params=params).params["w"], params["w"] + 5)
        assert store.restore(4).metadata == {"step": 4}
        with pytest.raises(CheckpointNotFoundError, match=r"no step 2 in .*ckpt \(steps: \[4, 5\]\)"):
            store.restore(2)


def test_unfinished_checkpoint_is_never_restored(tmp_path):
    """A save killed mid-write leaves only Orbax's temporary folder, which restore ignores."""
    with CheckpointStore(tmp_path / "ckpt") as store:
        store.save(3, {"w": jnp.zeros(2)}, metadata={"step": 3})
    (tmp_path / "ckpt" / "4.orbax-checkpoint-tmp-1234567").mkdir()
    with CheckpointStore(tmp_path / "ckpt", create=False) as store:
        assert store.all_steps() == [3]
        assert store.restore().metadata == {"step": 3}


def test_missing_directory_and_empty_directory(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        CheckpointStore(tmp_path / "nope", create=False)
    (tmp_path / "empty").mkdir()
    with CheckpointStore(tmp_path / "empty", create=False) as store, \
            pytest.raises(CheckpointNotFoundError, match="no checkpoint in"):
        store.restore()


def test_orbax_to_export_hf_to_transformers_gives_identical_logits(hf_checkpoint, tmp_path):
    folder, reference = hf_checkpoint(True, norm_topk_prob=True)
    model, cfg = load_pretrained(folder)
    with CheckpointStore(tmp_path / "ckpt") as store:
        save_model_checkpoint(store, 7, model, metadata={"data_cursor": 3})

    again, again_cfg, restored = restore_model(tmp_path / "ckpt")
    assert restored.step == 7 and restored.metadata["data_cursor"] == 3 and again_cfg == cfg
    _assert_trees_equal(_params(again), _params(model))

    out = tmp_path / "exported"
    assert export_hf.main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(out), "--dtype", "float32"]) == 0
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    tokens, valid = ragged_batch(cfg.vocab_size, [11, 3, 8])
    np.testing.assert_array_equal(torch_logits(exported, tokens, valid), torch_logits(reference, tokens, valid))


def test_export_hf_command_line_errors(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    missing = subprocess.run([sys.executable, "-m", "rao_jax.export_hf", "--checkpoint", str(tmp_path / "nope"),
                              "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert missing.returncode == 2
    assert "export_hf: error: checkpoint directory" in missing.stderr and "does not exist" in missing.stderr
    assert not (tmp_path / "out").exists()

    with CheckpointStore(tmp_path / "ckpt") as store:
        store.save(1, {"w": jnp.zeros(2)}, metadata={})
    no_config = subprocess.run([sys.executable, "-m", "rao_jax.export_hf", "--checkpoint", str(tmp_path / "ckpt"),
                                "--out", str(tmp_path / "out"), "--step", "1"], capture_output=True, text=True,
                               env=env)
    assert no_config.returncode == 2 and "has no 'model_config' in its metadata" in no_config.stderr

    bad_size = subprocess.run([sys.executable, "-m", "rao_jax.export_hf", "--checkpoint", "x", "--out", "y",
                               "--max-shard-size", "lots"], capture_output=True, text=True, env=env)
    assert bad_size.returncode == 2 and "not a size: 'lots'" in bad_size.stderr


def test_parse_size():
    assert export_hf.parse_size("3GB") == 3 * 10**9
    assert export_hf.parse_size("512MiB") == 512 * 2**20
    assert export_hf.parse_size("1000") == 1000
