"""The runtime driven by ``ModelPolicy`` over the real sampling engine and a tiny random Qwen3 (CPU).

A random model writes no valid actions, so the inner nodes of the tree are scripted (``SplitPolicy``)
and the leaves (depth 3, eight of them, launched by parallel gathers) are the model: this checks that
model-driven nodes run concurrently inside a deep tree, that their records hold exactly what the
model sampled (tokens, and log-probs recomputed here with the full no-cache forward), that each
step's prompt extends the previous one and the engine prefills only the extension, and that every
node's KV pages are freed when it ends, not before.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rao_jax.agent.rollout import RolloutRunner
from rao_jax.agent.sandbox import SandboxLimits, SandboxPool
from tests.agent.toy import BagWorld, SplitPolicy, budget_for

jax = pytest.importorskip("jax")


class ByDepth:
    """Scripted above ``model_depth``, the model from there down."""

    def __init__(self, script, model, model_depth: int):
        self.script, self.model, self.model_depth = script, model, model_depth

    async def act(self, view):
        return await (self.model if view.depth >= self.model_depth else self.script).act(view)


def full_forward_logprobs(model, sequences: list[list[int]]) -> list[np.ndarray]:
    """log pi(token_i | tokens_<i) for i >= 1 of each sequence, from the training forward (no cache)."""
    width = 1 << (max(map(len, sequences)) - 1).bit_length()
    batch = np.zeros((len(sequences), width), np.int32)
    for i, s in enumerate(sequences):
        batch[i, : len(s)] = s
    logp = np.asarray(jax.nn.log_softmax(model(jax.numpy.asarray(batch)), axis=-1))
    return [logp[i, np.arange(len(s) - 1), s[1:]] for i, s in enumerate(sequences)]


def test_model_leaves_in_a_depth_three_tree_record_exactly_what_the_engine_sampled(tiny_lm):
    from rao_jax.agent.model_policy import ModelPolicy
    from rao_jax.sampling import SamplingParams

    engine, tok = tiny_lm.engine, tiny_lm.tokenizer
    policy = ModelPolicy(engine, tok, tiny_lm.template, tiny_lm.tool_docs, SamplingParams(24, 1.0))
    target = {"a": 8}
    ended = []
    stats_before = engine.stats.copy()

    async def main():
        async with SandboxPool(1, SandboxLimits(memory_bytes=512 << 20)) as pool:
            async def end(tree_id, node_id):
                tr = policy.transcript(tree_id, node_id)
                snapshot = None if tr is None else (list(tr.tokens), list(tr.loss_mask), list(tr.logprobs))
                ended.append((node_id, engine.cached_length(policy.seq_id(tree_id, node_id)), snapshot))
                await policy.end_node(tree_id, node_id)

            runner = RolloutRunner(ByDepth(SplitPolicy(), policy, 3), pool, on_node_end=end)
            return await runner.run_tree(BagWorld(target), budget_for(target))

    tree = asyncio.run(asyncio.wait_for(main(), 600))
    leaves = [n for n in tree.nodes if n.depth == 3]
    assert tree.max_depth == 3 and len(leaves) == 8
    for parent in {n.parent_id for n in leaves}:
        a, b = (tree.node(c) for c in tree.node(parent).children)
        assert a.start_time < b.end_time and b.start_time < a.end_time     # siblings ran together
    assert policy.max_in_flight >= 2
    snapshots = {node: snap for node, _, snap in ended}
    for n in tree.nodes:
        if n.depth < 3:
            assert n.tokens is None and snapshots[n.node_id] is None
            continue
        assert n.own_steps == 2 and n.end_reason == "budget"
        # The record is the policy's transcript: the tokens the engine saw plus what it sampled.
        assert (list(n.tokens), list(n.loss_mask), list(n.logprobs)) == snapshots[n.node_id]
        assert tok.decode(n.tokens).startswith("<|im_start|>system\n")
        assert "launch_subagent" in tok.decode(n.tokens)                    # recursive-mode prompt
        first, second = n.steps
        mask = np.asarray(n.loss_mask)
        assert mask.sum() == first.response_token_count + second.response_token_count
        # Layout: prompt 0, response 0, prompt 1 (observation turn), response 1.
        edges = np.cumsum([first.prompt_token_count, first.response_token_count, second.prompt_token_count,
                           second.response_token_count])
        assert edges[-1] == len(n.tokens) and list(mask) == [0] * edges[0] + [1] * (edges[1] - edges[0]) + [
            0] * (edges[2] - edges[1]) + [1] * (edges[3] - edges[2])
        assert all(s.observation for s in n.steps)      # the random text went through the parser
    # Behaviour log-probs are the model's own: recompute them with the full forward.
    recomputed = full_forward_logprobs(tiny_lm.model, [list(n.tokens) for n in leaves])
    for n, logp in zip(leaves, recomputed, strict=True):
        response = np.flatnonzero(np.asarray(n.loss_mask))
        np.testing.assert_allclose(np.asarray(n.logprobs)[response], logp[response - 1], atol=2e-3, rtol=1e-3)
        assert all(lp == 0.0 for lp, m in zip(n.logprobs, n.loss_mask, strict=True) if not m)
    # KV reuse: the second step prefilled only its extension (plus the one sampled token not yet cached).
    prefilled = engine.stats["prefill_tokens"] - stats_before["prefill_tokens"]
    assert prefilled <= sum(s0.prompt_token_count + s1.prompt_token_count + 1 for s0, s1 in (n.steps for n in leaves))
    assert policy.stats["reused_tokens"] >= sum(n.steps[0].prompt_token_count for n in leaves)
    assert policy.stats["steps"] == 16 and policy.stats["context_ends"] == 0
    assert tree.root.total_steps == tree.model_calls <= tree.root_budget
    # Every node was reported ended once; model nodes still held their KV until then, not after.
    assert sorted(node for node, _, _ in ended) == [n.node_id for n in tree.nodes]
    assert all(cached > 0 for node, cached, _ in ended if tree.node(node).depth == 3)
    assert all(engine.cached_length(policy.seq_id(tree.tree_id, n.node_id)) == 0 for n in leaves)
    assert all(policy.transcript(tree.tree_id, n.node_id) is None for n in leaves)
