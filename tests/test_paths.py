"""The path layer on local folders and on a stand-in gs:// bucket (tests.fake_gcs)."""

from __future__ import annotations

import json

from rao_jax.paths import LineLog, as_path, copy_tree, is_remote, local_copy, staged, tensorboard_writer
from tests.fake_gcs import fake_gcs


def _log_round_trip(path):
    log = LineLog(path)
    for i in range(3):
        log.write(json.dumps({"step": i + 1}))
        log.flush()
    log.close()
    log.close()   # idempotent
    resumed = LineLog(path, keep=lambda line: json.loads(line)["step"] <= 2)   # a resume cuts the history back
    resumed.write(json.dumps({"step": 3, "again": True}))
    resumed.close()
    return [json.loads(line) for line in as_path(path).read_text().splitlines()]


def test_line_log_appends_locally_and_rewrites_on_an_object_store(tmp_path):
    expected = [{"step": 1}, {"step": 2}, {"step": 3, "again": True}]
    assert _log_round_trip(tmp_path / "local" / "metrics.jsonl") == expected
    with fake_gcs(tmp_path / "bucket"):
        # the stand-in turns appends into overwrites, as gcsfs does: only whole rewrites keep the lines
        assert _log_round_trip("gs://b/run/metrics.jsonl") == expected
    assert (tmp_path / "bucket" / "b" / "run" / "metrics.jsonl").exists()


def test_staged_folders_and_local_copies(tmp_path):
    local = tmp_path / "out"
    with staged(local) as folder:
        assert folder == local
        (folder / "a.txt").write_text("x")
    with fake_gcs(tmp_path / "bucket"):
        assert is_remote("gs://b/x") and not is_remote(local)
        with staged("gs://b/run/data") as folder:
            assert not is_remote(folder)
            (folder / "sub").mkdir()
            (folder / "sub" / "f.bin").write_bytes(b"123")
        assert as_path("gs://b/run/data/sub/f.bin").read_bytes() == b"123"
        copy = local_copy("gs://b/run/data")
        assert (copy / "sub" / "f.bin").read_bytes() == b"123" and local_copy("gs://b/run/data") == copy
        copy_tree(local, "gs://b/copied")
        assert as_path("gs://b/copied/a.txt").read_text() == "x"
        writer = tensorboard_writer("gs://b/run/tb")
        writer.add_scalar("train/loss", 1.5, 1)
        writer.close()
        assert list((tmp_path / "bucket" / "b" / "run" / "tb").glob("events.out.tfevents.*"))
    assert local_copy(local) == local
