"""The task families' oracle policies run through the real runtime (sandboxed cells, budgets, records).

The families check their oracles with an in-process reference driver (``rao_jax.agent.scripted_rollout``);
here the same policies and episodes go through ``RolloutRunner``: their cells run in sandbox workers,
their tool calls and launches cross the proxy, and the records must show the oracle's result with
every node credited its own success.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re

import pytest

from rao_jax import metrics
from rao_jax.agent.oracles import make_oracle
from rao_jax.agent.protocol import user_prompt
from rao_jax.agent.rollout import RolloutConfig, RolloutRunner
from rao_jax.agent.sandbox import SandboxLimits, SandboxPool
from rao_jax.agent.scripted_rollout import run_tree as reference_run
from rao_jax.envs import chain_hop, labeled_rows
from rao_jax.envs import textcraft_synth as ts
from rao_jax.envs.families import open_episode
from tests.agent.test_rollout import check_consistent

SMALL = {"leaf_crafts": 3, "crafts_per_step": 1, "inline_crafts": 1}   # deep trees in the tiny world


def _roll(task, recursive: bool, budget: int | None = None, prompts: list | None = None, **knobs):
    """One tree of the task's oracle through the runtime; ``prompts`` (a list) collects each node's first
    user turn as it read it, as (is the root, text)."""
    config = RolloutConfig(recursive=recursive, goal_variables=knobs.get("style") == "program")
    oracle = make_oracle(task, recursive, **knobs)

    class Recording:
        async def act(self, view):
            if prompts is not None and not view.steps:
                prompts.append((view.parent_id is None, user_prompt(view)))
            return await oracle.act(view)

    async def main():
        async with SandboxPool(1, SandboxLimits(memory_bytes=512 << 20)) as pool:
            runner = RolloutRunner(Recording(), pool, config)
            return await runner.run_tree(open_episode(task), budget or task.max_steps, task.task_id)
    return asyncio.run(asyncio.wait_for(main(), 300))


@pytest.mark.parametrize("recursive", [False, True], ids=["flat", "recursive"])
def test_textcraft_oracle_through_the_runtime(recursive):
    deepest = max(ts.generate_tasks(ts.SynthConfig.tiny(seed=1), "train", 6), key=lambda t: t.spec["num_craft_steps"])
    depths = []
    for task in [*itertools.islice(ts.generate_tasks(ts.SynthConfig.tiny(seed=0), "val", 6), 3), deepest]:
        tree = _roll(task, recursive, **SMALL)
        depths.append(tree.max_depth)
        check_consistent(tree)
        assert tree.root.success == 1.0 and all(n.success == 1.0 for n in tree.nodes), task.task_id
        reference = reference_run(open_episode(task), make_oracle(task, recursive, **SMALL), task.max_steps,
                                  recursive)
        assert len(tree.nodes) == len(reference)
        assert sorted(n.own_steps for n in tree.nodes) == sorted(n.steps for n in reference)
        # The in-process driver shows a node what the runtime shows it (the tokenizer corpus is recorded there).
        runtime_texts = {n.node_id: [(s.action, s.observation) for s in n.steps] for n in tree.nodes}
        reference_texts = {n.node_id: [(s.action, s.observation) for s in n.transcript] for n in reference}
        assert reference_texts == runtime_texts, task.task_id
    assert max(depths) >= 2 if recursive else max(depths) == 0


def test_rows_and_hop_oracles_through_the_runtime():
    rows = labeled_rows.generate_task(labeled_rows.RowsConfig(window_tokens=1024, context_multiple=2.0, max_read=32,
                                                              max_steps=80), "val", 0)
    hop = chain_hop.generate_task(chain_hop.HopConfig(), "val", 32, 3, 2)
    for task in (rows, hop):
        tree = _roll(task, True)
        check_consistent(tree)
        assert tree.root.success == 1.0 and all(n.success == 1.0 for n in tree.nodes), task.task_id
    assert len(_roll(hop, True).nodes) == 1 + 3 * 2


ROWS_PROGRAM = {"window_tokens": 640, "tokens_per_row": 26, "max_read": 8, "steps_per_chunk": 14,
                "questions": ["count_label", "most_frequent", "least_frequent", "compare"]}


@pytest.mark.parametrize("multiple", [1, 4])
def test_the_rows_program_oracle_through_the_runtime_labels_every_row_it_read(multiple):
    task = labeled_rows.generate_task(labeled_rows.RowsConfig(**ROWS_PROGRAM, context_multiple=multiple), "val", 3)
    tree = _roll(task, True, style="program")
    check_consistent(tree)
    assert tree.root.success == 1.0 and all(n.success == 1.0 for n in tree.nodes)
    leaves = [n for n in tree.nodes if not n.children]
    assert len(leaves) == -(-len(task.spec["rows"]) // 8) and tree.max_depth >= (2 if multiple == 4 else 1)
    # Each leaf printed its rows' instance texts one a turn (no date, no user), each LABEL cell labelling
    # the text just printed, then counted its labels.
    for leaf in leaves:
        start, stop = leaf.goal.spec["rows"]
        look, *labels, tally = leaf.steps
        assert len(labels) == stop - start and "L.count" in tally.action
        shown = [look.observation] + [step.observation for step in labels]
        texts = [task.spec["rows"][k]["instance"] for k in range(start, stop)]
        assert [text.strip() for text in shown] == texts + ["done"]
        for k, step in enumerate(labels):
            assert f"\nlabel({labeled_rows.row_label(task.spec['rows'][start + k]['instance'])!r})\n" in step.action
    # A slip reads a range larger than one read: the tree then fails, as the demonstrator means it to.
    assert _roll(task, True, style="program", mistake_rate=0.99).root.success == 0.0


def test_a_varied_fan_out_gives_roots_and_children_both_split_sizes():
    # With min_fan_out the number of children is drawn per split: in 2x trees the root and the nodes
    # below it each launch 2 and 3 children somewhere, so no count of children tells a root from a child
    # (the budget covers the deepest, all-binary, split).
    seen, solved = set(), []
    for index in range(8):
        task = labeled_rows.generate_task(labeled_rows.RowsConfig(**ROWS_PROGRAM, context_multiple=2, max_steps=400),
                                         "val", index)
        oracle = make_oracle(task, True, style="program", fan_out=3, min_fan_out=2)
        nodes = reference_run(open_episode(task), oracle, task.max_steps, True)
        solved.append(nodes[0].success)
        for node in nodes:
            children = sum(1 for other in nodes if other.parent_id == node.node_id)
            if children:
                seen.add((node.parent_id is None, children))
    assert solved == [1.0] * 8
    assert seen == {(True, 2), (True, 3), (False, 2), (False, 3)}
    task = labeled_rows.generate_task(labeled_rows.RowsConfig(**ROWS_PROGRAM, context_multiple=2), "val", 0)
    with pytest.raises(ValueError, match="min_fan_out"):
        make_oracle(task, True, style="program", fan_out=3, min_fan_out=4)


def test_the_flat_rows_program_labels_every_row_in_one_context():
    task = labeled_rows.generate_task(labeled_rows.RowsConfig(**ROWS_PROGRAM, context_multiple=1), "val", 0)
    tree = _roll(task, False, style="program")
    (root,) = tree.nodes
    assert root.success == 1.0 and root.own_steps == 2 + len(task.spec["rows"])
    with pytest.raises(ValueError, match="questions"):
        labeled_rows.RowsConfig(questions=("count_label", "weather"))
    other = labeled_rows.generate_task(labeled_rows.RowsConfig(window_tokens=640), "val", 3)   # a user_label question
    with pytest.raises(ValueError, match="answers"):
        make_oracle(other, True, style="program")
    with pytest.raises(ValueError, match="leaf_rows"):
        make_oracle(task, True, style="program", leaf_rows=0)


def test_brief_rows_nodes_read_no_counts_at_any_size():
    # brief_goal: no node's text (first user turn, notes on its children) names a step budget, a child id or
    # a row number, so what a child reads at 4x it has read at 1x.
    child_prompts = {}
    for multiple in (1, 4):
        task = labeled_rows.generate_task(
            labeled_rows.RowsConfig(**ROWS_PROGRAM, brief_goal=True, context_multiple=multiple), "val", 3)
        prompts = []
        tree = _roll(task, True, prompts=prompts, style="program")
        assert tree.root.success == 1.0 and len(tree.nodes) == len(prompts) > 3
        notes = [s.observation for n in tree.nodes for s in n.steps if "subagent" in s.observation]
        assert notes and all(o.startswith("(the cell ran and printed nothing)\n[a subagent finished]") for o in notes)
        texts = [text for _, text in prompts] + notes
        assert not any(ch.isdigit() for text in texts for ch in text)
        child_prompts[multiple] = {text for root, text in prompts if not root}
    assert child_prompts[4] == child_prompts[1]
    # Without brief_goal the budget and the children's ids and steps are in the text, as for every other family.
    plain = labeled_rows.generate_task(labeled_rows.RowsConfig(**ROWS_PROGRAM, context_multiple=2), "val", 3)
    tree = _roll(plain, True, style="program")
    note = r"\[subagent 1 finished; it used \d+ of its \d+ steps\]"
    assert any(re.search(note, s.observation) for s in tree.root.steps)


HOP_PROGRAM = chain_hop.HopConfig(shuffle_facts=True, brief_goal=True, filler_sentences=4, max_steps=100)


@pytest.mark.parametrize("hops,branches", [(3, 2), (5, 1)])
def test_the_hop_program_oracle_through_the_runtime_launches_per_hop_and_in_parallel_only_on_forks(hops, branches):
    task = chain_hop.generate_task(HOP_PROGRAM, "val", 5, hops, branches)
    for recursive in (False, True):
        tree = _roll(task, recursive, style="program")
        check_consistent(tree)
        assert tree.root.success == 1.0 and all(n.success == 1.0 for n in tree.nodes), (recursive, task.task_id)
        # Every document passed through a context that wrote only sentence labels (Python took the name).
        picks = [s.action for n in tree.nodes for s in n.steps if "L = {0:" in s.action or "pick({0:" in s.action]
        assert len(picks) == hops * branches and all(name not in "".join(picks) for name in task.spec["kb"]["entities"])
    summary = metrics.summarize([tree])["all"]
    assert len(tree.nodes) == 1 + hops * branches and tree.root.own_steps == 1
    assert summary["parallel_fraction"] == (1.0 if branches == 2 else 0.0)
    assert summary["critical_path"] == 1 + 2 * hops   # the root's one cell, then per hop a child's two calls


def test_the_hop_program_oracle_misreads_at_its_mistake_rate_and_the_env_shuffles_facts_only_when_asked():
    tasks = [chain_hop.generate_task(HOP_PROGRAM, "val", i, 2, 2) for i in range(4)]
    trees = [_roll(t, True, style="program", mistake_rate=0.9) for t in tasks]
    leaves = [n for tree in trees for n in tree.nodes if n.parent_id is not None]
    wrong = sum(n.success == 0.0 for n in leaves)
    # A slip moves one of the 2-3 facts' labels, so about a third of the leaves misread at 0.9.
    assert 2 <= wrong <= len(leaves) - 4, (wrong, len(leaves))
    shuffled = chain_hop.generate_task(HOP_PROGRAM, "val", 0, 2, 1)
    ordered = chain_hop.generate_task(dataclasses.replace(HOP_PROGRAM, shuffle_facts=False), "val", 0, 2, 1)

    def fact_places(task):
        return [i for text in task.spec["kb"]["docs"].values()
                for i, s in enumerate(text.split(". ")) if any(f" {p[2]} " in s for p in chain_hop.RELATIONS.values())]
    assert set(fact_places(ordered)) <= {1, 2, 3} and max(fact_places(shuffled)) > 3
    goal = open_episode(shuffled).root_goal()
    chains = shuffled.spec["chains"]
    assert goal.spec == {"chains": [{"start": c["start"], "relations": c["relations"]} for c in chains]}
    with pytest.raises(ValueError, match="style"):
        make_oracle(shuffled, True, style="scripted")
