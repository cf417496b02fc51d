"""Tokenizers: a sentencepiece model trained here on oracle transcripts, a tiny tokenizer.json trained here
with `tokenizers` (nothing downloaded), the loader, and the training corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from rao_jax.agent.corpus import corpus_texts
from rao_jax.agent.protocol import (
    NodeTranscript,
    action_stop_sequences,
    qwen3_template,
    sentencepiece_template,
    system_prompt,
)
from rao_jax.data.task_sources import iter_tasks
from rao_jax.data.tokenizer import (
    SENTENCEPIECE_CHAT_SPECIALS,
    HFTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    train_sentencepiece,
)
from rao_jax.envs.families import open_episode

VOCAB = 1000
CODE = (
    "import asyncio\n\n\nasync def follow(name, relations):\n"
    "    for rel in relations:\n"
    "        name = await launch_subagent({'entity': name, 'relation': rel}, 3)\n"
    "    return name\n\n"
    "class A:\n\tdef f(self, x):\n\t\treturn {\"k\": [x, 'y', (1, 2)]}  # tab-indented\n"
    "s = f\"{x!r:>10}\" + '\\n' + \"\"\"triple\n  quoted\"\"\"\n"
    "print('héllo wörld · 漢字 · 🙂 · ∑ ≠ ∞')   \n\n"
    "   \n"
)
ROUND_TRIP = [
    CODE,
    "<thought>Craft the next items of the plan.</thought>\n<python>\nprint(craft({'m0b': 2}, ('m1d', 1)))\n"
    "finish('crafted all targets')\n</python>",
    "Crafted 1 m1c.\nCrafted 3 m2d.\nTypeError: craft() missing 1 required positional argument: 'target'",
    "  two leading spaces, trailing ones  ",
    "\n\nblank lines first\n\n\nand between\n",
    "windows\r\nline\r\nends\x00 and a NUL",
    "",
    " ",
]


@pytest.fixture(scope="module")
def tasks():
    return list(iter_tasks("textcraft_synth", "train", {"preset": "tiny", "per_difficulty": 2}))


@pytest.fixture(scope="module")
def corpus(tasks):
    return list(corpus_texts(tasks))


@pytest.fixture(scope="module")
def sp_model(corpus, tmp_path_factory) -> Path:
    return train_sentencepiece(corpus, VOCAB, tmp_path_factory.mktemp("sp") / "tok").model_path


@pytest.fixture(scope="module")
def sp(sp_model) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(sp_model)


# ---- corpus -------------------------------------------------------------------------------------------

def test_corpus_has_prompts_of_both_modes_actions_and_observations(corpus, tasks):
    recursive = [t for t in corpus if "## Subagents" in t]
    flat = [t for t in corpus if t.startswith("You are an agent") and "launch_subagent" not in t]
    assert len(recursive) == len(flat) == len(tasks)
    assert sum(t.startswith(task.goal) and t.endswith(f"You have {task.max_steps} steps.")
               for t in corpus for task in tasks) >= len(tasks)
    assert any(t.startswith("<thought>") and t.rstrip().endswith("</python>") for t in corpus)
    assert any(t.startswith("Crafted ") for t in corpus)        # an observation
    assert all(isinstance(t, str) for t in corpus)


def test_corpus_options(tasks):
    recursive_only = list(corpus_texts(tasks, recursive_and_flat=False))
    assert not any(t.startswith("You are an agent") and "launch_subagent" not in t for t in recursive_only)
    prompts_only = list(corpus_texts(tasks, max_trees=0))
    assert len(prompts_only) == 3 * len(tasks)                   # two system prompts + the root's user prompt
    assert len(list(corpus_texts(tasks, max_trees=1))) > len(prompts_only)


# ---- sentencepiece ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ROUND_TRIP)
def test_exact_round_trip(sp, text):
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert 0 not in ids                                          # byte fallback: nothing is <unk> (id 0)


def test_round_trip_of_a_source_file_and_concatenation(sp):
    source = Path(__file__).read_text()
    assert sp.decode(sp.encode(source)) == source
    # Segments are encoded one by one (NodeTranscript): no dummy prefix, so concatenation is exact.
    parts = ["print(x)", "\n", "    y = 1", " ", "\n"]
    assert sp.decode([i for p in parts for i in sp.encode(p)]) == "".join(parts)


def test_sentencepiece_space_marker_is_the_documented_exception(sp):
    assert sp.decode(sp.encode("a\u2581b")) == "a b"


def test_each_chat_special_is_one_id(sp):
    ids = [sp.special_id(name) for name in SENTENCEPIECE_CHAT_SPECIALS]
    assert len(set(ids)) == len(ids)
    for name, i in zip(SENTENCEPIECE_CHAT_SPECIALS, ids, strict=True):
        assert sp.encode(name) == [i]
        assert sp.decode([i]) == name
    assert sp.eos_id == sp.special_id("<|end|>")
    assert 0 < sp.vocab_size <= VOCAB and all(0 <= i < sp.vocab_size for i in ids)
    for other in ("<|im_end|>", "hello", "</s>"):
        with pytest.raises(KeyError):
            sp.special_id(other)


def test_special_spelled_in_text_is_matched_and_transcript_breaks_it(sp):
    # Documented behaviour: user-defined symbols match inside plain text.
    ids = sp.encode("print('<|end|>')")
    assert sp.eos_id in ids
    assert sp.decode(ids) == "print('<|end|>')"
    tr = NodeTranscript(sentencepiece_template(), sp)
    tr.start("system text", "goal says <|end|> and <|user|>")
    assert tr.tokens.count(sp.eos_id) == 2                       # only the two real turn ends
    assert tr.tokens.count(sp.special_id("<|user|>")) == 1


def test_node_transcript_and_stop_sequences(sp, tasks):
    template = sentencepiece_template()
    system = system_prompt(open_episode(tasks[0]).tool_docs(True), True)
    tr = NodeTranscript(template, sp)
    prompt = tr.start(system, "Craft 1x m1d\n\nYou have 5 steps.")
    assert sp.decode(prompt) == (f"<s><|system|>{system}<|end|><|user|>Craft 1x m1d\n\nYou have 5 steps.<|end|>"
                                 "<|assistant|>")
    action = "<thought>go</thought>\n<python>\nprint(craft({'m0b': 2}, ('m1d', 1)))\n</python>"
    response = [*sp.encode(action), sp.eos_id]
    tr.add_response(response, [-0.5] * len(response))
    tr.observe("Crafted 1 m1d.")
    assert sp.decode(tr.tokens) == (f"<s><|system|>{system}<|end|><|user|>Craft 1x m1d\n\nYou have 5 steps.<|end|>"
                                    f"<|assistant|>{action}<|end|><|user|>Crafted 1 m1d.<|end|><|assistant|>")
    assert len(tr.loss_mask) == len(tr.tokens) and sum(tr.loss_mask) == len(response)

    stops = action_stop_sequences(sp, template)
    assert stops[0] == (sp.eos_id,)
    assert len(stops) >= 2
    for seq in stops:
        text = sp.decode(seq)
        assert text == "<|end|>" or text.endswith("</python>")
    # "</python>" is one piece, so every action, whatever precedes its closing tag, ends in a stop sequence.
    close = sp.encode("</python>")
    assert len(close) == 1 and (close[0],) in stops
    for ending in (")))\n</python>", "x\n</python>", "'}\n</python>", "</python>"):
        assert tuple(sp.encode(ending)[-1:]) in stops


def test_system_prompt_token_count(sp, tasks):
    episode = open_episode(tasks[0])
    for recursive in (False, True):
        text = system_prompt(episode.tool_docs(recursive), recursive)
        n = len(sp.encode(text))
        print(f"textcraft system prompt (recursive={recursive}): {len(text)} chars -> {n} tokens "
              f"(vocab {sp.vocab_size})")
        assert n < len(text) / 3


def test_training_is_deterministic_and_atomic(corpus, sp_model, tmp_path):
    again = train_sentencepiece(iter(corpus), VOCAB, tmp_path / "again")
    assert again.model_path == tmp_path / "again.model"
    assert again.model_path.read_bytes() == sp_model.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.model"]    # no temp file left behind
    # Overwriting in place gives the same bytes again.
    assert train_sentencepiece(corpus, VOCAB, tmp_path / "again").model_path.read_bytes() == sp_model.read_bytes()


def test_training_errors(tmp_path):
    with pytest.raises(ValueError, match="no non-empty text"):
        train_sentencepiece(["", ""], 300, tmp_path / "x")
    with pytest.raises(ValueError, match="vocab_size=100000"):
        train_sentencepiece(["tiny corpus"] * 3, 100_000, tmp_path / "x")
    assert not list(tmp_path.iterdir())


def test_missing_or_corrupt_model_names_the_path(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match="nope.model"):
        SentencePieceTokenizer(missing)
    corrupt = tmp_path / "bad.model"
    corrupt.write_bytes(b"not a protobuf \x00\xff")
    with pytest.raises(ValueError, match="bad.model"):
        SentencePieceTokenizer(corrupt)


# ---- Hugging Face tokenizer.json ----------------------------------------------------------------------

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def hf_json(corpus, tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=QWEN_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_hf_tokenizer_protocol(hf_json):
    hf = HFTokenizer(hf_json)
    for text in ROUND_TRIP:
        assert hf.decode(hf.encode(text)) == text
    for name in QWEN_SPECIALS:
        i = hf.special_id(name)
        assert hf.encode(name) == [i] and hf.decode([i]) == name
    assert hf.eos_id == hf.special_id("<|im_end|>")
    with pytest.raises(KeyError):
        hf.special_id("<|end|>")
    assert hf.vocab_size == 500

    template = qwen3_template()
    tr = NodeTranscript(template, hf)
    prompt = tr.start("sys", "goal")
    assert hf.decode(prompt) == ("<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\ngoal<|im_end|>\n"
                                 "<|im_start|>assistant\n")
    for seq in action_stop_sequences(hf, template):
        text = hf.decode(seq)
        assert text == "<|im_end|>" or text.endswith("</python>")


def test_hf_tokenizer_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        HFTokenizer(tmp_path / "missing.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        HFTokenizer(bad)
    monkeypatch.setitem(__import__("sys").modules, "tokenizers", None)
    with pytest.raises(ImportError, match="pip install"):
        HFTokenizer(bad)


# ---- load_tokenizer -----------------------------------------------------------------------------------

def test_load_tokenizer_dispatch(sp_model, hf_json, tmp_path):
    assert isinstance(load_tokenizer(sp_model), SentencePieceTokenizer)
    assert isinstance(load_tokenizer(str(hf_json)), HFTokenizer)
    assert isinstance(load_tokenizer(hf_json.parent), HFTokenizer)
    with pytest.raises(FileNotFoundError, match="without tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tmp_path / "ghost.model")
    other = tmp_path / "vocab.txt"
    other.write_text("a\nb\n")
    with pytest.raises(ValueError, match="unknown tokenizer file"):
        load_tokenizer(other)
