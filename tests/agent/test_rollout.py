"""The rollout scheduler with scripted policies: deep parallel trees, records, credit, budgets, flat mode."""

from __future__ import annotations

import asyncio
import json

import pytest

from rao_jax.agent.budget import BudgetCaps
from rao_jax.agent.policy import ActionTokens, NodeView, PolicyAction
from rao_jax.agent.protocol import NodeTranscript, qwen3_template, system_prompt, user_prompt
from rao_jax.agent.rollout import RolloutConfig, RolloutRunner
from rao_jax.agent.sandbox import SandboxLimits, SandboxPool
from rao_jax.agent.trace import main as trace_main
from rao_jax.agent.trace import read_trace, render_html, render_trace
from rao_jax.agent.tree import TreeResult
from rao_jax.envs.base import Task
from tests.agent.local_tokenizer import LocalTokenizer
from tests.agent.toy import BagWorld, ScriptPolicy, SplitPolicy, budget_for, units

LIMITS = SandboxLimits(cpu_seconds=2.0, wall_seconds=4.0, memory_bytes=512 << 20)


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _roll(policy, worlds, budgets, config: RolloutConfig | None = None, pool_size=2):
    async with SandboxPool(pool_size, LIMITS) as pool:
        runner = RolloutRunner(policy, pool, config or RolloutConfig())
        return await asyncio.gather(*(runner.run_tree(w, b) for w, b in zip(worlds, budgets, strict=True)))


def check_consistent(tree: TreeResult) -> None:
    """Parents, depths, fork steps and the budget ledger agree with each other."""
    by_id = {n.node_id: n for n in tree.nodes}
    assert tree.root.parent_id is None and tree.root.depth == 0 and tree.root.fork_step is None
    assert tree.root.budget == tree.root_budget
    for n in tree.nodes:
        assert n.tree_id == tree.tree_id and n.start_time <= n.end_time
        assert n.own_steps == len(n.steps) and n.own_steps >= 1
        kids = [by_id[c] for c in n.children]
        assert n.total_steps == n.own_steps + sum(k.total_steps for k in kids) <= n.budget
        assert [s.index for s in n.steps] == list(range(n.own_steps))
        assert sorted(c for s in n.steps for c in s.children) == sorted(n.children)
        if n.parent_id is not None:
            p = by_id[n.parent_id]
            assert n.depth == p.depth + 1 and n.node_id in p.children
            assert n.node_id in p.steps[n.fork_step].children
            assert p.start_time <= n.start_time and n.end_time <= p.end_time
            assert n.budget + 1 <= p.budget
    assert tree.root.total_steps == tree.model_calls <= tree.root_budget


def test_depth_three_tree_with_parallel_children():
    target = {"a": 4, "b": 4}
    world = BagWorld(target)
    policy = SplitPolicy()
    (tree,) = run(_roll(policy, [world], [budget_for(target) + 3]))
    check_consistent(tree)
    assert tree.max_depth == 3 and len(tree.nodes) == 15 and tree.model_calls == 30
    assert all(n.success == 1.0 and n.end_reason == "finished" for n in tree.nodes)
    assert dict(world.bag) == target
    # Parallel: siblings launched by one gather overlap in time.
    for n in tree.nodes:
        if len(n.children) == 2:
            a, b = (tree.node(c) for c in n.children)
            assert a.start_time < b.end_time and b.start_time < a.end_time
            assert a.fork_step == b.fork_step == 0
    # Structured results travel back as values, and the parent is told what each child used.
    root = tree.root
    assert isinstance(root.finish_message, dict) and len(root.finish_message["parts"]) == 2
    assert root.finish_message["parts"][0]["parts"][0]["parts"] == ["picked a", "picked a"]
    assert "[subagent 1 finished; it used 14 of its 20 steps]" in root.steps[0].observation
    # Children were told their context; the world saw parents open before children.
    opened = [n for n, _ in world.opened]
    assert all(opened.index(p) < opened.index(c) for c, p in world.opened if p is not None)
    second = tree.node(root.children[1])
    assert second.goal.context == "second half"
    assert tree.critical_path() == 2 + 2 + 2 + 2


