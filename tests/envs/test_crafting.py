"""Crafting rules, the synth generator, the official-format loader and error handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

from rao_jax.envs import textcraft_official as official
from rao_jax.envs import textcraft_synth as ts
from rao_jax.envs.base import ActionError, Goal
from rao_jax.envs.crafting import CraftingEpisode, Recipe, RecipeBook, book_from_json
from rao_jax.envs.crafting_plan import Unsolvable, aggregated_plan, greedy_plan, replay_gold_plan
from rao_jax.envs.families import open_episode


@pytest.fixture
def episode():
    book = RecipeBook({"plank": (Recipe("plank", 4, (("log", 1),)),),
                       "stick": (Recipe("stick", 4, (("plank", 2),)),),
                       "torch": (Recipe("torch", 4, (("stick", 1), ("tag:fuel", 1))),)},
                      tags={"fuel": ("coal", "charcoal")})
    return CraftingEpisode(book, {"stick": 4}, {"log": 2, "charcoal": 1})


def test_exact_count_crafting_and_shared_inventory(episode):
    episode.open_node(0, None, episode.root_goal())
    assert episode.craft({"log": 1}, ("plank", 4)) == "Crafted 4 plank."
    with pytest.raises(ActionError, match="multiple of the result count 4"):
        episode.craft({"plank": 1}, ("stick", 2))
    with pytest.raises(ActionError, match="wrong amount of plank: need 2, got 3"):
        episode.craft({"plank": 3}, ("stick", 4))
    with pytest.raises(ActionError, match="not in the recipe: log"):
        episode.craft({"plank": 2, "log": 1}, ("stick", 4))
    episode.open_node(1, 0, episode.parse_child_goal({"stick": 4}, ""))
    episode.craft({"plank": 2}, ("stick", 4))
    assert episode.node_success(1, "done") == 1.0
    assert episode.node_success(1, "") == 0.0          # empty finish message fails
    assert episode.node_success(1, "   ") == 1.0       # a message of spaces is a message (the authors' grader)
    assert episode.node_success(0, "done") == 1.0
    # A child forked now must gain its own sticks: what the tree already holds does not count.
    episode.open_node(2, 0, episode.parse_child_goal({"stick": 4}, ""))
    assert episode.node_success(2, "done") == 0.0
    assert episode.craft({"stick": 1, "charcoal": 1}, ("torch", 4)) == "Crafted 4 torch."
    assert episode.view_inventory() == {"log": 1, "plank": 2, "stick": 3, "torch": 4}


@pytest.mark.parametrize("args, message", [
    (({"log": 1}, ("diamond", 1)), "unknown item 'diamond'"),
    (({"log": 1}, ("log", 1)), "base material"),
    (({"log": 1}, ("plank", 0)), "positive int"),
    (({"log": True}, ("plank", 4)), "positive int"),
    (({"log": 1}, "plank"), r"target must be \(item, count\)"),
    (([], ("plank", 4)), "non-empty dict"),
    (({"gold": 1}, ("plank", 4)), "unknown ingredient 'gold'"),
    (({"log": 5}, ("plank", 20)), "not enough in inventory"),
])
def test_bad_craft_arguments_are_action_errors(episode, args, message):
    with pytest.raises(ActionError, match=message):
        episode.craft(*args)


def test_bad_child_goals_and_info(episode):
    for goal, message in [({}, "non-empty dict"), ({"stick": -1}, "positive int"), ({"wand": 1}, "unknown item"),
                          ("Make sticks", "must start with")]:
        with pytest.raises(ActionError, match=message):
            episode.parse_child_goal(goal, "")
    assert episode.parse_child_goal("Craft the following items: 2x stick", "").spec == {"targets": {"stick": 2}}
    with pytest.raises(ActionError, match="unknown item"):
        episode.get_info(["wand"])
    info = episode.get_info(["torch"])[0]
    assert info["crafting_depth"] == 3 and info["recipes"][0]["ingredients"]["tag:fuel"]["use_one_of"] == [
        "charcoal", "coal"]   # sorted, as the authors list a tag


def test_solvers_aggregate_and_fall_back():
    book = RecipeBook({"a": (Recipe("a", 2, (("b", 1), ("c", 1))),), "b": (Recipe("b", 3, (("c", 1), ("x", 1))),),
                       "c": (Recipe("c", 4, (("x", 1),)),),
                       "d": (Recipe("d", 1, (("gone", 1),)), Recipe("d", 1, (("x", 2),)))})
    steps = aggregated_plan(book, {"a": 4}, {"x": 10})
    assert [(s.item, s.count) for s in steps] == [("c", 4), ("b", 3), ("a", 4)]   # c made once for a and b
    assert sum(n for s in steps for name, n in s.ingredients if name == "x") == 2
    with pytest.raises(Unsolvable, match="need 2 x"):
        aggregated_plan(book, {"a": 4}, {"x": 1})
    # d's first recipe needs a material nobody has: the depth-first fallback uses the second one.
    assert [(s.item, s.ingredients) for s in greedy_plan(book, {"d": 1}, {"x": 2})] == [("d", (("x", 2),))]


def test_tiny_world_tasks_replay_their_gold_plans():
    tasks = list(ts.generate_tasks(ts.SynthConfig.tiny(), "train", 6))
    assert {t.difficulty for t in tasks} == {"easy", "medium", "hard"}
    assert all(replay_gold_plan(t) == (True, "ok") for t in tasks)
    world = ts.generate_world(ts.SynthConfig.tiny())
    assert not set(world.splits["train"]) & set(world.splits["val"])
    for task in tasks:
        item = next(iter(task.spec["targets"]))
        assert item in world.splits["train"] and world.book.depth(item) == task.spec["tier"]


def test_paper_world_shape():
    world = ts.generate_world(ts.SynthConfig.paper())
    assert 1300 <= len(world.book.recipes) <= 1450
    assert {world.tiers[i] for i in world.book.recipes if i.startswith("cross")} == {10, 11, 12}
    counts = [len(r.ingredients) for rs in world.book.recipes.values() for r in rs]
    assert min(counts) >= 1 and max(counts) <= 6


def _official_lines(tasks):
    """Our tasks written in the authors' JSONL format."""
    lines = []
    for task in tasks:
        misc = {"target_items": task.spec["targets"], "initial_inventory": task.spec["initial_inventory"],
                "gold_trajectory": task.spec["gold_plan"], "difficulty": task.difficulty,
                "max_depth": task.spec["max_depth"], "num_craft_steps": task.spec["num_craft_steps"]}
        lines.append(json.dumps({"goal": task.goal, "id": task.task_id, "max_steps": 75, "misc": misc}))
    return "\n".join(lines) + "\n"


