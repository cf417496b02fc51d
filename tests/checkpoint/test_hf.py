"""Hugging Face import / export: round trips through transformers, sharding, and bad input."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rao_jax.checkpoint import hf as hf_lib
from rao_jax.checkpoint.hf import CheckpointError, load_pretrained, save_pretrained
from rao_jax.models.config import ConfigError
from tests.hf_utils import ragged_batch, torch_logits

ROUND_TRIP_CASES = {
    "dense_tied": (False, dict(tie_word_embeddings=True)),
    "dense_untied_bias": (False, dict(tie_word_embeddings=False, attention_bias=True)),
    "moe": (True, dict(decoder_sparse_step=2, mlp_only_layers=[0], norm_topk_prob=True)),
}


def _load_transformers(folder, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()


@pytest.mark.parametrize("case", ROUND_TRIP_CASES)
def test_hf_to_rao_to_hf_gives_identical_logits_and_tensors(hf_checkpoint, tmp_path, case):
    from safetensors import safe_open

    moe, overrides = ROUND_TRIP_CASES[case]
    folder, reference = hf_checkpoint(moe, **overrides)
    model, cfg = load_pretrained(folder)
    out = save_pretrained(model, cfg, tmp_path / "export", dtype="float32")

    reloaded = _load_transformers(out)
    tokens, valid = ragged_batch(cfg.vocab_size, [9, 4, 13])
    np.testing.assert_array_equal(torch_logits(reloaded, tokens, valid), torch_logits(reference, tokens, valid))
    with safe_open(folder / "model.safetensors", "np") as a, safe_open(out / "model.safetensors", "np") as b:
        assert set(b.keys()) == set(a.keys()) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
        for key in b.keys():  # noqa: SIM118 (safe_open is not a dict)
            np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key), err_msg=key)
        assert b.metadata() == {"format": "pt"}


def test_bfloat16_export_is_sharded_with_index_and_loads_everywhere(hf_checkpoint, tmp_path):
    import torch

    folder, _ = hf_checkpoint(True)
    model, cfg = load_pretrained(folder)
    out = save_pretrained(model, cfg, tmp_path / "sharded", dtype="bfloat16", max_shard_bytes=8_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).exists() for s in shards)
    assert index["metadata"]["total_size"] == sum(
        os.path.getsize(out / s) for s in shards) - sum(_header_bytes(out / s) for s in shards)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"

    reloaded = _load_transformers(out, dtype="auto")  # "auto": use config.json's dtype (4.x default is fp32)
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    again, _ = load_pretrained(out, dtype=jnp.float32)
    expected = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), _params(model))
    jax.tree.map(np.testing.assert_array_equal, _params(again), expected)


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _header_bytes(path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_tokenizer_files_are_copied_and_a_broken_one_refused(hf_checkpoint, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    folder, _ = hf_checkpoint(False)
    tok = tmp_path / "tok"
    tok.mkdir()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["some text to learn from"] * 4, trainer)
    bpe.save(str(tok / "tokenizer.json"))
    (tok / "tokenizer_config.json").write_text('{"model_max_length": 7}')
    (tok / "unrelated.txt").write_text("not copied")
    model, cfg = load_pretrained(folder)
    out = save_pretrained(model, cfg, tmp_path / "with_tok", tokenizer_dir=tok)
    assert (out / "tokenizer.json").read_bytes() == (tok / "tokenizer.json").read_bytes()
    assert (out / "tokenizer_config.json").exists() and not (out / "unrelated.txt").exists()

    (tok / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(CheckpointError, match="not a valid Hugging Face tokenizer.json"):
        save_pretrained(model, cfg, tmp_path / "broken", tokenizer_dir=tok)
    assert not (tmp_path / "broken").exists()


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error that names the file or tensor.


def _rewrite_tensors(folder, edit):
    """Rewrites model.safetensors after ``edit(dict of numpy tensors)``."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_config_json(hf_checkpoint):
    folder, _ = hf_checkpoint(False)
    (folder / "config.json").unlink()
    with pytest.raises(ConfigError, match="no config.json at .*config.json"):
        load_pretrained(folder)