def test_each_child_of_a_gather_is_credited_its_own_success():
    target = {"a": 1, "b": 1, "c": 1, "trap": 1}
    world = BagWorld(target)
    (tree,) = run(_roll(SplitPolicy(), [world], [budget_for(target)]))
    check_consistent(tree)
    leaves = {next(iter(n.goal.spec)): n for n in tree.nodes if len(n.goal.spec) == 1}
    assert {k: v.success for k, v in leaves.items()} == {"a": 1.0, "b": 1.0, "c": 1.0, "trap": 0.0}
    assert "\nActionError: trap cannot be picked" in leaves["trap"].steps[0].observation
    pairs = {tuple(sorted(n.goal.spec)): n.success for n in tree.nodes if len(n.goal.spec) == 2}
    assert pairs == {("a", "b"): 1.0, ("c", "trap"): 0.0}
    assert tree.root.success == 0.0
    # Siblings under one gather with different outcomes keep them apart.
    parent = tree.node(leaves["trap"].parent_id)
    assert sorted(tree.node(c).success for c in parent.children) == [0.0, 1.0]


def test_many_trees_at_once_and_a_hostile_tree_does_not_disturb_the_others():
    hostile = SplitPolicy(cells={"x": "while True:\n    pass", "y": "raise RuntimeError('child blew up')",
                                 "z": "import os\nos.fork()"})
    good_targets = [{"a": 2, "b": 1}, {"c": 2}, {"d": 1, "e": 1}]
    bad_target = {"x": 1, "y": 1, "z": 1}
    targets = [*good_targets, bad_target]
    worlds = [BagWorld(t) for t in targets]
    trees = run(_roll(hostile, worlds, [budget_for(t) + 2 for t in targets], pool_size=2))
    for tree, world, target in zip(trees, worlds, targets, strict=True):
        check_consistent(tree)
        if target is not bad_target:
            assert tree.root.success == 1.0 and dict(world.bag) == target
    bad = trees[-1]
    leaves = {next(iter(n.goal.spec)): n for n in bad.nodes if len(n.goal.spec) == 1}
    assert "TimeoutError" in leaves["x"].steps[0].observation
    assert "RuntimeError: child blew up" in leaves["y"].steps[0].observation
    assert "ImportError" in leaves["z"].steps[0].observation
    assert all(leaf.own_steps == 2 for leaf in leaves.values())   # each went on to its next step
    assert len({t.tree_id for t in trees}) == 4


def test_run_group_rolls_out_tasks_times_g():
    tasks = [Task(f"t{i}", "bag", f"task {i}", budget_for(t), "easy", {"target": t})
             for i, t in enumerate([{"a": 2}, {"b": 1, "c": 1}])]

    async def main():
        async with SandboxPool(2, LIMITS) as pool:
            runner = RolloutRunner(SplitPolicy(), pool)
            return await runner.run_group(tasks, lambda task, g: BagWorld(dict(task.spec["target"])), 3)
    trees = run(main())
    assert [t.task_id for t in trees] == ["t0"] * 3 + ["t1"] * 3
    assert all(t.root.success == 1.0 for t in trees)


def test_budget_refusal_is_an_observation_and_the_ledger_adds_up():
    views: list[NodeView] = []

    class Recording(ScriptPolicy):
        async def act(self, view):
            views.append(view)
            return await super().act(view)

    root_cells = ["r = await launch_subagent({'a': 1}, 100)\nprint(r)",
                  "r = await launch_subagent({'a': 1}, 7)\nprint(r)",
                  "finish('done')"]
    leaf_cells = ["pick('a')", "finish('picked')"]
    world = BagWorld({"a": 1})
    (tree,) = run(_roll(Recording([root_cells, leaf_cells]), [world], [10]))
    check_consistent(tree)
    root = tree.root
    assert "launch_subagent refused: budget 100 needs 101" in root.steps[0].observation
    assert "'picked'" not in root.steps[0].observation and root.steps[0].children == ()
    assert "picked" in root.steps[1].observation and len(root.children) == 1
    assert [v.budget_left for v in views if v.node_id == 0] == [10, 9, 6]
    assert [v.budget_left for v in views if v.node_id == 1] == [7, 6]
    assert root.total_steps == 5 and root.success == 1.0


