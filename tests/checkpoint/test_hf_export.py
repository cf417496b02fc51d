"""A Hugging Face export as a whole, checked in transformers: the tokenizer gives rao_jax's ids, the chat
template rao_jax's prompt layout, greedy generation from it rao_jax's sampler's tokens, and the
generation config stops where an action ends (dense and MoE; from-scratch sentencepiece and a Qwen3-layout
folder with a tokenizer.json)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import pytest

from rao_jax.agent.protocol import qwen3_template, sentencepiece_template
from rao_jax.checkpoint.hf import CheckpointError, load_pretrained, save_pretrained
from rao_jax.checkpoint.hf_tokenizer import chat_template_jinja, check_round_trip
from rao_jax.data.tokenizer import HFTokenizer, load_tokenizer, train_sentencepiece
from rao_jax.sampling import EngineConfig, SamplingEngine
from tests import hf_utils
from tests.hf_utils import assert_export_matches, chat_ids, make_hf_model, node_transcript_and_messages

NEW = 32


def _corpus() -> list[str]:
    from rao_jax.agent.corpus import corpus_texts
    from rao_jax.envs import textcraft_synth as ts

    tasks = list(ts.generate_tasks(ts.SynthConfig.tiny(), "train", 4))
    return list(corpus_texts(tasks)) + hf_utils.varied_strings(60, seed=1)


@pytest.fixture(scope="module")
def sentencepiece_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spm")
    train_sentencepiece(_corpus(), 500, folder / "tokenizer")
    return folder


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    """A Qwen3-layout tokenizer: byte-level BPE with the Qwen chat specials, trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("bpe")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "chat_template": "{{ 'a template rao_jax did not train with' }}"}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0], "top_p": 0.8}))
    return folder


def _export(kind, tokenizer, template, tokenizer_dir, tmp_path):
    hf = make_hf_model(kind == "moe", seed=3, vocab_size=tokenizer.vocab_size, max_position_embeddings=1024)
    source = tmp_path / "source"
    hf.save_pretrained(source)
    model, cfg = load_pretrained(source)
    out = tmp_path / "export"
    save_pretrained(model, cfg, out, dtype="float32", tokenizer_dir=tokenizer_dir, chat_template=template)
    return out


def _check_generation(out, tokenizer, template, stops):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    hf_tokenizer = AutoTokenizer.from_pretrained(str(out))
    tokens, messages = node_transcript_and_messages(tokenizer, template)
    prompt = chat_ids(hf_tokenizer, messages)
    assert prompt == tokens
    generation = GenerationConfig.from_pretrained(str(out))
    assert generation.eos_token_id[:len(stops)] == stops
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    model, _ = load_pretrained(out, dtype=jnp.float32)
    engine = SamplingEngine(model, EngineConfig(max_rows=2, page_size=16, num_pages=64, max_seq_len=512,
                                                max_prefill_tokens=512, min_prefill_bucket=512))
    ours = engine.generate([prompt], max_new_tokens=NEW, temperature=0.0)[0].tokens
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        free = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, len(prompt):].tolist()
        stopped = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)[0, len(prompt):].tolist()
    assert free == ours                                      # 32 greedy tokens, transformers = rao_jax
    first_stop = next((k for k, t in enumerate(ours) if t in generation.eos_token_id), None)
    want = ours if first_stop is None else ours[:first_stop + 1]
    assert stopped[:len(want)] == want and all(t == generation.pad_token_id for t in stopped[len(want):])


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_sentencepiece_export_works_in_transformers(kind, sentencepiece_folder, tmp_path):
    tokenizer = load_tokenizer(sentencepiece_folder / "tokenizer.model")
    template = sentencepiece_template()
    out = _export(kind, tokenizer, template, sentencepiece_folder, tmp_path)
    assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                                               "generation_config.json", "tokenizer.model", "config.json"}
    assert_export_matches(out, tokenizer, template)
    stops = [tokenizer.special_id("<|end|>"), tokenizer.encode("</python>")[0]]
    _check_generation(out, tokenizer, template, stops)


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_qwen3_layout_export_works_in_transformers(kind, bpe_folder, tmp_path):
    tokenizer = HFTokenizer(bpe_folder / "tokenizer.json")
    template = qwen3_template()
    out = _export(kind, tokenizer, template, bpe_folder, tmp_path)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == chat_template_jinja(template)      # the run's layout, not the folder's
    assert config["eos_token"] == "<|im_end|>"                             # the rest of the file kept
    assert json.loads((out / "generation_config.json").read_text())["top_p"] == 0.8
    assert_export_matches(out, tokenizer, template)
    _check_generation(out, tokenizer, template, [tokenizer.special_id("<|im_end|>")])


def test_export_refuses_a_tokenizer_it_cannot_reproduce(tmp_path):
    import sentencepiece as spm

    folder = tmp_path / "tok"
    folder.mkdir()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=300, model_type="bpe", user_defined_symbols=["<s>", "<|system|>",
                                   "<|user|>", "<|assistant|>", "<|end|>"], minloglevel=2)   # dummy prefix, nmt_nfkc
    hf = make_hf_model(False, vocab_size=300)
    hf.save_pretrained(tmp_path / "source")
    model, cfg = load_pretrained(tmp_path / "source")
    out = tmp_path / "export"
    with pytest.raises(CheckpointError, match="tokenizer export refused: .*add_dummy_prefix"):
        save_pretrained(model, cfg, out, tokenizer_dir=folder)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")] == []


def test_round_trip_check_names_the_string_that_differs(sentencepiece_folder, bpe_folder, tmp_path):
    import shutil

    shutil.copy(bpe_folder / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match="does not reproduce .* 'Craft the following items"):
        check_round_trip(tmp_path, load_tokenizer(sentencepiece_folder / "tokenizer.model"))