def test_unsupported_model_type(hf_checkpoint):
    folder, _ = hf_checkpoint(False)
    raw = json.loads((folder / "config.json").read_text())
    raw["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="config.json: unsupported model_type 'llama'"):
        load_pretrained(folder)


def test_missing_tensor(hf_checkpoint):
    folder, _ = hf_checkpoint(True)
    _rewrite_tensors(folder, lambda t: t.pop("model.layers.1.mlp.experts.2.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.mlp.experts.2.up_proj.weight'"):
        load_pretrained(folder)


def test_misshaped_tensor(hf_checkpoint):
    folder, _ = hf_checkpoint(False)

    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
    _rewrite_tensors(folder, edit)
    with pytest.raises(CheckpointError, match=r"'model.layers.0.self_attn.k_proj.weight' in .*model.safetensors "
                                              r"has shape \(8, 32\), but config.json implies \(16, 32\)"):
        load_pretrained(folder)


def test_unexpected_tensor(hf_checkpoint):
    folder, _ = hf_checkpoint(False)

    def edit(t):
        t["model.layers.7.mlp.gate_proj.weight"] = np.zeros((4, 4), np.float32)
    _rewrite_tensors(folder, edit)
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.layers.7.mlp.gate_proj.weight'"):
        load_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_unreadable_weights_file(hf_checkpoint, damage):
    folder, _ = hf_checkpoint(False)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 8 + b"{not json",
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"model.safetensors"):
        load_pretrained(folder)


def test_index_naming_a_missing_shard(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint(False)
    model, cfg = load_pretrained(folder)
    out = save_pretrained(model, cfg, tmp_path / "sharded", max_shard_bytes=4_000)
    victim = sorted(p for p in os.listdir(out) if p.startswith("model-"))[1]
    (out / victim).unlink()
    with pytest.raises(CheckpointError, match=f"lists {victim}, which does not exist"):
        load_pretrained(out)


def test_no_weights_at_all(hf_checkpoint):
    folder, _ = hf_checkpoint(False)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has neither model.safetensors nor model.safetensors.index.json"):
        load_pretrained(folder)


def test_failed_export_leaves_nothing_behind(hf_checkpoint, tmp_path, monkeypatch):
    folder, _ = hf_checkpoint(False)
    model, cfg = load_pretrained(folder)
    calls = []
    real_write = hf_lib.write_file

    def failing_write(path, plans, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_write(path, plans, metadata)

    monkeypatch.setattr(hf_lib, "write_file", failing_write)
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(model, cfg, tmp_path / "out", max_shard_bytes=4_000)
    assert len(calls) == 3
    assert sorted(os.listdir(tmp_path)) == ["hf"], "no partial output or temporary folder may remain"


def test_export_refuses_non_empty_folder_and_overwrites_atomically(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint(False)
    model, cfg = load_pretrained(folder)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is not empty"):
        save_pretrained(model, cfg, out)
    assert (out / "precious.txt").read_text() == "keep me"
    save_pretrained(model, cfg, out, overwrite=True)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["hf", "out"]


def test_bad_export_dtype(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint(False)
    model, cfg = load_pretrained(folder)
    with pytest.raises(CheckpointError, match="unsupported export dtype 'int8'"):
        save_pretrained(model, cfg, tmp_path / "x", dtype="int8")
    assert not (tmp_path / "x").exists()


def test_export_and_import_hold_one_tensor_at_a_time_in_host_memory(tmp_path):
    """Export holds about one tensor in host memory at a time; import never holds two copies."""
    import tracemalloc

    from flax import nnx as nnx_

    from rao_jax.models import Qwen3, tiny_config

    cfg = tiny_config("qwen3_moe", vocab_size=64, hidden_size=64, num_hidden_layers=12, mlp_only_layers=(0, 5),
                      num_experts=4, moe_intermediate_size=64, intermediate_size=128)
    model = Qwen3(cfg, rngs=nnx_.Rngs(0))
    leaves = jax.tree.leaves(nnx_.state(model, nnx_.Param))
    total, largest = sum(x.nbytes for x in leaves), max(x.nbytes for x in leaves)
    assert total > 40 * largest

    # Warm-up pass first, so one-off costs (JAX dispatch caches, imports) are not counted.
    load_pretrained(save_pretrained(model, cfg, tmp_path / "warm", dtype="float32"))
    tracemalloc.start()
    try:
        out = save_pretrained(model, cfg, tmp_path / "out", dtype="float32")
        _, save_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        load_pretrained(out)
        _, load_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert save_peak < 8 * largest, (save_peak, largest, total)
    # On the CPU backend the loaded arrays may alias the numpy buffers they came from, so the model
    # itself can show up here once; what must not happen is a second whole copy.
    assert load_peak < total + 8 * largest, (load_peak, largest, total)
