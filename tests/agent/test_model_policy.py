"""ModelPolicy: context overflow ends a node cleanly (record, parent's observation, no engine error),
the response cap shrinks to the room left, flat-mode prompts, limits; and ``EndNode`` in the runtime."""

from __future__ import annotations

import asyncio

import pytest

from rao_jax.agent.policy import EndNode, NodeView
from rao_jax.agent.protocol import NodeTranscript, system_prompt, user_prompt
from rao_jax.agent.rollout import RolloutConfig, RolloutRunner
from rao_jax.agent.sandbox import SandboxLimits, SandboxPool
from tests.agent.toy import BagWorld, SplitPolicy

LIMITS = SandboxLimits(cpu_seconds=2.0, wall_seconds=4.0, memory_bytes=512 << 20)


def roll(policy, world, budget, config: RolloutConfig | None = None, on_node_end=None, max_context=None):
    async def main():
        async with SandboxPool(1, LIMITS) as pool:
            runner = RolloutRunner(policy, pool, config or RolloutConfig(), on_node_end=on_node_end)
            return await runner.run_tree(world, budget, max_context=max_context)

    return asyncio.run(asyncio.wait_for(main(), 300))


class ByDepth:
    def __init__(self, script, model, model_depth: int):
        self.script, self.model, self.model_depth = script, model, model_depth

    async def act(self, view):
        return await (self.model if view.depth >= self.model_depth else self.script).act(view)


class EndSecondChild(SplitPolicy):
    """SplitPolicy, except that the child given context "second half" ends itself at its step 1."""

    async def act(self, view):
        if view.goal.context == "second half" and len(view.steps) == 1:
            return EndNode("context", "no room left (test)")
        return await super().act(view)


def test_end_node_ends_the_node_without_a_step_and_tells_the_parent():
    target = {"a": 2}
    world = BagWorld(target)
    tree = roll(EndSecondChild(), world, 10)
    root, first, second = tree.nodes
    assert second.end_reason == "context" and second.own_steps == 1 and second.finish_message is None
    assert second.success == 0.0 and first.success == 1.0 and first.end_reason == "finished"
    assert root.finish_message == {"parts": ["picked a", "Subagent 2 did not finish: no room left (test)"]}
    assert "[subagent 2 ended early (context) without calling finish; it used 1 of its 2 steps]" in \
        root.steps[0].observation
    # No step was charged for the EndNode: the ledger holds the 2 + 2 + 1 steps actually taken.
    assert root.total_steps == tree.model_calls == 5 and dict(world.bag) == {"a": 2}


@pytest.mark.parametrize("reason,message", [("budget", "x"), ("finished", "x"), ("has space", "x"), ("", "x"),
                                            ("context", "  ")])
def test_end_node_refuses_reserved_or_empty_fields(reason, message):
    with pytest.raises(ValueError, match="EndNode"):
        EndNode(reason, message)


def test_nodes_whose_context_overflows_the_engine_end_with_a_record_and_the_tree_goes_on(tiny_lm):
    from rao_jax.agent.model_policy import ModelPolicy
    from rao_jax.sampling import SamplingParams

    engine = tiny_lm.engine
    policy = ModelPolicy(engine, tiny_lm.tokenizer, tiny_lm.template, tiny_lm.tool_docs, SamplingParams(24, 1.0))
    limit = engine.config.max_seq_len
    assert policy.context_limit == limit and policy.min_new_tokens == 24
    launch = ("ctx = ' '.join(str(i) for i in range(1500))\n"
              "r = await asyncio.gather(launch_subagent({'a': 1}, 12), launch_subagent({'b': 1}, 3, context=ctx))\n"
              "print(r)")
    script = [f"<thought>go</thought>\n<python>\n{launch}\n</python>",
              "<thought>done</thought>\n<python>\nfinish(r)\n</python>"]

    class Root:
        async def act(self, view):
            return script[len(view.steps)]

    cached_at_end = {}

    async def end(tree_id, node_id):
        cached_at_end[node_id] = engine.cached_length(policy.seq_id(tree_id, node_id))
        await policy.end_node(tree_id, node_id)

    tree = roll(ByDepth(Root(), policy, 1), BagWorld({"a": 1, "b": 1}), 20, on_node_end=end)
    root, grows, long_context = tree.nodes
    # The child that kept answering grew until a response no longer fitted, then ended (no crash).
    assert grows.end_reason == "context" and 3 <= grows.own_steps < 12
    observation_turn = len(tiny_lm.tokenizer.encode(grows.steps[-1].observation)) + 12   # + template tokens
    assert len(grows.tokens) <= limit < len(grows.tokens) + observation_turn + 24
    assert cached_at_end[grows.node_id] > 0
    # The child whose first prompt (its parent's 1500-number context) cannot fit never sampled.
    assert long_context.end_reason == "context" and long_context.own_steps == 0 and long_context.tokens is None
    assert cached_at_end[long_context.node_id] == 0
    # The parent was told why, and finished.
    first, second = root.finish_message
    assert first.startswith(f"Subagent 1 did not finish: its context window is full: its {grows.own_steps} steps")
    assert second.startswith("Subagent 2 did not finish: its context window is full: its task prompt takes")
    assert f"of the {limit} it may hold" in second
    assert root.end_reason == "finished" and root.total_steps == tree.model_calls == 2 + grows.own_steps
    assert policy.stats["context_ends"] == 2 and policy.stats["steps"] == grows.own_steps
    assert all(engine.cached_length(policy.seq_id(tree.tree_id, n.node_id)) == 0 for n in tree.nodes)


