"""A workdir given as a URL: the trainer writes, resumes and exports through the path layer.

The bucket is ``tests.fake_gcs`` (``gs://`` backed by a local folder, no network); the trainer, the
tfds build, Orbax, TensorBoard and the export are the real ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rao_jax.config import from_config_dict
from tests.fake_gcs import fake_gcs

ROOT = Path(__file__).resolve().parent.parent


def _tiny(**overrides):
    sys.path.insert(0, str(ROOT / "configs"))
    try:
        import tiny_test
    finally:
        sys.path.pop(0)
    config = tiny_test.get_config()
    config.model.config_json = str(ROOT / config.model.config_json)
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


@pytest.mark.timeout(900)
def test_gs_workdir_trains_resumes_and_exports_with_nothing_local(tmp_path, monkeypatch):
    from rao_jax.train import train

    monkeypatch.chdir(tmp_path)   # a relative "gs:/..." folder would appear here
    bucket = tmp_path / "bucket_root"
    with fake_gcs(bucket):
        config = _tiny(**{"train.steps": 2, "train.export_hf": True})
        config.workdir = "gs://bucket/rao/run"
        train(from_config_dict(config), progress=False)
        config.train.steps = 3
        out = train(from_config_dict(config), progress=False)
    assert out["last_step"]["rl_step"] == 3
    run = bucket / "bucket" / "rao" / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]   # resumed, one history
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == 3
    assert (run / "checkpoints" / "3" / "commit_success.txt").exists()        # Orbax's object-store commit
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "eval" / "step_3.json").exists() and (run / "report" / "results.md").exists()
    assert (run / "hf" / "model.safetensors").exists() and (run / "hf" / "tokenizer.model").exists()
    assert (run / "tokenizer.model").exists() and list((run / "data").rglob("*.array_record*"))
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith("gs:")]
    assert not (ROOT / "gs:").exists()
