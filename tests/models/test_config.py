"""Reading Hugging Face config.json files, old and new spellings, and clear errors."""

from __future__ import annotations

import json

import pytest

from rao_jax.models.config import ConfigError, ModelConfig

QWEN3_4B = {  # field values of the released Qwen3-4B config.json (older transformers spelling)
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
    "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
    "rope_scaling": None, "tie_word_embeddings": True, "attention_bias": False,
    "use_sliding_window": False, "bos_token_id": 151643, "eos_token_id": 151645,
}
QWEN3_30B_A3B = {  # Qwen3-30B-A3B, newer spelling (rope_parameters, num_local_experts)
    "model_type": "qwen3_moe", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
    "moe_intermediate_size": 768, "num_local_experts": 128, "num_experts_per_tok": 8,
    "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "router_aux_loss_coef": 0.001, "num_hidden_layers": 48, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
}


def test_reads_qwen3_4b_and_30b_fields():
    dense = ModelConfig.from_hf_dict(QWEN3_4B)
    assert (dense.hidden_size, dense.head_dim, dense.tie_word_embeddings, dense.rope_theta) == (2560, 128, True, 1e6)
    assert not dense.is_moe and not dense.layer_is_moe(0)
    moe = ModelConfig.from_hf_dict(QWEN3_30B_A3B)
    assert (moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size) == (128, 8, 768)
    assert moe.rope_theta == 1e6 and all(moe.layer_is_moe(i) for i in range(48))


def test_sparse_step_and_mlp_only_layers_follow_transformers_rule():
    cfg = ModelConfig.from_hf_dict(dict(QWEN3_30B_A3B, num_hidden_layers=6, decoder_sparse_step=2,
                                        mlp_only_layers=[3]))
    assert [cfg.layer_is_moe(i) for i in range(6)] == [False, True, False, False, False, True]


def test_export_dict_round_trips_and_keeps_unknown_fields():
    cfg = ModelConfig.from_hf_dict(QWEN3_4B)
    out = cfg.to_hf_dict()
    assert out["eos_token_id"] == 151645 and out["torch_dtype"] == "bfloat16"
    assert out["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e6}
    assert ModelConfig.from_hf_dict(out) == cfg
    moe = ModelConfig.from_hf_dict(QWEN3_30B_A3B)
    assert ModelConfig.from_hf_dict(moe.to_hf_dict()) == moe


@pytest.mark.parametrize("edit, message", [
    (dict(model_type="llama"), "unsupported model_type 'llama'"),
    (dict(hidden_size=None), "lacks the required field 'hidden_size'"),
    (dict(num_key_value_heads=5), "must be a multiple of num_key_value_heads"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "unsupported rope type 'yarn'"),
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(hidden_act="gelu"), "unsupported hidden_act 'gelu'"),
])
def test_bad_fields_are_named(edit, message):
    raw = dict(QWEN3_4B, **edit)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf_dict(raw)


def test_moe_without_experts_and_unreadable_file(tmp_path):
    raw = {k: v for k, v in QWEN3_30B_A3B.items() if k != "num_local_experts"}
    with pytest.raises(ConfigError, match="lacks num_experts / num_local_experts"):
        ModelConfig.from_hf_dict(raw)
    path = tmp_path / "config.json"
    path.write_text("{oops")
    with pytest.raises(ConfigError, match=r"cannot read .*config.json"):
        ModelConfig.from_json_file(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="does not hold a JSON object"):
        ModelConfig.from_json_file(path)