def test_response_cap_shrinks_to_the_room_left_then_the_node_ends_flat_mode(tiny_lm):
    from rao_jax.agent.model_policy import ModelPolicy
    from rao_jax.sampling import SamplingParams

    world = BagWorld({"a": 3})
    view = NodeView(0, 0, None, 0, world.root_goal(), 6, False, ())
    first_prompt = len(NodeTranscript(tiny_lm.template, tiny_lm.tokenizer).start(
        system_prompt(tiny_lm.tool_docs(False), False), user_prompt(view)))
    policy = ModelPolicy(tiny_lm.engine, tiny_lm.tokenizer, tiny_lm.template, tiny_lm.tool_docs,
                         SamplingParams(24, 1.0), max_context=first_prompt + 10, min_new_tokens=4)
    assert policy.context_limit == first_prompt + 10
    tree = roll(policy, world, 6, RolloutConfig(recursive=False), on_node_end=policy.end_node)
    (root,) = tree.nodes
    assert root.end_reason == "context" and root.own_steps == 1
    assert root.steps[0].prompt_token_count == first_prompt and 1 <= root.steps[0].response_token_count <= 10
    assert len(root.tokens) <= first_prompt + 10
    assert "launch_subagent" not in tiny_lm.tokenizer.decode(root.tokens)     # flat mode: not in the prompt
    assert policy.stats["shortened"] == 1 and policy.stats["context_ends"] == 1 and policy.stats["steps"] == 1


def test_a_tree_runs_with_its_familys_window_and_tools_when_the_policy_serves_several(tiny_lm):
    from rao_jax.agent.model_policy import ModelPolicy
    from rao_jax.sampling import SamplingParams

    world = BagWorld({"a": 3})
    view = NodeView(0, 0, None, 0, world.root_goal(), 6, False, ())
    first_prompt = len(NodeTranscript(tiny_lm.template, tiny_lm.tokenizer).start(
        system_prompt(world.tool_docs(False), False), user_prompt(view)))
    # No tool docs and no cap of its own: the runner's view gives the tree's tools and window.
    policy = ModelPolicy(tiny_lm.engine, tiny_lm.tokenizer, tiny_lm.template, None, SamplingParams(24, 1.0),
                         min_new_tokens=4)
    assert policy.context_limit > first_prompt + 10
    tree = roll(policy, world, 6, RolloutConfig(recursive=False), on_node_end=policy.end_node,
                max_context=first_prompt + 10)
    (root,) = tree.nodes
    assert root.end_reason == "context" and root.own_steps == 1 and len(root.tokens) <= first_prompt + 10
    assert root.steps[0].prompt_token_count == first_prompt   # the prompt documents the world's own tools


def test_context_limit_is_the_smallest_of_engine_model_and_cap_and_bad_settings_are_refused(tiny_lm):
    from flax import nnx

    from rao_jax.agent.model_policy import ModelPolicy
    from rao_jax.models.config import tiny_config
    from rao_jax.models.qwen3 import Qwen3
    from rao_jax.sampling import EngineConfig, SamplingEngine, SamplingParams

    tok = tiny_lm.tokenizer
    model = Qwen3(tiny_config(vocab_size=tok.vocab_size, max_position_embeddings=256), rngs=nnx.Rngs(0))
    engine = SamplingEngine(model, EngineConfig(max_rows=2, num_pages=80, max_seq_len=1024, max_prefill_tokens=1024,
                                                max_top_k=8))

    def make(params=None, **kw):
        return ModelPolicy(engine, tok, tiny_lm.template, tiny_lm.tool_docs, params or SamplingParams(16, 1.0), **kw)

    assert make().context_limit == 256
    assert make(max_context=100).context_limit == 100
    policy = make(min_new_tokens=64)
    assert policy.min_new_tokens == 16 and policy.params.stop[0] == (tok.special_id("<|im_end|>"),)
    assert make(name="eval").seq_id(3, 4) == ("eval", 3, 4) and policy.seq_id(3, 4) == (3, 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        make(SamplingParams(0, 1.0))
    with pytest.raises(ValueError, match="min_new_tokens"):
        make(min_new_tokens=0)
    with pytest.raises(ValueError, match="top_k"):
        make(SamplingParams(16, 1.0, top_k=9))
