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


def varied_strings(n: int = 200, seed: int = 0) -> list[str]:
    """Prompts, code, whitespace runs, unicode and chat specials, mixed at random."""
    import random

    from rao_jax.checkpoint.hf_tokenizer import PROBES

    rng = random.Random(seed)
    words = ["craft", "get_info", "print(", "await launch_subagent(", "{'g3b': 2}", "</python>", "<python>",
             "<thought>", "</thought>", "<s>", "<|end|>", "<|user|>", "<|im_start|>", "<|im_end|>", "\n", "\n\n",
             "    ", "\t", " ", "日本", "ü", "🙂", "\u2581", "x = 12.5", "# note", "metal_t3_01",
             "Error: All 2 recipe(s)"]
    out = list(PROBES)
    while len(out) < n:
        out.append("".join(rng.choice(words) if rng.random() < 0.6 else chr(rng.randint(32, 126))
                           for _ in range(rng.randint(1, 30))))
    return out


def node_transcript_and_messages(tokenizer, template):
    """A recorded node's token ids (``NodeTranscript``: system and user prompt, two actions, two
    observations, the next assistant turn opened) and the same conversation as chat messages."""
    from rao_jax.agent.protocol import NodeTranscript

    system = "You are a crafting agent.\nTools:\n  craft(ingredients, target)\n  get_info(items)"
    user = "Craft the following items: 2x g3b\nYou have 40 steps."
    actions = ["<thought>look up the recipe</thought>\n<python>\nprint(get_info(['g3b']))\n</python>",
               "<thought>craft it</thought>\n<python>\ncraft({'g2a': 2}, ('g3b', 2))\n</python>"]
    observations = ["Output:\n[{'item': 'g3b', 'recipes': [...]}]", "Output:\nSuccessfully crafted 2 item(s)"]
    transcript = NodeTranscript(template, tokenizer)
    transcript.start(system, user)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    end = tokenizer.special_id(template.end_of_turn)
    for k, (action, observation) in enumerate(zip(actions, observations, strict=True)):
        ids = tokenizer.encode(action) + ([end] if k == 1 else [])   # the second time the model closes the turn
        transcript.add_response(ids, [0.0] * len(ids))
        transcript.observe(observation)
        messages += [{"role": "assistant", "content": action}, {"role": "user", "content": observation}]
    return transcript.tokens, messages


def chat_ids(hf_tokenizer, messages) -> list[int]:
    out = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def assert_export_matches(folder, tokenizer, template) -> None:
    """An exported folder tokenizes as ``tokenizer`` (200 varied strings) and its chat template lays a
    recorded node out exactly as rao_jax did."""
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    for text in varied_strings():
        assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text), text
        assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text), text   # nothing added by default
    tokens, messages = node_transcript_and_messages(tokenizer, template)
    assert chat_ids(hf_tokenizer, messages) == tokens
