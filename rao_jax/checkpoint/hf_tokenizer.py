"""The tokenizer half of a Hugging Face export: files with which ``transformers`` tokenizes, builds
prompts and stops exactly as rao_jax did in training.

- ``tokenizer.json``: a from-scratch sentencepiece model converted to a ``tokenizers`` BPE with the
  same pieces, merges, byte fallback and added tokens (``sentencepiece_to_hf``); a Qwen3
  ``tokenizer.json`` is copied as it is.
- ``tokenizer_config.json``: a fast tokenizer class, the special tokens and the chat template of the
  run's layout (``chat_template_jinja``); a Qwen3 folder's own file keeps everything but its template.
- ``chat_template.jinja``: the same template as a file.
- ``generation_config.json``: the end-of-turn id (and ``</python>`` when it is one token) as stop ids.

``check_round_trip`` re-reads the written ``tokenizer.json`` and refuses an export whose ids differ from
the run's tokenizer on a set of probe strings.

The template reproduces rao_jax's token ids exactly for the sentencepiece layout (only special tokens
separate the texts). ``NodeTranscript`` encodes a turn's header and its content apart; with the Qwen3
layout the template's text is tokenized in one piece, which gives the same ids unless a content begins
with whitespace that the byte-level pre-tokenizer joins to the header's newline (e.g. a message starting
with "\n\n").
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from rao_jax.agent.protocol import ACTION_STOP, ChatTemplate, Piece, Tokenizer
from rao_jax.data.tokenizer import HFTokenizer, SentencePieceTokenizer

SPACE = "\u2581"   # sentencepiece's space marker
# Text that every export must tokenize as the run did: prompts, code, whitespace runs, unicode, specials.
PROBES = (
    "Craft the following items: 2x metal_t3_01, 1x g3b",
    "<thought>craft the parts first</thought>\n<python>\nr = await launch_subagent({'g2e': 1}, 20)\n"
    "print(get_info(['g3b']))\n</python>",
    "def f(x):\n    return x ** 2  # square\n\n\tif x:\n\t\tpass\n",
    "   leading spaces", "trailing spaces   ", "two  spaces\tand a tab\n\n\nthree newlines",
    "unicode: ünïcödé, 日本語, emoji 🙂, math ∑x², \u2581 marker, \u200b zero width",
    "numbers 0 12 345 6789.01 -2e-3", "{\"json\": [1, 2, {\"k\": null}]}",
    "specials inside text: <s><|system|>x<|end|><|user|>y<|assistant|> <|im_start|>user\nz<|im_end|>",
    "", " ", "\n",
)


def _sentencepiece_proto(model_path: Path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_path.read_bytes())
    return proto, sentencepiece_model_pb2.ModelProto.SentencePiece.Type


def sentencepiece_to_hf(model_path: str | Path):
    """A ``tokenizers.Tokenizer`` that encodes and decodes as the sentencepiece BPE model at ``model_path``
    (one of ``train_sentencepiece``: identity normalisation, no dummy prefix, byte fallback).

    Merges: every split of a piece into two pieces, ranked by the merged piece's id (sentencepiece's
    score order), which makes the BPE pick the same pair sentencepiece does at every step (highest
    score, leftmost first). User-defined symbols become added tokens (the chat specials marked
    special), matched whole anywhere in the text as sentencepiece does.

    Raises:
      ValueError: a model this conversion does not reproduce (unigram, a normaliser other than
        identity, a dummy prefix).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    path = Path(model_path)
    proto, kind = _sentencepiece_proto(path)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    problems = [f"model_type {spec.model_type} (only BPE, 2, converts)"] if spec.model_type != 2 else []
    if norm.name not in ("identity", ""):
        problems.append(f"normalizer {norm.name!r} (only identity converts)")
    if norm.add_dummy_prefix:
        problems.append("add_dummy_prefix (only models without one convert)")
    if problems:
        raise ValueError(f"{path}: cannot convert to tokenizer.json: " + "; ".join(problems))
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    user = [p.piece for p in proto.pieces if p.type == kind.USER_DEFINED]
    unk = next((p.piece for p in proto.pieces if p.type == kind.UNKNOWN), None)
    merges = []
    for i, piece in enumerate(proto.pieces):
        if piece.type != kind.NORMAL:
            continue
        text = piece.piece
        splits = [(vocab[text[:k]], vocab[text[k:]]) for k in range(1, len(text))
                  if text[:k] in vocab and text[k:] in vocab]
        merges += [(i, left, right) for left, right in sorted(splits)]
    merges.sort()
    names = [p.piece for p in proto.pieces]
    bpe = models.BPE(vocab=vocab, merges=[(names[a], names[b]) for _, a, b in merges], unk_token=unk,
                     byte_fallback=spec.byte_fallback, fuse_unk=True)
    tok = Tokenizer(bpe)
    if norm.escape_whitespaces:
        tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    chat = [t for t in user if t == "<s>" or (t.startswith("<|") and t.endswith("|>"))]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in chat])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user if t not in chat])
    return tok


