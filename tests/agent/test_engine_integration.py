"""The runtime driven by the real sampling engine and a tiny random Qwen3 (CPU).

``EnginePolicy`` follows the integration recipe in ``rao_jax.agent.protocol``'s docstring: one
``NodeTranscript`` per node, ``SamplingEngine.submit`` with the node as ``seq_id`` so each step only
prefills its extension, ``PolicyAction`` carrying the exact tokens and log-probs. A random model
writes no valid actions, so the inner nodes of the tree are scripted (``SplitPolicy``) and the leaves
(depth 3, eight of them, launched by parallel gathers) are the model: this checks that model-driven
nodes run concurrently inside a deep tree and that their records hold exactly what the engine
sampled, not that the model solves anything.
"""

from __future__ import annotations

import asyncio

import pytest

from rao_jax.agent.policy import ActionTokens, PolicyAction
from rao_jax.agent.protocol import (
    NodeTranscript,
    action_stop_sequences,
    qwen3_template,
    system_prompt,
    user_prompt,
)
from rao_jax.agent.rollout import RolloutRunner
from rao_jax.agent.sandbox import SandboxLimits, SandboxPool
from tests.agent.local_tokenizer import LocalTokenizer
from tests.agent.toy import BagWorld, SplitPolicy, budget_for

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")


class EnginePolicy:
    """A model-backed policy over ``SamplingEngine`` (test copy of the documented recipe)."""

    def __init__(self, engine, tok, template, tool_docs: str, max_new_tokens: int):
        from rao_jax.sampling import SamplingParams

        self.engine, self.tok, self.template, self.tool_docs = engine, tok, template, tool_docs
        self.params = SamplingParams(max_new_tokens, 1.0, stop=action_stop_sequences(tok, template))
        self.transcripts: dict[tuple[int, int], NodeTranscript] = {}
        self.completions: dict[tuple[int, int], list] = {}
        self.lengths_before: dict[tuple[int, int], list[int]] = {}

    async def act(self, view):
        key = (view.tree_id, view.node_id)
        if key not in self.transcripts:
            tr = self.transcripts[key] = NodeTranscript(self.template, self.tok)
            prompt = tr.start(system_prompt(self.tool_docs, view.recursive), user_prompt(view))
            self.completions[key], self.lengths_before[key] = [], []
        else:
            tr = self.transcripts[key]
            prompt = tr.observe(view.steps[-1].observation)
        self.lengths_before[key].append(len(tr.tokens) - len(prompt))
        c = await self.engine.submit(tr.tokens, self.params, seq_id=key)
        self.completions[key].append(c)
        tr.add_response(c.tokens, c.logprobs)
        return PolicyAction(self.tok.decode(c.tokens),
                            ActionTokens(tuple(prompt), tuple(c.tokens), tuple(c.logprobs)))


class ByDepth:
    """Scripted above ``model_depth``, the model from there down."""

    def __init__(self, script, model, model_depth: int):
        self.script, self.model, self.model_depth = script, model, model_depth

    async def act(self, view):
        return await (self.model if view.depth >= self.model_depth else self.script).act(view)


def test_model_leaves_in_a_depth_three_tree_record_exactly_what_the_engine_sampled():
    from rao_jax.models.config import tiny_config
    from rao_jax.models.qwen3 import Qwen3
    from rao_jax.sampling import EngineConfig, SamplingEngine

    docs = BagWorld({}).tool_docs(True)
    tok = LocalTokenizer(1000, [system_prompt(docs, True)] * 20)
    model = Qwen3(tiny_config(vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
    engine = SamplingEngine(model, EngineConfig(max_rows=8, page_size=16, num_pages=1024, max_seq_len=1024,
                                                decode_steps=8, max_prefill_tokens=1024, min_prefill_bucket=64,
                                                max_top_k=8))
    template = qwen3_template()
    model_policy = EnginePolicy(engine, tok, template, docs, max_new_tokens=24)
    target = {"a": 8}
    world = BagWorld(target)
    ended = []

    async def main():
        async with SandboxPool(1, SandboxLimits(memory_bytes=512 << 20)) as pool:
            async def release(tree_id, node_id):
                ended.append((tree_id, node_id, engine.cached_length((tree_id, node_id))))
                await engine.release((tree_id, node_id))

            runner = RolloutRunner(ByDepth(SplitPolicy(), model_policy, 3), pool, on_node_end=release)
            return await runner.run_tree(world, budget_for(target))

    tree = asyncio.run(asyncio.wait_for(main(), 600))
    leaves = [n for n in tree.nodes if n.depth == 3]
    assert tree.max_depth == 3 and len(leaves) == 8
    for parent in {n.parent_id for n in leaves}:
        a, b = (tree.node(c) for c in tree.node(parent).children)
        assert a.start_time < b.end_time and b.start_time < a.end_time     # siblings ran together
    for n in tree.nodes:
        key = (tree.tree_id, n.node_id)
        if n.depth < 3:
            assert n.tokens is None
            continue
        tr, completions = model_policy.transcripts[key], model_policy.completions[key]
        assert n.own_steps == len(completions) == 2 and n.end_reason in ("budget", "finished")
        assert list(n.tokens) == tr.tokens and list(n.loss_mask) == tr.loss_mask
        sampled = [t for c in completions for t in c.tokens]
        assert [t for t, m in zip(n.tokens, n.loss_mask, strict=True) if m] == sampled
        assert [lp for lp, m in zip(n.logprobs, n.loss_mask, strict=True) if m] == pytest.approx(
            [lp for c in completions for lp in c.logprobs])
        assert all(lp <= 0.0 for lp in n.logprobs)
        # Step 2 extends step 1's sequence: the engine reused the KV of everything it had cached.
        first, second = completions
        assert second.reused_tokens >= first.prompt_tokens and model_policy.lengths_before[key][1] > 0
        assert n.steps[0].prompt_token_count == first.prompt_tokens
        assert tok.decode(n.tokens).startswith("<|im_start|>system\n")
        # The model's text went through the parser: invalid actions became observations.
        for s in n.steps:
            assert s.observation
    assert tree.root.total_steps == tree.model_calls <= tree.root_budget
    # Every node was reported ended once; model nodes still held their KV until then, not after.
    assert sorted(node for _, node, _ in ended) == [n.node_id for n in tree.nodes]
    assert all(cached > 0 for _, node, cached in ended if tree.node(node).depth == 3)
    assert all(engine.cached_length((tree.tree_id, n.node_id)) == 0 for n in leaves)
