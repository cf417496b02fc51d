"""Several task families in one run: the config entries, the weighted stream (weights over 1,000 draws,
an exact resume from its cursor) and each family's own budget, window, oracle knobs and tool docs."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from rao_jax.config import default_config, from_config_dict
from rao_jax.data.mixture import MixtureStream, round_robin
from rao_jax.envs.base import Task
from rao_jax.errors import ConfigError

FAMILIES = {
    "textcraft_synth": {"weight": 2.0, "knobs": {"preset": "tiny", "per_difficulty": 6},
                        "train_difficulties": ["easy"]},
    "labeled_rows": {"weight": 1.0, "knobs": {"num_tasks": 3, "window_tokens": 256, "context_multiples": [1, 2]},
                     "root_budget": 7, "max_context": 512, "oracle_knobs": {"fan_out": 2}},
    "chain_hop": {"weight": 1.0, "knobs": {"num_tasks": 2, "hops": [2], "branches": [1, 2]}},
}


def _config(tmp_path, families=FAMILIES, **top):
    cfg = default_config()
    cfg.workdir = str(tmp_path / "run")
    cfg.data.families = families
    cfg.rollout.root_budget = 30
    for key, value in top.items():
        section, name = key.split(".")
        cfg[section][name] = value
    return from_config_dict(cfg)


def _task(task_id: str, family: str) -> Task:
    return Task(task_id, family, "goal", 5, "any", {})


class _Counter:
    """A family stream that hands out numbered tasks of one family."""

    def __init__(self, family: str, start: int = 0):
        self.family, self.next = family, start

    def take(self, n):
        out = [_task(f"{self.family}.{self.next + i}", self.family) for i in range(n)]
        self.next += n
        return out

    def state(self):
        return {"next": self.next}


def test_weights_are_respected_over_1000_draws():
    weights = {"a": 3.0, "b": 1.0, "c": 1.0}
    stream = MixtureStream({n: _Counter(n) for n in weights}, weights, seed=0)
    counts = Counter(t.family for t in stream.take(1000))
    for name, weight in weights.items():
        p = weight / sum(weights.values())
        sigma = math.sqrt(1000 * p * (1 - p))
        assert abs(counts[name] - 1000 * p) < 4 * sigma, (name, counts)
    # Another seed draws another sequence with the same proportions.
    def first_50(seed):
        return [t.task_id for t in MixtureStream({n: _Counter(n) for n in weights}, weights, seed).take(50)]

    assert first_50(1) != first_50(0) == first_50(0)


def test_the_mixture_resumes_exactly_from_its_cursor(tmp_path):
    from rao_jax.tasks import TaskSet

    tasks = TaskSet(_config(tmp_path))
    stream = tasks.train_iterator()
    first = stream.take(23)
    cursor = json.loads(json.dumps(stream.state()))   # the cursor goes into checkpoint metadata as JSON
    rest = [t.task_id for t in stream.take(40)]
    resumed = tasks.train_iterator(cursor)
    assert [t.task_id for t in resumed.take(40)] == rest
    # Every family is drawn, and each keeps its own difficulty filter.
    drawn = first + stream.take(40)
    assert {t.family for t in drawn} == {"textcraft_synth", "labeled_rows", "chain_hop"}
    assert {t.difficulty for t in drawn if t.family == "textcraft_synth"} == {"easy"}
    # A one-family cursor does not resume a mixture, and the reverse.
    single = TaskSet(from_config_dict({**default_config().to_dict(), "workdir": str(tmp_path / "one")}))
    with pytest.raises(ConfigError, match="one family"):
        tasks.train_iterator(single.train_iterator().state())
    with pytest.raises(ConfigError, match="mixes families"):
        single.train_iterator(cursor)


def test_each_family_runs_with_its_own_budget_window_and_oracle_knobs(tmp_path):
    from rao_jax.tasks import TaskSet

    tasks = TaskSet(_config(tmp_path, **{"sft.oracle_knobs": {"leaf_crafts": 8}, "rollout.max_context": 900}))
    held_out = tasks.tasks("val", 9)
    by_family = {t.family: t for t in held_out}
    assert [t.family for t in held_out[:3]] == ["chain_hop", "labeled_rows", "textcraft_synth"]  # round robin
    rows, hop, craft = by_family["labeled_rows"], by_family["chain_hop"], by_family["textcraft_synth"]
    assert tasks.budgeted(rows).max_steps == 7          # its family's root budget
    assert tasks.budgeted(hop).max_steps == 30          # rollout.root_budget
    assert (tasks.max_context(rows), tasks.max_context(hop)) == (512, 900)
    assert tasks.oracle_knobs(rows) == {"fan_out": 2}
    assert tasks.oracle_knobs(craft) == {"leaf_crafts": 8}   # sft.oracle_knobs where the family sets none


def test_round_robin_covers_every_family_in_any_prefix():
    lists = [[_task(f"a{i}", "a") for i in range(5)], [_task("b0", "b")], [_task(f"c{i}", "c") for i in range(2)]]
    assert [t.task_id for t in round_robin(lists)] == ["a0", "b0", "c0", "a1", "c1", "a2", "a3", "a4"]
    assert [t.task_id for t in round_robin(lists, 4)] == ["a0", "b0", "c0", "a1"]


@pytest.mark.parametrize("families,message", [
    ({"labeled_rows": {"wieght": 2}}, r"data\.families\.labeled_rows\.wieght"),
    ({"labeled_rows": {"weight": 0}}, r"data\.families\.labeled_rows\.weight must be a finite number > 0"),
    ({"labeled_rows": {"weight": "2"}}, r"data\.families\.labeled_rows\.weight must be float"),
    ({"labeled_rows": {"root_budget": -1}}, r"root_budget must be >= 0"),
    ({"labeled_rows": {"max_context": 4096}}, r"data\.families\.labeled_rows\.max_context \(4096\) exceeds"),
    ({"labeled_rowz": {}}, r"data\.families\.labeled_rowz: unknown family"),
    ({"labeled_rows": [1]}, r"data\.families\.labeled_rows must be a dict"),
    ({"textcraft_synth": {}, "textcraft_official": {}}, r"both give 'textcraft_synth' tasks"),
    ({"labeled_rows": {"oracle_knobs": {"goal_variables": True}}},
     r"data\.families\.labeled_rows\.oracle_knobs goal_variables=True needs rollout\.goal_variables"),
])
def test_bad_family_entries_fail_at_start_naming_the_key(tmp_path, families, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, families)


def test_families_replace_the_single_family_keys(tmp_path):
    cfg = default_config()
    cfg.workdir = str(tmp_path)
    cfg.data.families = {"chain_hop": {}}
    cfg.data.train_difficulties = ("k2",)
    with pytest.raises(ConfigError, match="data.families replaces data.family"):
        from_config_dict(cfg)


def test_every_node_reads_the_tools_of_its_own_family():
    from rao_jax.agent.rollout import GOAL_VARIABLES_DOC, RolloutConfig, node_tool_docs
    from rao_jax.envs import chain_hop, labeled_rows
    from rao_jax.envs.families import open_episode

    rows = next(labeled_rows.tasks_from_knobs("train", {"num_tasks": 1, "window_tokens": 256}))
    hop = next(chain_hop.tasks_from_knobs("train", {"num_tasks": 1}))
    config = RolloutConfig(recursive=True, goal_variables=True)
    rows_docs, hop_docs = (node_tool_docs(open_episode(t), config) for t in (rows, hop))
    assert "read_rows" in rows_docs and "read_rows" not in hop_docs and "search(query" in hop_docs
    assert rows_docs.endswith(GOAL_VARIABLES_DOC)
    assert "launch_subagent" not in node_tool_docs(open_episode(hop), RolloutConfig(recursive=False))


def test_eval_per_difficulty_takes_that_many_of_each_bucket(tmp_path):
    from rao_jax.tasks import TaskSet

    cfg = default_config()
    cfg.workdir = str(tmp_path / "run")
    cfg.data.family = "labeled_rows"
    cfg.data.knobs = {"num_tasks": 4, "window_tokens": 256, "context_multiples": [1, 2, 4]}
    cfg.eval.per_difficulty = {"1x": 3, "4x": 1}
    cfg.eval.num_tasks = 4
    tasks = TaskSet(from_config_dict(cfg))
    chosen = tasks.eval_tasks(from_config_dict(cfg).eval)
    assert Counter(t.difficulty for t in chosen) == {"1x": 3, "4x": 1}
    in_order = [t.task_id for t in tasks.tasks("val", None, ("1x", "4x"))]
    assert [t.task_id for t in chosen] == [i for i in in_order if i in {t.task_id for t in chosen}]
    assert len({t.task_id for t in chosen}) == 4
    with pytest.raises(ConfigError, match="leave num_tasks out"):
        tasks.eval_tasks(from_config_dict(cfg).eval, 10)
    cfg.eval.per_difficulty = {"1x": 5}
    cfg.eval.num_tasks = 5
    with pytest.raises(ConfigError, match=r"too few tasks in \{'1x': '4 of 5'\}"):
        tasks.eval_tasks(from_config_dict(cfg).eval)


@pytest.mark.parametrize("per_difficulty, num_tasks, message", [
    ({"1x": 2, "2x": 2}, 5, "adds up to 4 tasks but eval.num_tasks is 5"),
    ({"1x": 0}, 1, "every count must be an integer >= 1"),
])
def test_bad_eval_per_difficulty_fails_at_start(tmp_path, per_difficulty, num_tasks, message):
    cfg = default_config()
    cfg.workdir = str(tmp_path)
    cfg.eval.per_difficulty = per_difficulty
    cfg.eval.num_tasks = num_tasks
    with pytest.raises(ConfigError, match=message):
        from_config_dict(cfg)
