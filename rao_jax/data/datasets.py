"""tfds builders writing array_record (no TensorFlow) and grain pipelines yielding root tasks.

``build(family, out_dir, knobs)`` writes ``out_dir/rao_tasks/<config>/1.1.0/*.array_record`` with one
example per task, ``{"task": <canonical JSON of the Task>}``, for the splits train and val; the config
name is the family plus a digest of the knobs, so different knobs never share files. Examples are
keyed by their position and written unshuffled, so record ``i`` of a split is its ``i``-th task in
file order (the authors' files) or generation order (generated families); the task id is a field of
the record, and an id used twice in one split (the authors' Minecraft val file has eight) is logged,
not fatal. It is read back through ``tfds.data_source`` (random access over ArrayRecord: no
TensorFlow, no ``tfds.load``).

``task_loader`` wraps that source in a grain ``DataLoader``: index sampling is seeded (deterministic
order, optional shuffle per epoch) and the iterator's ``get_state()`` is a small JSON-able cursor; a
new loader given ``initial_state`` continues exactly where the saved one stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import grain.python as grain
import tensorflow_datasets as tfds
from etils import epath

from rao_jax.data.task_sources import iter_tasks, task_from_json, task_to_json
from rao_jax.envs.base import Task
from rao_jax.paths import as_path, local_copy, staged

SPLITS = ("train", "val")

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class TaskSetConfig(tfds.core.BuilderConfig):
    """Which family and knobs a dataset holds (knobs as canonical JSON)."""

    family: str = "textcraft_synth"
    knobs: str = "{}"


def config_name(family: str, knobs: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(dict(knobs), sort_keys=True).encode()).hexdigest()[:10]
    return f"{family}_{digest}"


class RaoTasks(tfds.core.GeneratorBasedBuilder):
    """Root tasks of one family, in file order; examples keyed by position."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "examples keyed by position and kept in file order (1.0.0: keyed by task id, "
                              "stored in key-hash order)"}
    BUILDER_CONFIGS: list[TaskSetConfig] = []

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"task": tfds.features.Text()}),
            description="Root tasks for RAO (rao_jax.envs); each example is a Task as canonical JSON.",
            disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        first_seen: dict[str, int] = {}
        for index, task in enumerate(iter_tasks(self.builder_config.family, split,
                                                json.loads(self.builder_config.knobs))):
            if task.task_id in first_seen:
                log.warning("%s %s: task id %r at positions %d and %d (both kept)", self.builder_config.family,
                            split, task.task_id, first_seen[task.task_id], index)
            first_seen.setdefault(task.task_id, index)
            yield index, {"task": task_to_json(task)}


def _builder(family: str, out_dir: str | os.PathLike, knobs: Mapping[str, Any]) -> RaoTasks:
    config = TaskSetConfig(name=config_name(family, knobs), family=family,
                           knobs=json.dumps(dict(knobs), sort_keys=True))
    return RaoTasks(config=config, data_dir=str(out_dir), file_format="array_record")


def dataset_dir(family: str, out_dir: str | os.PathLike, knobs: Mapping[str, Any] | None = None) -> epath.Path:
    """The folder of one built dataset: ``out_dir/rao_tasks/<config>/<version>``."""
    return as_path(out_dir) / "rao_tasks" / config_name(family, knobs or {}) / str(RaoTasks.VERSION)


def build(family: str, out_dir: str | os.PathLike, knobs: Mapping[str, Any] | None = None) -> epath.Path:
    """Generate and write the dataset; returns its folder. Reuses files already built for these knobs.

    ``out_dir`` may be a URL (``rao_jax.paths``): the dataset is then built in a local scratch
    folder and uploaded (tfds' array_record writer only writes local files)."""
    folder = dataset_dir(family, out_dir, knobs)
    if not (folder / "dataset_info.json").exists():
        with staged(out_dir) as local:
            _builder(family, local, knobs or {}).download_and_prepare()
    return folder


def data_source(family: str, out_dir: str | os.PathLike, split: str, knobs: Mapping[str, Any] | None = None):
    """Random-access source of the built split (raises if it was not built); a dataset under a URL
    is read from this host's local copy of it."""
    folder = dataset_dir(family, out_dir, knobs)
    if not (folder / "dataset_info.json").exists():
        raise FileNotFoundError(f"no dataset at {folder}; run python -m rao_jax.data.build first")
    return tfds.builder_from_directory(os.fspath(local_copy(folder))).as_data_source(split=split)


class _DecodeTask(grain.MapTransform):
    def map(self, element: Mapping[str, Any]) -> Task:
        value = element["task"]
        return task_from_json(value if isinstance(value, bytes | str) else bytes(value))


def task_loader(source, seed: int = 0, shuffle: bool = True, num_epochs: int | None = 1, worker_count: int = 0,
                shard_index: int = 0, shard_count: int = 1) -> grain.DataLoader:
    """A grain loader yielding ``Task`` records from ``source`` (any random-access source).

    Iterate it with ``it = iter(loader)``; ``it.get_state()`` is the cursor to save in a checkpoint and
    ``it.set_state(cursor)`` resumes. Multiprocess workers (``worker_count > 0``) need absl flags parsed
    (grain reads them in workers), so this marks them parsed when the caller did not use absl.
    """
    if worker_count > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    sampler = grain.IndexSampler(num_records=len(source), shard_options=grain.ShardOptions(shard_index, shard_count),
                                 shuffle=shuffle, num_epochs=num_epochs, seed=seed)
    return grain.DataLoader(data_source=source, sampler=sampler, operations=[_DecodeTask()],
                            worker_count=worker_count)
