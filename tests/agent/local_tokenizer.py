"""A byte-level BPE tokenizer trained in-process on generated text (nothing downloaded).

It implements ``rao_jax.agent.protocol.Tokenizer`` and knows the special tokens of both chat
templates, so transcripts can be tested for both layouts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rao_jax.data.tokenizer import SENTENCEPIECE_CHAT_SPECIALS

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *SENTENCEPIECE_CHAT_SPECIALS]


def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["craft", "pick", "finish", "launch_subagent", "await", "asyncio", "gather", "print", "bag", "item",
             "thought", "python", "budget", "goal", "system", "user", "assistant", "the", "a", "of", "to"]
    lines = []
    for _ in range(n):
        k = rng.randint(3, 12)
        lines.append(" ".join(rng.choice(words) for _ in range(k)) + f" {rng.randint(0, 999)}({rng.random():.3f})")
        call = f"{rng.choice(words)}('{rng.choice(words)}')"
        lines.append(f"<thought>{rng.choice(words)}</thought>\n<python>\nx = {call}\n</python>")
    return lines


class LocalTokenizer:
    """Byte-level BPE with the chat special tokens; encode never adds specials."""

    def __init__(self, vocab_size: int = 400, extra_text: Sequence[str] = ()):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator([*_corpus(400), *extra_text], trainer)
        self._tok = tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def special_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None or token not in SPECIALS:
            raise KeyError(f"{token!r} is not a special token of this tokenizer")
        return i