def _wheel(tmp_path, files):
    path = tmp_path / "platoon_textcraft-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr("platoon_textcraft/data/" + name, text)
    return path


def test_official_format_round_trip(tmp_path):
    config = ts.SynthConfig.tiny(seed=3)
    files = {"textcraft_synth_train.jsonl": _official_lines(ts.generate_tasks(config, "train", 4)),
             "textcraft_synth_val.jsonl": _official_lines(ts.generate_tasks(config, "val", 2))}
    loaded = official.load_synth_tasks(official.TaskFiles(_wheel(tmp_path, files)), "train", max_steps=200)
    assert len(loaded) == 12 and all(t.max_steps == 200 for t in loaded)
    assert all(replay_gold_plan(t)[0] for t in loaded)
    rebuilt = official.book_from_gold(official.read_records(files["textcraft_synth_train.jsonl"].encode(), "f"))
    world = ts.generate_world(config)
    assert all(rebuilt.recipes[i][0].yield_count == world.book.recipes[i][0].yield_count for i in rebuilt.recipes)


def test_official_minecraft_format(tmp_path):
    recipes = {"recipes/oak_planks.json": {"type": "minecraft:crafting_shapeless", "ingredients": [
                   {"tag": "minecraft:oak_logs"}], "result": {"item": "minecraft:oak_planks", "count": 4}},
               "recipes/stick.json": {"type": "minecraft:crafting_shaped", "pattern": ["#", "#"],
                                      "key": {"#": {"tag": "minecraft:planks"}},
                                      "result": {"item": "minecraft:stick", "count": 4}},
               "recipes/torch.json": {"type": "minecraft:crafting_shaped", "pattern": ["X", "#"], "key": {
                   "#": {"item": "minecraft:stick"}, "X": [{"item": "minecraft:coal"}, {"item": "minecraft:charcoal"}]},
                   "result": {"item": "minecraft:torch", "count": 4}},
               "recipes/glass.json": {"type": "minecraft:smelting", "ingredient": {"item": "minecraft:sand"},
                                      "result": "minecraft:glass"}}
    gold = [{"action": "craft", "target": ["oak_planks", 1], "ingredients": {"oak_log": 1}, "result_count": 4},
            {"action": "craft", "target": ["stick", 1], "ingredients": {"oak_planks": 2}, "result_count": 4},
            {"action": "craft", "target": ["torch", 1], "ingredients": {"stick": 1}, "result_count": 4}]
    record = {"goal": "Craft the following items: 4x torch", "id": "textcraft.train.0", "max_steps": 50,
              "misc": {"target_items": {"torch": 4}, "initial_inventory": {"oak_log": 1}, "gold_trajectory": gold}}
    files = {k: json.dumps(v) for k, v in recipes.items()}
    files["textcraft_train.jsonl"] = json.dumps(record) + "\n"
    tasks = official.load_minecraft_tasks(official.TaskFiles(_wheel(tmp_path, files)), "train")
    assert replay_gold_plan(tasks[0]) == (True, "ok")
    strict = official.load_minecraft_tasks(official.TaskFiles(_wheel(tmp_path, files)), "train",
                                           list_ingredients="one_of")
    ok, why = replay_gold_plan(strict[0])
    assert not ok and "coal|charcoal" in why


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"),
    ('{"id": "a", "goal": "Craft the following items: 1x a", "max_steps": 5}', "'misc' missing"),
    ('{"id": "a", "goal": "Craft the following items: 1x a", "max_steps": 5, "misc": {"target_items": {"a": 0},'
     ' "initial_inventory": {}}}', "not \\(str, positive int\\)"),
    ('{"id": "a", "goal": "Craft the following items: 2x a", "max_steps": 5, "misc": {"target_items": {"a": 1},'
     ' "initial_inventory": {}}}', "disagrees with target_items"),
    ('{"id": "a", "goal": "Craft the following items: 1x a", "max_steps": 5, "misc": {"target_items": {"a": 1},'
     ' "initial_inventory": {}, "gold_trajectory": [{"action": "craft", "target": ["a"]}]}}', "target must be"),
])
def test_malformed_records_name_the_problem(line, message):
    with pytest.raises(official.TaskFileError, match=message):
        official.read_records(line.encode(), "tasks.jsonl")


