"""The paper's protocol on the authors' files (slow; needs RAO_PLATOON_WHEEL, the platoon-textcraft wheel).

Everything expected here is read straight from the wheel's jsonl files (or computed by the authors'
own generator), not through rao_jax's loader.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from rao_jax import plan as plan_lib
from rao_jax.data import datasets
from rao_jax.data.task_sources import task_from_json
from rao_jax.envs import textcraft_official as official
from rao_jax.tasks import TaskSet, budgeted

WHEEL = os.environ.get("RAO_PLATOON_WHEEL")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not WHEEL, reason="set RAO_PLATOON_WHEEL to the platoon-textcraft wheel (see docs)")]


def _records(name: str) -> list[dict]:
    with zipfile.ZipFile(WHEEL) as wheel:
        text = wheel.read(f"platoon_textcraft/data/{name}").decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("paper_data")


@pytest.mark.parametrize("config", ["qwen3_4b_v5p.py", "qwen3_4b_v6e.py:hard"])
def test_paper_config_task_streams(config, data_dir, tmp_path):
    cfg = plan_lib.load_config(str(ROOT / "configs" / config), [f"data.knobs.wheel={WHEEL}", f"workdir={tmp_path}",
                                                                 f"data.data_dir={data_dir}"])
    difficulty = "hard" if config.endswith(":hard") else "medium"
    train = [r for r in _records("textcraft_synth_train.jsonl") if r["misc"]["difficulty"] == difficulty]
    assert len(train) == {"medium": 852, "hard": 544}[difficulty]
    tasks = TaskSet(cfg)

    epoch = tasks.train_iterator().take(len(train))      # one epoch of the filtered, shuffled stream
    assert Counter(t.task_id for t in epoch) == Counter(r["id"] for r in train)
    assert {t.difficulty for t in epoch} == {difficulty}
    assert all(t.spec["errors"] == "return" for t in epoch)

    evaluated = tasks.tasks(cfg.eval.split, cfg.eval.num_tasks, cfg.eval.difficulties)
    first_100 = _records("textcraft_synth_val.jsonl")[:100]
    assert [t.task_id for t in evaluated] == [r["id"] for r in first_100]
    assert [t.spec["targets"] for t in evaluated] == [r["misc"]["target_items"] for r in first_100]
    assert len({t.difficulty for t in evaluated}) > 1                 # mixed difficulties
    assert {budgeted(t, cfg.rollout).max_steps for t in evaluated + epoch[:50]} == {200}
    assert cfg.eval.temperature == 1.0 and cfg.rollout.temperature == 1.0
    assert "recursive" in cfg.eval.modes


def test_every_official_task_loads_in_file_order(tmp_path):
    for family, files in (("textcraft_official", ("textcraft_synth_train.jsonl", "textcraft_synth_val.jsonl")),
                          ("textcraft_minecraft", ("textcraft_train.jsonl", "textcraft_val.jsonl"))):
        knobs = {"wheel": WHEEL}
        datasets.build(family, tmp_path / family, knobs)
        for split, name in zip(("train", "val"), files, strict=True):
            records = _records(name)
            source = datasets.data_source(family, tmp_path / family, split, knobs)
            loaded = [task_from_json(source[i]["task"]) for i in range(len(source))]
            assert [t.task_id for t in loaded] == [r["id"] for r in records], (family, split)
            assert [t.spec["initial_inventory"] for t in loaded] == [r["misc"]["initial_inventory"]
                                                                     for r in records], (family, split)
    # The Minecraft val file reuses 8 ids for different tasks; all 100 tasks are kept.
    assert len(_records("textcraft_val.jsonl")) == 100
    assert sum(n - 1 for n in Counter(r["id"] for r in _records("textcraft_val.jsonl")).values()) == 8


def test_crafting_depth_is_the_authors_generator_tier(tmp_path):
    with zipfile.ZipFile(WHEEL) as wheel:
        source = wheel.read("platoon_textcraft/synth_recipe_generator.py")
    path = tmp_path / "authors_synth_recipe_generator.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("authors_synth_recipe_generator", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module       # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        module.set_naming_mode(semantic=False)
        db = module.SynthRecipeDatabase()
        db.generate_all_recipes(seed=42, items_per_domain_tier=25)   # as the authors' env builds its world
    finally:
        del sys.modules[spec.name]
    files = official.TaskFiles(WHEEL)
    checked = 0
    for split in ("train", "val"):
        for task in official.load_synth_tasks(files, split):
            depths = task.spec["crafting_depths"]
            for item, depth in depths.items():
                assert depth == db.item_depths.get(item, 0), (task.task_id, item)
                checked += 1
    assert checked > 3154
