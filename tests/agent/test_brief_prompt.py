"""The brief system prompt variant and its plumbing into the demonstration policy."""

from __future__ import annotations

import asyncio

from rao_jax.agent.corpus import oracle_corpus_texts
from rao_jax.agent.demo_policy import DemoPolicy
from rao_jax.agent.oracles import make_oracle
from rao_jax.agent.policy import NodeView
from rao_jax.agent.protocol import sentencepiece_template, system_prompt
from rao_jax.config import default_config, from_config_dict
from rao_jax.envs import textcraft_synth as ts
from rao_jax.envs.families import open_episode
from tests.agent.local_tokenizer import LocalTokenizer


def _episode():
    return open_episode(next(ts.generate_tasks(ts.SynthConfig.tiny(), "val", 1)))


def test_brief_prompt_lists_signatures_and_hides_launch_when_flat():
    docs = _episode().tool_docs
    rec, flat = system_prompt(docs(True), True, brief=True), system_prompt(docs(False), False, brief=True)
    assert "get_info(items)" in rec and "craft(ingredients, target)" in rec
    assert "await launch_subagent(" in rec and "subagent" not in flat.lower()
    assert "<thought>" in flat and "<python>" in flat and "finish(" in flat
    assert len(rec) < len(system_prompt(docs(True), True)) / 3
    assert system_prompt(docs(True), True) == system_prompt(docs(True), True, brief=False)   # default unchanged


def test_brief_prompt_adds_launch_for_families_that_do_not_document_it():
    assert "launch_subagent" in system_prompt("pick(item) -> str: adds an item.", True, brief=True)


def test_demo_policy_uses_the_brief_prompt():
    episode = _episode()
    task = next(ts.generate_tasks(ts.SynthConfig.tiny(), "val", 1))
    tok = LocalTokenizer()
    view = NodeView(0, 0, None, 0, episode.root_goal(), 50, True, ())
    texts = {}
    for brief in (False, True):
        policy = DemoPolicy(make_oracle(task, True, observable=True), tok, sentencepiece_template(),
                            episode.tool_docs, 4096, brief_prompt=brief)
        texts[brief] = tok.decode(asyncio.run(policy.act(view)).tokens.prompt)
    assert "## Subagents" in texts[False] and "## Subagents" not in texts[True]
    assert "launch_subagent" in texts[True]


def test_config_key_and_oracle_corpus():
    cfg = default_config()
    assert from_config_dict(cfg).rollout.brief_prompt is False
    cfg.rollout.brief_prompt = True
    assert from_config_dict(cfg).rollout.brief_prompt is True
    tasks = list(ts.generate_tasks(ts.SynthConfig.tiny(), "train", 1))[:2]
    texts = list(oracle_corpus_texts(tasks, {"observable": True}, brief_prompt=True))
    assert any("get_info(['" in t for t in texts) and any("result_count" in t for t in texts)
    assert any(t.startswith("Craft the following items") for t in texts)