def test_inconsistent_gold_plans_are_rejected():
    step = {"action": "craft", "target": ["a", 1], "ingredients": {"b": 2}, "result_count": 1}
    other = dict(step, ingredients={"b": 3})
    lines = [json.dumps({"id": str(k), "goal": "Craft the following items: 1x a", "max_steps": 5, "misc": {
        "target_items": {"a": 1}, "initial_inventory": {"b": 3}, "gold_trajectory": [s]}}) for k, s in
        enumerate([step, other])]
    records = official.read_records("\n".join(lines).encode(), "t.jsonl")
    with pytest.raises(official.TaskFileError, match="disagrees with t.jsonl:1"):
        official.book_from_gold(records)


def test_unknown_family_and_bad_spec():
    task = next(ts.generate_tasks(ts.SynthConfig.tiny(), "val", 1))
    with pytest.raises(ValueError, match="unknown family"):
        open_episode(type(task)(task.task_id, "nope", task.goal, 5, "easy", task.spec))
    with pytest.raises(ValueError, match="needs targets"):
        open_episode(type(task)(task.task_id, task.family, task.goal, 5, "easy", {"targets": {}}))
    assert open_episode(task).root_goal() == Goal(task.goal, {"targets": task.spec["targets"]})


def test_generator_bytes_ignore_hash_seed():
    code = ("import hashlib;from rao_jax.envs import textcraft_synth as ts;from rao_jax.data.task_sources import "
            "task_to_json;print(hashlib.sha256(''.join(task_to_json(t) for t in ts.generate_tasks("
            "ts.SynthConfig.tiny(seed=7), 'val', 3)).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONHASHSEED=seed),
                              capture_output=True, text=True, check=True).stdout for seed in ("1", "2")}
    assert len(digests) == 1


