"""The "return" crafting rules: the authors' environment (platoon_textcraft.env), text for text.

The expected strings below are written from the authors' source (``TextCraftEnvironment._craft`` and
``_get_info``), not produced by rao_jax; ``python`` one-liners in the closing note of issue 23 compared
every craft of 400 official tasks (gold steps and 13 kinds of invalid ones) against the authors' env.
"""

from __future__ import annotations

import asyncio

import pytest

from rao_jax.agent.rollout import RolloutConfig, RolloutRunner
from rao_jax.agent.sandbox import SandboxLimits, SandboxPool
from rao_jax.envs.base import ActionError, Task
from rao_jax.envs.crafting import Recipe, RecipeBook, book_to_json, crafting_task_spec, format_targets
from rao_jax.envs.families import open_episode
from tests.agent.toy import ScriptPolicy

BOOK = RecipeBook({
    "a0_i1": (Recipe("a0_i1", 4, (("raw_a0", 1),)),),
    "a0_i2": (Recipe("a0_i2", 2, (("a0_i1", 2), ("raw_a1", 1))),),
    "torch": (Recipe("torch", 4, (("tag:coals", 1), ("a0_i1", 1))),),
}, tags={"coals": ("coal", "charcoal")})
INVENTORY = {"raw_a0": 3, "raw_a1": 1, "coal": 1}


def task(errors: str, depths: dict[str, int] | None = None) -> Task:
    targets = {"a0_i2": 2}
    extra = {"errors": errors} | ({"crafting_depths": depths} if depths else {})
    spec = crafting_task_spec(BOOK, targets, INVENTORY, **extra) | {"book": book_to_json(BOOK)}  # torch too
    return Task("t.0", "textcraft_synth", format_targets(targets), 20, "easy", spec)


def episode(errors: str = "return", depths=None):
    ep = open_episode(task(errors, depths))
    ep.open_node(0, None, ep.root_goal())
    return ep


