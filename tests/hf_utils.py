"""Helpers for tests that compare against transformers (the reference implementation)."""

from __future__ import annotations

import numpy as np

BASE = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=10_000.0,
            max_position_embeddings=512)
MOE = dict(moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2)


def make_hf_model(moe: bool = False, seed: int = 0, **overrides):
    """A tiny random transformers Qwen3 / Qwen3-MoE model (weights ~N(0, 0.1), not all-equal norms)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3MoeConfig

    fields = dict(BASE, **(MOE if moe else {}))
    fields.update(overrides)
    config = Qwen3MoeConfig(**fields) if moe else Qwen3Config(**fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


def ragged_batch(vocab: int, lengths: list[int], seed: int = 0):
    """Right-padded token ids and a validity mask for sequences of the given lengths."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), max(lengths)), np.int32)
    valid = np.zeros_like(tokens, dtype=bool)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(0, vocab, n)
        valid[i, :n] = True
    return tokens, valid


def torch_logits(model, tokens: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    import torch

    with torch.no_grad():
        mask = None if valid is None else torch.tensor(valid.astype(np.int64))
        return model(torch.tensor(tokens.astype(np.int64)), attention_mask=mask).logits.float().numpy()
