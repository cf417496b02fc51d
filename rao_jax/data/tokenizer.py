"""Tokenizers behind ``rao_jax.agent.protocol.Tokenizer``: sentencepiece for from-scratch models and a Hugging
Face ``tokenizer.json`` for Qwen3 (the text to train a from-scratch one on: ``rao_jax.agent.corpus``).

Invariants of both tokenizers:

- ``encode(text)`` adds nothing (no BOS/EOS); ``decode`` renders special tokens as their text, so
  ``decode(encode(text)) == text`` for any text a sentencepiece model of ``train_sentencepiece`` sees,
  newlines, tabs, indentation and unicode included (one exception: U+2581 "▁", sentencepiece's own
  space marker, comes back as a space).
- A chat special token spelled inside plain text IS matched as that special token by ``encode``
  (sentencepiece user-defined symbols and HF added tokens behave alike). Callers that must not let text
  forge a turn boundary break the spelling first, as ``NodeTranscript`` does.

Choices of ``train_sentencepiece`` (measured on oracle transcripts of textcraft_synth / chain_hop /
labeled_rows, vocab 2000; see the tests for the smaller checks):

- BPE, not unigram: on these small, repetitive corpora unigram stopped at ~1250 pieces and gave ~50%
  more tokens (recursive textcraft system prompt, 2927 chars: BPE 657 tokens, unigram 1005).
- Newlines are ordinary characters: with the ``identity`` normalisation and no whitespace cleanup
  sentencepiece keeps "\\n" and "\\t" as they are and BPE merges them into pieces such as ")))\\n</".
  Making "\\n" a user-defined symbol (always its own token) cost more tokens: system prompt 657 -> 693,
  a labeled_rows text 807 -> 932, unseen code 3446 -> 3521. Byte fallback covers any character the
  corpus lacked.
- ``allow_whitespace_only_pieces`` so runs of indentation spaces become one piece (unseen Python source,
  7941 chars: 3446 tokens with it, 4328 without); words still split at spaces (``split_by_whitespace``):
  merging across spaces memorises the fixed prompts (439 tokens) but tokenises unseen code worse.
- No dummy prefix: segments are encoded one by one and concatenated (``NodeTranscript``), so encoding
  must not invent a leading space.
- No BOS/EOS control pieces: ``<s>`` and the role tokens are user-defined symbols (one id each, rendered
  by ``decode``); id 0 is ``<unk>`` (never produced, thanks to byte fallback).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

# Special tokens a from-scratch sentencepiece model defines (user_defined_symbols) for its chats
# (``rao_jax.agent.protocol.sentencepiece_template``).
SENTENCEPIECE_CHAT_SPECIALS = ("<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

# The action format's tags are whole pieces, so ``</python>`` is always the same single token: sampling
# stops on it whatever text precedes it (a merged piece such as ``)\n</`` would hide it from the stop check).
ACTION_TAGS = ("<thought>", "</thought>", "<python>", "</python>")

# sentencepiece skips training sentences longer than this many bytes (its default is 4192; observations,
# system prompts and long-context goals can exceed it).
_MAX_SENTENCE_BYTES = 1 << 20


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError as err:  # a main dependency; only a broken install lands here
        raise ImportError("sentencepiece is not installed: pip install 'sentencepiece>=0.2'") from err
    return sentencepiece


class SentencePieceTokenizer:
    """A sentencepiece model file with the chat specials of ``sentencepiece_template()``.

    Attributes:
      model_path: the ``.model`` file.
      vocab_size: number of pieces (the model's embedding rows must be at least this).
      eos_id: id of ``<|end|>``, the end-of-turn token that ends sampling.
    """

    def __init__(self, model_path: str | Path):
        self.model_path = Path(model_path)
        try:
            proto = self.model_path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"sentencepiece model not found: {self.model_path}") from None
        except IsADirectoryError:
            raise ValueError(f"sentencepiece model path is a directory: {self.model_path}") from None
        sp = _sentencepiece().SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError) as err:
            raise ValueError(f"{self.model_path} is not a valid sentencepiece model: {err}") from None
        self._sp = sp
        self.vocab_size: int = sp.get_piece_size()
        # A special counts only if the model has it as one piece that encode also produces whole
        # (a user-defined symbol); piece_to_id of an absent piece is the unk id.
        self._specials: dict[str, int] = {}
        for name in SENTENCEPIECE_CHAT_SPECIALS:
            i = sp.piece_to_id(name)
            if i != sp.unk_id() and sp.encode(name) == [i]:
                self._specials[name] = i
        self.eos_id: int | None = self._specials.get("<|end|>")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no BOS/EOS (specials spelled in the text are matched, see module doc)."""
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens rendered as their text."""
        return self._sp.decode([int(i) for i in ids])

    def special_id(self, token: str) -> int:
        """Id of one of ``SENTENCEPIECE_CHAT_SPECIALS``; KeyError for anything else or a model lacking it."""
        try:
            return self._specials[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a chat special token of {self.model_path} "
                           f"(it has {sorted(self._specials)})") from None

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.model_path)!r}, vocab_size={self.vocab_size})"


def train_sentencepiece(texts: Iterable[str], vocab_size: int, out_prefix: str | Path, *,
                        seed: int = 0) -> SentencePieceTokenizer:
    """Train a byte-fallback BPE model on ``texts`` and write ``<out_prefix>.model`` atomically.

    Each text is one training sentence and may hold newlines (it is passed through an iterator, never a
    line-split corpus file). One thread and a fixed seed: the same texts give a byte-identical model file.

    Raises:
      ValueError: ``vocab_size`` larger than the corpus supports (the message says the maximum), or no text.
    """
    spm = _sentencepiece()
    out = Path(f"{out_prefix}.model")
    seen = [0]

    def sentences() -> Iterator[str]:   # streamed: the corpus is never held whole or written out
        for text in texts:
            if text:
                seen[0] += 1
                yield text
    buffer = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(), model_writer=buffer, vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, character_coverage=1.0, split_digits=True,
            user_defined_symbols=[*SENTENCEPIECE_CHAT_SPECIALS, *ACTION_TAGS],
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, split_by_whitespace=True,
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            num_threads=1, max_sentence_length=_MAX_SENTENCE_BYTES, input_sentence_size=0,
            shuffle_input_sentence=False, minloglevel=2)
    except RuntimeError as err:
        if not seen[0]:
            raise ValueError("train_sentencepiece: no non-empty text to train on") from None
        raise ValueError(f"sentencepiece training failed (vocab_size={vocab_size}, {seen[0]} texts): "
                         f"{err}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return SentencePieceTokenizer(out)


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (Qwen3) read with the ``tokenizers`` library.

    Special ids are those of the file's added tokens (``<|im_start|>``, ``<|im_end|>``, ...).
    ``vocab_size`` counts added tokens; a checkpoint's embedding may be larger (Qwen3 pads it), so size
    models from their ``config.json``, not from here.
    """

    def __init__(self, path: str | Path):
        try:
            from tokenizers import Tokenizer
        except ImportError as err:
            raise ImportError("HFTokenizer needs the `tokenizers` package: pip install 'tokenizers>=0.20'") from err
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer.json not found: {self.path}")
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as err:  # tokenizers raises a bare Exception for unparsable files
            raise ValueError(f"{self.path} is not a valid Hugging Face tokenizer.json: {err}") from None
        self._added = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items()}
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        """Id of ``<|im_end|>``, the end-of-turn token of ``qwen3_template``."""
        return self.special_id("<|im_end|>")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no post-processor specials added (added tokens in the text match)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens rendered as their text."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def special_id(self, token: str) -> int:
        """Id of an added token of the file; KeyError otherwise."""
        try:
            return self._added[token]
        except KeyError:
            raise KeyError(f"{token!r} is not an added token of {self.path}") from None

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | Path) -> SentencePieceTokenizer | HFTokenizer:
    """The tokenizer stored at ``path``: a ``.model`` file (sentencepiece), a ``tokenizer.json`` file or a
    folder holding one (Hugging Face).

    Raises:
      FileNotFoundError: nothing at ``path`` (or a folder without tokenizer.json).
      ValueError: a file of another kind, or a corrupt one.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return HFTokenizer(path / "tokenizer.json")
        raise FileNotFoundError(f"{path} is a folder without tokenizer.json (pass a sentencepiece .model file "
                                "or a tokenizer.json, or a folder holding tokenizer.json)")
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}")
    if path.suffix == ".model":
        return SentencePieceTokenizer(path)
    if path.name == "tokenizer.json":
        return HFTokenizer(path)
    raise ValueError(f"{path}: unknown tokenizer file (expected a sentencepiece .model, a tokenizer.json or a "
                     "folder holding tokenizer.json)")
