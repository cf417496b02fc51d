"""A tiny random Qwen3 behind one SamplingEngine, shared by the model-backed runtime tests.

One engine configuration for all of them, so the jitted prefill / decode shapes compile once per
session. Tests read ``engine.stats`` as differences, since other tests use the same engine.
"""

from __future__ import annotations

import dataclasses

import pytest

from rao_jax.agent.protocol import qwen3_template, system_prompt
from tests.agent.local_tokenizer import LocalTokenizer
from tests.agent.toy import BagWorld


@dataclasses.dataclass(frozen=True)
class TinyLM:
    tokenizer: LocalTokenizer
    model: object
    engine: object
    template: object
    tool_docs: object      # recursive -> text (BagWorld's tool docs)


@pytest.fixture(scope="session")
def tiny_lm() -> TinyLM:
    pytest.importorskip("jax")
    from flax import nnx

    from rao_jax.models.config import tiny_config
    from rao_jax.models.qwen3 import Qwen3
    from rao_jax.sampling import EngineConfig, SamplingEngine

    docs = BagWorld({}).tool_docs
    tok = LocalTokenizer(1000, [system_prompt(docs(True), True)] * 20)
    model = Qwen3(tiny_config(vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
    engine = SamplingEngine(model, EngineConfig(max_rows=8, page_size=16, num_pages=1024, max_seq_len=1024,
                                                decode_steps=8, max_prefill_tokens=1024, min_prefill_bucket=64,
                                                max_top_k=8))
    return TinyLM(tok, model, engine, qwen3_template(), docs)
