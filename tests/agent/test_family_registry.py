"""A new task family is one module plus its registry calls: this file is that module for a toy family
(count up to a target with ``add(n)``; a child can be asked for part of the sum), and the tests check
that the data build, the trainer's config, episodes and the scripted oracle all find it."""

from __future__ import annotations

import random
from typing import Any

import pytest

from rao_jax.agent import oracles
from rao_jax.agent.oracles import action, make_oracle, register_oracle
from rao_jax.agent.scripted_rollout import run_tree
from rao_jax.envs import families
from rao_jax.envs.base import ActionError, Episode, Goal, Task, interleave, take_knob
from rao_jax.envs.families import Family, open_episode, register

NAME = "toy_counter"


def toy_tasks(split: str, knobs: dict[str, Any]):
    n = take_knob(knobs, "num_tasks", 3)
    targets = take_knob(knobs, "targets", [2, 6] if split == "train" else [4, 9])
    if knobs:
        raise ValueError(f"unknown knobs {sorted(knobs)}")
    rng = random.Random(f"toy/{split}")
    return interleave(Task(f"{NAME}.{split}.{t}.{i}", NAME, f"Count to {t}.", 10, f"t{t}",
                           {"target": t, "noise": rng.random()}) for t in targets for i in range(n))


class ToyEpisode(Episode):
    def __init__(self, task: Task):
        self.task, self.total, self.at_fork = task, 0, {}

    def root_goal(self) -> Goal:
        return Goal(self.task.goal, {"target": self.task.spec["target"]})

    def tool_docs(self, recursive: bool) -> str:
        return "add(n): adds n to the shared total" + ("; launch_subagent({'target': n}, budget)" if recursive else "")

    def open_node(self, node_id, parent_id, goal) -> None:
        self.at_fork[node_id] = (self.total, goal.spec["target"])

    def tools(self, node_id):
        def add(n: int) -> int:
            if not isinstance(n, int) or n < 1:
                raise ActionError("add(n) takes a positive int")
            self.total += n
            return self.total
        return {"add": add}

    def parse_child_goal(self, goal, context) -> Goal:
        if not isinstance(goal, dict) or not isinstance(goal.get("target"), int):
            raise ActionError("a child goal is {'target': n}")
        return Goal(f"Count to {goal['target']}.", dict(goal), context)

    def node_success(self, node_id, finish_message) -> float:
        start, target = self.at_fork[node_id]
        return float(finish_message is not None and self.total - start >= target)


class ToyOracle:
    """Flat: one add; recursive: a child adds half, the node the rest."""

    def __init__(self, task: Task, recursive: bool):
        self.recursive = recursive

    async def act(self, view):
        target = view.goal.spec["target"]
        if self.recursive and target > 1 and view.parent_id is None and not view.steps:
            half = target // 2
            return action("Delegate half.", f"await launch_subagent({{'target': {half}}}, 3)\n"
                                            f"add({target - half})\nfinish('done')")
        return action("Add it.", f"add({target})\nfinish('done')")


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(families._REGISTRY, NAME, None)   # removed again after the test
    monkeypatch.setitem(oracles._ORACLES, NAME, None)
    register(Family(NAME, toy_tasks, ToyEpisode))
    register_oracle(NAME, ToyOracle)


def test_a_registered_family_is_found_everywhere(toy, tmp_path):
    from rao_jax.config import default_config, from_config_dict
    from rao_jax.data.datasets import build, data_source
    from rao_jax.data.task_sources import iter_tasks, task_from_json

    assert NAME in families.names()
    tasks = list(iter_tasks(NAME, "val", {"num_tasks": 2}))
    assert [t.difficulty for t in tasks] == ["t4", "t9", "t4", "t9"]          # round-robin over buckets
    with pytest.raises(ValueError, match="unknown knobs"):
        list(iter_tasks(NAME, "val", {"colour": "red"}))

    build(NAME, tmp_path, {"num_tasks": 2})                                  # tfds dataset
    source = data_source(NAME, tmp_path, "val", {"num_tasks": 2})
    assert [task_from_json(source[i]["task"]) for i in range(len(source))] == tasks

    raw = default_config().to_dict()
    raw.update(workdir=str(tmp_path / "run"))
    raw["data"].update(family=NAME, knobs={"num_tasks": 2})
    assert from_config_dict(raw).data.family == NAME                          # the trainer's config check

    for recursive in (False, True):
        nodes = run_tree(open_episode(tasks[1]), make_oracle(tasks[1], recursive), 10, recursive)
        assert isinstance(open_episode(tasks[1]), ToyEpisode)
        assert len(nodes) == (2 if recursive else 1) and all(n.success == 1.0 for n in nodes)


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown family 'nope'; known: .*textcraft_synth"):
        families.get("nope")
    with pytest.raises(ValueError, match="no oracle for family 'nope'"):
        make_oracle(Task("x", "nope", "", 1, "", {}), False)