def _literal(pieces: Iterable[Piece]) -> str:
    text = "".join(p.text for p in pieces)
    return "{{ " + json.dumps(text) + " }}" if text else ""


def chat_template_jinja(template: ChatTemplate) -> str:
    """The Jinja chat template that renders a conversation as rao_jax lays out a node's sequence
    (``NodeTranscript``): ``begin``, then per message its role's turn start (and the assistant
    preamble), the content and the turn end; ``add_generation_prompt`` opens an assistant turn."""
    starts = {role: list(template.turn_start[role]) + (list(template.assistant_preamble) if role == "assistant"
                                                        else []) for role in ("system", "user", "assistant")}
    branches = "".join(f"{'if' if k == 0 else 'elif'} message['role'] == {json.dumps(role)} %}}{_literal(pieces)}{{% "
                       for k, (role, pieces) in enumerate(starts.items()))
    return (f"{_literal(template.begin)}{{% for message in messages %}}{{% {branches}"
            f"else %}}{{{{ raise_exception('unknown role ' + message['role']) }}}}{{% endif %}}"
            f"{{{{ message['content'] }}}}{_literal(template.turn_end)}{{% endfor %}}"
            f"{{% if add_generation_prompt %}}{_literal(starts['assistant'])}{{% endif %}}")


def stop_token_ids(tokenizer: Tokenizer, template: ChatTemplate) -> list[int]:
    """The ids a generation of one action stops at: the end-of-turn token, and ``</python>`` when the
    tokenizer has it as one token (from-scratch models do; for Qwen3 pass ``stop_strings``)."""
    ids = [tokenizer.special_id(template.end_of_turn)]
    python = tokenizer.encode(ACTION_STOP)
    if len(python) == 1 and python[0] not in ids:
        ids.append(python[0])
    return ids


def write_tokenizer_files(out: Path, tokenizer: SentencePieceTokenizer | HFTokenizer, template: ChatTemplate,
                          *, source_dir: Path | None = None, max_length: int | None = None) -> None:
    """Writes tokenizer.json, tokenizer_config.json, chat_template.jinja and generation_config.json into
    ``out`` (and copies a sentencepiece model as tokenizer.model). ``source_dir``: the folder the run's
    tokenizer came from, whose other tokenizer files (vocab.json, merges.txt, ...) are copied too."""
    sentencepiece = isinstance(tokenizer, SentencePieceTokenizer)
    if sentencepiece:   # converted first: the conversion names what a model lacks
        sentencepiece_to_hf(tokenizer.model_path).save(str(out / "tokenizer.json"))
        shutil.copy2(tokenizer.model_path, out / "tokenizer.model")
        bos = template.begin[0].text if template.begin and template.begin[0].special else None
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": template.end_of_turn,
                  "pad_token": template.end_of_turn, "unk_token": "<unk>", "add_bos_token": False,
                  "add_eos_token": False, "clean_up_tokenization_spaces": False}
    else:
        shutil.copy2(tokenizer.path, out / "tokenizer.json")
        if source_dir is not None:
            for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                         "tokenizer_config.json"):
                if (source_dir / name).is_file():
                    shutil.copy2(source_dir / name, out / name)
        if (out / "tokenizer_config.json").is_file():
            config = json.loads((out / "tokenizer_config.json").read_text())
        else:
            config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": template.end_of_turn,
                      "pad_token": template.end_of_turn, "clean_up_tokenization_spaces": False}
    if max_length:
        config["model_max_length"] = max_length
    jinja = chat_template_jinja(template)
    stops = stop_token_ids(tokenizer, template)
    config["chat_template"] = jinja
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "chat_template.jinja").write_text(jinja)
    generation: dict = {}
    if source_dir is not None and (source_dir / "generation_config.json").is_file():
        generation = json.loads((source_dir / "generation_config.json").read_text())
    old = generation.get("eos_token_id", [])
    generation["eos_token_id"] = stops + [i for i in (old if isinstance(old, list) else [old]) if i not in stops]
    generation.setdefault("pad_token_id", stops[0])
    if sentencepiece and template.begin:
        generation["bos_token_id"] = tokenizer.special_id(template.begin[0].text)
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def check_round_trip(out: Path, tokenizer: SentencePieceTokenizer | HFTokenizer,
                     extra: Iterable[str] = ()) -> None:
    """Raises ValueError naming the first probe string whose ids from ``out/tokenizer.json`` differ from
    the run's tokenizer (the export would make every use of it tokenize differently)."""
    exported = HFTokenizer(out / "tokenizer.json")
    for text in (*PROBES, *extra):
        want, got = tokenizer.encode(text), exported.encode(text)
        if want != got:
            at = next((k for k, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))
            raise ValueError(f"the exported tokenizer.json does not reproduce {tokenizer}: {text!r} gives "
                             f"{got[at:at + 8]} from position {at} where the run's tokenizer gives "
                             f"{want[at:at + 8]}")
