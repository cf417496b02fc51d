"""Oracles of every family run through the in-process scripted driver under the budget rules."""

from __future__ import annotations

import os

import pytest

from rao_jax.agent.oracles import ProgramCraftOracle, action, make_oracle
from rao_jax.agent.scripted_rollout import run_tree
from rao_jax.envs import chain_hop, labeled_rows, textcraft_official
from rao_jax.envs import textcraft_synth as ts
from rao_jax.envs.base import ActionError
from rao_jax.envs.families import open_episode


def _run(task, recursive, context=None, budget=None, **knobs):
    return run_tree(open_episode(task), make_oracle(task, recursive, **knobs), budget or task.max_steps, recursive,
                    context)


SMALL = {"leaf_crafts": 3, "crafts_per_step": 1, "inline_crafts": 1}   # forces deep trees in the tiny world


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("recursive", [False, True])
def test_textcraft_tiny_oracles_solve_every_task(seed, recursive):
    for task in ts.generate_tasks(ts.SynthConfig.tiny(seed=seed), "val", 6):
        episode = open_episode(task)
        nodes = run_tree(episode, make_oracle(task, recursive, **SMALL), task.max_steps, recursive)
        assert nodes[0].success == 1.0, task.task_id
        assert all(n.success == 1.0 for n in nodes), task.task_id   # every child gets its own credit
        flat_episode = open_episode(task)
        run_tree(flat_episode, make_oracle(task, False), task.max_steps, False)
        # The tree crafts exactly the gold plan: it ends with the same inventory as the flat run.
        assert episode.view_inventory() == flat_episode.view_inventory()


@pytest.mark.parametrize("interleave_seed", range(6))
def test_parallel_children_survive_any_interleaving(interleave_seed):
    """Siblings share the inventory; varied step orders must not make any of them fail."""
    paper = [t for t in ts.generate_tasks(ts.SynthConfig.paper(seed=9), "train", 1) if t.difficulty == "hard"]
    parallel = 0
    for task in list(ts.generate_tasks(ts.SynthConfig.tiny(seed=4), "train", 4)) + paper:
        knobs = {"leaf_crafts": 8, "crafts_per_step": 2} if task in paper else SMALL
        nodes = run_tree(open_episode(task), make_oracle(task, True, **knobs), task.max_steps, True,
                         interleave_seed=interleave_seed)
        assert all(n.success == 1.0 for n in nodes), (task.task_id, interleave_seed)
        parallel += sum(n.parallel_launches for n in nodes)
    assert parallel >= 4                                        # the orders above did interleave siblings


def test_parallel_launches_counted_only_when_overlapping():
    chain = chain_hop.generate_task(chain_hop.HopConfig(), "val", 7, hops=3, branches=1)
    fork = chain_hop.generate_task(chain_hop.HopConfig(), "val", 8, hops=3, branches=2)
    assert _run(chain, True)[0].parallel_launches == 0          # hops depend on each other: serial
    root = _run(fork, True)[0]
    assert root.launches == 6 and root.parallel_launches == 6   # the two chains run side by side


def test_textcraft_flat_oracle_runs_out_of_steps_where_recursion_fits():
    task = max(ts.generate_tasks(ts.SynthConfig.tiny(seed=1), "train", 6), key=lambda t: t.spec["num_craft_steps"])
    crafts = task.spec["num_craft_steps"]
    assert _run(task, False, budget=crafts, **SMALL)[0].success == 1.0      # finish rides in the last cell
    assert _run(task, False, budget=crafts - 1, **SMALL)[0].success == 0.0  # one step short
    tree = _run(task, True, **SMALL)
    assert tree[0].success == 1.0 and max(n.depth for n in tree) >= 2
    assert sum(n.steps for n in tree) <= task.max_steps


def test_textcraft_paper_scale_recursive_oracle():
    tasks = [t for t in ts.generate_tasks(ts.SynthConfig.paper(seed=5), "val", 2) if t.difficulty == "extreme"]
    for task in tasks:
        tree = _run(task, True)
        assert tree[0].success == 1.0 and all(n.success == 1.0 for n in tree)
        assert sum(n.steps for n in tree) <= task.max_steps and max(n.depth for n in tree) >= 2


def test_rows_flat_overflows_the_window_recursive_does_not():
    config = labeled_rows.RowsConfig(window_tokens=1024, context_multiple=2.0, max_read=32, max_steps=80)
    for index in range(len(labeled_rows.QUESTIONS)):
        task = labeled_rows.generate_task(config, "val", index)
        flat = _run(task, False, context=1024)
        assert flat[0].success == 0.0 and flat[0].overflow
        tree = _run(task, True, context=1024)
        assert tree[0].success == 1.0 and all(n.success == 1.0 for n in tree)
        assert _run(task, False)[0].success == 1.0                 # with no window limit the flat oracle is right