WHEEL = os.environ.get("RAO_PLATOON_WHEEL")


@pytest.mark.slow
@pytest.mark.skipif(not WHEEL, reason="set RAO_PLATOON_WHEEL to the platoon-textcraft wheel (see docs)")
def test_every_official_synth_task_replays():
    files = official.TaskFiles(WHEEL)
    for split, expected in (("train", 2522), ("val", 632)):
        tasks = official.load_synth_tasks(files, split)
        assert len(tasks) == expected
        for errors in ("raise", "return"):
            failures = [t.task_id for t in tasks if not replay_gold_plan(t, errors)[0]]
            assert not failures, (errors, failures[:5])
        # Our aggregated solver needs exactly as many crafts as the authors' gold plans.
        for task in tasks:
            book = book_from_json(task.spec["book"])
            steps = aggregated_plan(book, task.spec["targets"], task.spec["initial_inventory"])
            assert len(steps) == len(task.spec["gold_plan"]), task.task_id


@pytest.mark.slow
@pytest.mark.skipif(not WHEEL, reason="set RAO_PLATOON_WHEEL to the platoon-textcraft wheel (see docs)")
def test_official_minecraft_tasks_replay_except_literal_tag_steps():
    files = official.TaskFiles(WHEEL)
    for split in ("train", "val"):
        failed = set()
        for task in official.load_minecraft_tasks(files, split):
            ok, why = replay_gold_plan(task, "raise")
            # A few gold plans name "tag:planks" itself as an ingredient; the authors' env rejects those too.
            assert ok or "unknown ingredient 'tag:" in why, (task.task_id, why)
            if not ok:
                failed.add(task.task_id)
            assert replay_gold_plan(task, "return")[0] == ok, task.task_id   # the authors' rules agree
        assert len(failed) == {"train": 7, "val": 2}[split]


@pytest.mark.parametrize("book, message", [
    ({"recipes": {"a": [{"ingredients": [["b", "2"]], "result_count": 1}]}}, "malformed recipe for 'a'"),
    ({"recipes": {"a": [{"ingredients": [], "result_count": 1}]}}, "malformed recipe"),
    ({"recipes": {"a": [{"ingredients": [["b", 1]], "result_count": 0}]}}, "malformed recipe"),
    ({"recipes": {"a": []}}, "non-empty list"),
    ({"recipes": {"a": [{"ingredients": [["b", 1]], "result_count": 1}]}, "tags": {"t": "b"}}, "'tags' must map"),
    ([], "must be a dict"),
])
def test_malformed_books_in_task_specs(book, message):
    task = next(ts.generate_tasks(ts.SynthConfig.tiny(), "val", 1))
    spec = dict(task.spec, book=book)
    with pytest.raises(ValueError, match=message):
        open_episode(type(task)(task.task_id, task.family, task.goal, 5, "easy", spec))