def test_caps_refuse_launches():
    cells = ["import asyncio\nr = await asyncio.gather(launch_subagent({'a': 1}, 3), launch_subagent({'b': 1}, 3))\n"
             "print(r)", "finish('x')"]
    config = RolloutConfig(caps=BudgetCaps(max_depth=1, max_children_per_node=1))
    (tree,) = run(_roll(ScriptPolicy([cells, cells]), [BagWorld({"a": 1})], [30], config))
    check_consistent(tree)
    assert len(tree.root.children) == 1 and tree.max_depth == 1
    assert "launched 1 subagents" in tree.root.steps[0].observation
    assert "deeper than the maximum depth 1" in tree.node(1).steps[0].observation


def test_flat_mode_has_no_launch_subagent():
    cells = ["r = await launch_subagent({'a': 1}, 3)", "pick('a')", "finish('ok')"]
    policy = ScriptPolicy([cells])
    (tree,) = run(_roll(policy, [BagWorld({"a": 1})], [5], RolloutConfig(recursive=False)))
    assert "NameError: name 'launch_subagent' is not defined" in tree.root.steps[0].observation
    assert len(tree.nodes) == 1 and tree.root.success == 1.0 and not tree.recursive
    assert "launch_subagent" not in system_prompt(BagWorld({}).tool_docs(False), False)


def test_malformed_action_and_budget_exhaustion():
    class Sloppy:
        async def act(self, view):
            if not view.steps:
                return "I think I should pick an item."
            return "<thought>t</thought><python>pick('a')</python>"

    world = BagWorld({"a": 1})
    (tree,) = run(_roll(Sloppy(), [world], [3]))
    root = tree.root
    assert not root.steps[0].parsed and "no <python> cell" in root.steps[0].observation
    assert root.own_steps == 3 and root.end_reason == "budget" and root.finish_message is None
    assert root.success == 0.0 and world.bag["a"] == 2


def test_unawaited_child_outlives_its_parent_and_is_settled():
    root_cells = ["import asyncio\nt = asyncio.create_task(launch_subagent({'a': 1}, 3))\nawait asyncio.sleep(0.05)\n"
                  "finish('left early')"]
    leaf_cells = ["import asyncio\nawait asyncio.sleep(0.3)\npick('a')", "finish('late')"]
    (tree,) = run(_roll(ScriptPolicy([root_cells, leaf_cells]), [BagWorld({"a": 1})], [10]))
    assert tree.root.finish_message == "left early"
    # The child's cell was cancelled with its parent's cell, so it never picked; it still ran its steps.
    child = tree.node(1)
    assert child.own_steps >= 1 and tree.root.total_steps == tree.model_calls


class TokenizingPolicy(SplitPolicy):
    """SplitPolicy whose actions carry tokens, built with NodeTranscript as a model policy would."""

    def __init__(self, tok):
        super().__init__()
        self.tok = tok
        self.transcripts: dict[tuple[int, int], NodeTranscript] = {}

    async def act(self, view):
        text = await super().act(view)
        key = (view.tree_id, view.node_id)
        if not view.steps:
            tr = self.transcripts[key] = NodeTranscript(qwen3_template(), self.tok)
            prompt = tr.start(system_prompt("docs", view.recursive), user_prompt(view))
        else:
            tr = self.transcripts[key]
            prompt = tr.observe(view.steps[-1].observation)
        response = self.tok.encode(text)
        logprobs = [-0.1 * (1 + i % 3) for i in range(len(response))]
        tr.add_response(response, logprobs)
        return PolicyAction(text, ActionTokens(tuple(prompt), tuple(response), tuple(logprobs)))


def test_token_fields_are_recorded_for_token_policies(tmp_path):
    tok = LocalTokenizer()
    policy = TokenizingPolicy(tok)
    config = RolloutConfig(trace_dir=str(tmp_path))
    (tree,) = run(_roll(policy, [BagWorld({"a": 2, "b": 1})], [budget_for({"a": 2, "b": 1})], config))
    check_consistent(tree)
    for n in tree.nodes:
        tr = policy.transcripts[(tree.tree_id, n.node_id)]
        assert list(n.tokens) == tr.tokens and list(n.loss_mask) == tr.loss_mask and list(n.logprobs) == tr.logprobs
        assert n.response_token_count == sum(s.response_token_count for s in n.steps)
        assert n.prompt_token_count + n.response_token_count == len(n.tokens)
        assert tok.decode(n.tokens).startswith("<|im_start|>system\n")
    lines = read_trace(tmp_path / f"tree_{tree.tree_id:06d}.jsonl")
    assert [d["node_id"] for d in lines[1:]] == [n.node_id for n in tree.nodes]
    assert "tokens" not in lines[1] and lines[1]["response_tokens"] == tree.root.response_token_count