def test_rows_scoring_and_child_goal_errors():
    assert labeled_rows.score(5, "5") == 1.0 and labeled_rows.score(5, 7) == pytest.approx(0.75 ** 2)
    assert labeled_rows.score(["a", "b"], ["b"]) == 0.5 and labeled_rows.score("more", " More ") == 1.0
    episode = open_episode(labeled_rows.generate_task(labeled_rows.RowsConfig(), "val", 0))
    with pytest.raises(ActionError, match="count_by must be one of"):
        episode.parse_child_goal({"rows": [0, 4], "count_by": ["colour"]}, "")
    with pytest.raises(ActionError, match="goal rows"):
        episode.parse_child_goal({"rows": [5, 2], "count_by": ["label"]}, "")
    with pytest.raises(ActionError, match="at most"):
        episode.read_rows(0, 200)


def test_rows_brief_goals_name_no_size_or_span():
    # brief_goal: a root's text names no input size, a child's no span (both are in the goal's spec).
    large = labeled_rows.generate_task(labeled_rows.RowsConfig(brief_goal=True, context_multiple=32), "val", 0)
    assert large.goal.startswith("The data has rows ") and not any(ch.isdigit() for ch in large.goal)
    child = open_episode(large).parse_child_goal({"rows": [200, 208], "count_by": ["label"]}, "")
    assert child.spec["rows"] == [200, 208] and not any(ch.isdigit() for ch in child.text)
    plain = open_episode(labeled_rows.generate_task(labeled_rows.RowsConfig(), "val", 0))
    assert "rows 200..207" in plain.parse_child_goal({"rows": [200, 208], "count_by": ["label"]}, "").text


@pytest.mark.parametrize("hops, branches", [(2, 1), (3, 2), (8, 1), (8, 2)])
def test_chain_hop_oracles(hops, branches):
    task = chain_hop.generate_task(chain_hop.HopConfig(), "val", hops * 10 + branches, hops, branches)
    tree = _run(task, True, context=task.spec["window_tokens"])
    assert tree[0].success == 1.0 and len(tree) == 1 + hops * branches
    assert all(n.success == 1.0 for n in tree)
    flat = _run(task, False, context=task.spec["window_tokens"])
    assert flat[0].success == (1.0 if hops <= 3 else 0.0)


def test_driver_refuses_launches_that_do_not_fit_and_reports_bad_goals():
    task = next(ts.generate_tasks(ts.SynthConfig.tiny(), "val", 1))
    item = next(iter(task.spec["targets"]))

    class Greedy:
        async def act(self, view):
            code = (f"print(await launch_subagent({{{item!r}: 1}}, 50))\n"
                    "print(await launch_subagent({'nope': 1}, 1))\nfinish('x')")
            return action("try", code)

    nodes = run_tree(open_episode(task), Greedy(), 10, recursive=True)
    assert len(nodes) == 1 and nodes[0].finish_message == "x"


WHEEL = os.environ.get("RAO_PLATOON_WHEEL")


@pytest.mark.slow
@pytest.mark.skipif(not WHEEL, reason="set RAO_PLATOON_WHEEL to the platoon-textcraft wheel (see docs)")
def test_recursive_oracle_solves_every_official_val_task():
    files = textcraft_official.TaskFiles(WHEEL)
    for task in textcraft_official.load_synth_tasks(files, "val", max_steps=200):
        nodes = _run(task, True, context=8192)
        assert all(n.success == 1.0 for n in nodes), task.task_id
    for task in textcraft_official.load_minecraft_tasks(files, "val"):
        assert _run(task, True, context=8192)[0].success == 1.0, task.task_id


def test_the_program_oracle_reads_crafted_items_as_the_one_rule_does_and_refuses_other_names():
    tiny = list(ts.generate_tasks(ts.SynthConfig.tiny(seed=0), "train", 4))
    for task in tiny:   # every item of these tasks: k[1] != '0' agrees with _is_crafted
        assert isinstance(make_oracle(task, True, style="program"), ProgramCraftOracle)
    paper = next(ts.generate_tasks(ts.SynthConfig.paper(seed=0), "train", 1))
    with pytest.raises(ValueError, match=r"misread \(\['\w+_raw_\d+'"):
        make_oracle(paper, True, style="program")