@pytest.mark.parametrize("ingredients, target, said", [
    ({"raw_a0": 1}, ("a0_i1", 4), "Successfully crafted 4 a0_i1(s)"),
    ({"raw_a0": 2}, ("a0_i1", 8), "Successfully crafted 8 a0_i1(s)"),
    (["raw_a0"], ("a0_i1", 4), "Error: ingredients must be a dict, got list"),
    ({"raw_a0": 1}, ("a0_i1",), "Error: target must be a tuple of (item_name, count)"),
    ({"raw_a0": 1}, (3, 4), "Error: target item must be a string, got int"),
    ({"raw_a0": 1}, ("a0_i1", 4.0), "Error: target count must be an int, got float"),
    ({"raw_a0": 1}, ("a0_i1", 0), "Error: target count must be positive, got 0"),
    ({"raw_a0": "1"}, ("a0_i1", 4), "Error: ingredient count for raw_a0 must be an int, got str"),
    ({"raw_a0": -2}, ("a0_i1", 4), "Error: ingredient count for raw_a0 must be positive, got -2"),
    ({"raw_a0": 1}, ("raw_a0", 1), "Error: No recipe found for raw_a0"),
    ({"raw_a0": 1}, ("a0_i1", 3),
     "Error: All 1 recipe(s) failed for a0_i1. Errors:\nRecipe 1: Target count 3 is not divisible by recipe "
     "result count 4"),
    ({"raw_a0": 2}, ("a0_i1", 4),
     "Error: All 1 recipe(s) failed for a0_i1. Errors:\nRecipe 1: Wrong amount of raw_a0. Need 1, provided 2"),
    ({"raw_a1": 1}, ("a0_i2", 2),
     "Error: All 1 recipe(s) failed for a0_i2. Errors:\nRecipe 1: Missing required ingredient a0_i1"),
    ({"raw_a0": 1, "coal": 1}, ("a0_i1", 4),
     "Error: All 1 recipe(s) failed for a0_i1. Errors:\nRecipe 1: Extra ingredients not required: coal"),
    ({"raw_a0": 4}, ("a0_i1", 16),
     "Error: All 1 recipe(s) failed for a0_i1. Errors:\nRecipe 1: Insufficient ingredients in inventory: "
     "raw_a0: need 4, have 3"),
    ({"a0_i1": 1, "coal": 2}, ("torch", 4),
     "Error: All 1 recipe(s) failed for torch. Errors:\nRecipe 1: No ingredient provided for tag:coals. "
     "Expected one of: ['charcoal', 'coal']"),
    ({"a0_i1": 1, "coal": 1}, ("torch", 4),
     "Error: All 1 recipe(s) failed for torch. Errors:\nRecipe 1: Insufficient ingredients in inventory: "
     "a0_i1: need 1, have 0"),
])
def test_craft_texts_and_inventory_are_the_authors(ingredients, target, said):
    ep = episode()
    before = ep.view_inventory()
    assert ep.craft(ingredients, target) == said
    if said.startswith("Error"):
        assert ep.view_inventory() == before            # a failed craft changes nothing
    else:
        made = target[1]
        assert ep.view_inventory() == {**before, "raw_a0": 3 - made // 4, "a0_i1": made}


def test_a_gold_chain_and_the_tag_craft():
    ep = episode()
    assert ep.craft({"raw_a0": 1}, ["a0_i1", 4]) == "Successfully crafted 4 a0_i1(s)"
    assert ep.craft({"a0_i1": 2, "raw_a1": 1}, ["a0_i2", 2]) == "Successfully crafted 2 a0_i2(s)"
    assert ep.craft({"coal": 1, "a0_i1": 1}, ["torch", 4]) == "Successfully crafted 4 torch(s)"
    assert ep.view_inventory() == {"a0_i1": 1, "a0_i2": 2, "raw_a0": 2, "torch": 4}
    assert ep.node_success(0, "done") == 1.0 and ep.node_success(0, "   ") == 1.0 and ep.node_success(0, "") == 0.0


def test_get_info_is_the_authors_with_the_tasks_depths():
    ep = episode(depths={"a0_i1": 1, "a0_i2": 5, "raw_a0": 0, "raw_a1": 0})
    info = ep.get_info(["a0_i2", "torch", "mystery_i3"])
    assert info[0] == {"item": "a0_i2", "can_craft": True, "is_base": False, "in_inventory": 0, "crafting_depth": 5,
                       "recipes": [{"ingredients": {"a0_i1": 2, "raw_a1": 1}, "result_count": 2}]}
    assert info[1]["crafting_depth"] == 2 and info[1]["recipes"] == [
        {"ingredients": {"tag:coals": {"count": 1, "use_one_of": ["charcoal", "coal"]}, "a0_i1": 1},
         "result_count": 4}]
    assert info[2] == {"item": "mystery_i3", "can_craft": False, "is_base": False, "in_inventory": 0,
                       "crafting_depth": 0, "recipes": []}
    assert episode().get_info(["a0_i2"])[0]["crafting_depth"] == 2     # no depths carried: the longest chain


def test_raise_mode_keeps_rao_jax_rules():
    ep = episode("raise")
    with pytest.raises(ActionError, match="wrong amount of raw_a0"):
        ep.craft({"raw_a0": 2}, ("a0_i1", 4))
    with pytest.raises(ActionError, match="unknown item"):
        ep.get_info(["mystery_i3"])
    assert ep.craft({"raw_a0": 1}, ("a0_i1", 4)) == "Crafted 4 a0_i1."


def test_bad_error_mode_is_named():
    with pytest.raises(ValueError, match="errors must be one of"):
        open_episode(task("ignore"))


CELL = ("print(craft({'raw_a0': 2}, ('a0_i1', 4)))\n"
        "print(craft({'raw_a0': 1}, ('a0_i1', 4)))\n"
        "print(view_inventory())")


@pytest.mark.parametrize("errors", ["return", "raise"])
def test_a_cell_goes_on_after_a_failed_craft_only_in_return_mode(errors):
    async def main():
        async with SandboxPool(1, SandboxLimits(memory_bytes=512 << 20)) as pool:
            runner = RolloutRunner(ScriptPolicy([[CELL, "finish('done')"]]), pool, RolloutConfig(recursive=False))
            ep = open_episode(task(errors))
            tree = await runner.run_tree(ep, 5, "t.0")
            return tree, ep.view_inventory()
    tree, inventory = asyncio.run(asyncio.wait_for(main(), 120))
    seen = tree.root.steps[0].observation
    if errors == "return":
        failed = ("Error: All 1 recipe(s) failed for a0_i1. Errors:\n"
                  "Recipe 1: Wrong amount of raw_a0. Need 1, provided 2")
        assert failed in seen
        assert "Successfully crafted 4 a0_i1(s)" in seen
        assert inventory == {"a0_i1": 4, "coal": 1, "raw_a0": 2, "raw_a1": 1}
    else:
        assert "wrong amount of raw_a0" in seen and "Crafted 4" not in seen
        assert inventory == INVENTORY