def test_trace_roundtrip_and_rendering(tmp_path):
    config = RolloutConfig(trace_dir=str(tmp_path))
    (tree,) = run(_roll(SplitPolicy(), [BagWorld({"a": 2, "b": 2})], [budget_for({"a": 2, "b": 2})], config))
    (path,) = tmp_path.glob("tree_*.jsonl")
    lines = read_trace(path)
    header = lines[0]
    assert header["nodes"] == len(tree.nodes) and header["model_calls"] == tree.model_calls
    assert header["critical_path"] == tree.critical_path() and header["max_depth"] == tree.max_depth
    for d, n in zip(lines[1:], tree.nodes, strict=True):
        assert (d["parent_id"], d["depth"], d["fork_step"], d["success"]) == (n.parent_id, n.depth, n.fork_step,
                                                                             n.success)
        assert [s["observation"] for s in d["steps"]] == [s.observation for s in n.steps]
        json.dumps(d)
    text = render_trace(lines, steps=True)
    assert text.count("\n[") + text.count("─ [") >= len(tree.nodes) - 1
    for n in tree.nodes:
        assert f"[{n.node_id}]" in text
    assert "step 0" in text and "=> " in text
    page = render_html(lines)
    assert page.startswith("<!doctype html>") and page.count("<details") == len(tree.nodes)
    assert "<script" not in page and "finish: {&quot;parts&quot;" in page
    out = tmp_path / "tree.html"
    trace_main([str(path), "--html", str(out)])
    assert out.read_text() == page
    with pytest.raises(ValueError, match="not a tree trace"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"kind": "node"}\n')
        read_trace(bad)


class _AllLeavesAtOnce(SplitPolicy):
    """``SplitPolicy`` whose leaves take their first step only once every leaf of every tree has
    asked for it: all nodes are then live together, however fast the sandboxes start."""

    def __init__(self, leaves: int):
        super().__init__()
        self.leaves, self.arrived = leaves, 0
        self.all_in = asyncio.Event()

    async def act(self, view: NodeView) -> str:
        if units(dict(view.goal.spec)) == 1 and not view.steps:
            self.arrived += 1
            if self.arrived == self.leaves:
                self.all_in.set()
            await asyncio.wait_for(self.all_in.wait(), 120)
        return await super().act(view)


def test_more_than_512_nodes_live_at_once():
    """40 trees of 15 nodes (each tree its own sandbox process) step concurrently; every tree solves
    its task, with all 600 nodes live at once."""
    target = {"a": 4, "b": 4}
    worlds = [BagWorld(target) for _ in range(40)]
    trees = run(_roll(_AllLeavesAtOnce(leaves=40 * units(target)), worlds, [budget_for(target)] * 40))
    events = sorted([(n.start_time, 1) for t in trees for n in t.nodes] +
                    [(n.end_time, -1) for t in trees for n in t.nodes])
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    assert peak == 600 and sum(len(t.nodes) for t in trees) == 600
    assert all(t.root.success == 1.0 for t in trees) and all(dict(w.bag) == target for w in worlds)


def test_goal_variables_put_each_nodes_task_in_its_namespace_without_a_step():
    cells = [["r = await launch_subagent({'a': 1}, 3)\nprint(goal, budget, r)", "finish('ok')"],
             ["print(goal, budget)\nfinish('child')"]]
    (tree,) = run(_roll(ScriptPolicy(cells), [BagWorld({"a": 2})], [9], RolloutConfig(goal_variables=True)))
    root, child = tree.root, tree.node(1)
    assert root.steps[0].observation.startswith("{'a': 2} 9 child")
    assert child.steps[0].observation.startswith("{'a': 1} 3")
    assert root.own_steps == 2 and child.own_steps == 1 and tree.model_calls == 3   # the set-up is no step
    check_consistent(tree)
    (plain,) = run(_roll(ScriptPolicy(cells), [BagWorld({"a": 2})], [9]))
    assert "NameError: name 'goal' is not defined" in plain.node(1).steps[0].observation
