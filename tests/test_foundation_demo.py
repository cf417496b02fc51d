"""The foundation demo (a smoke run of models, checkpoints and export) on a shortened schedule."""

from __future__ import annotations

import numpy as np
import pytest

from rao_jax import foundation_demo


def test_counting_batch_packs_sequences_with_segment_ids():
    tokens, segments = foundation_demo.counting_batch(np.random.default_rng(0), vocab=10, rows=2,
                                                      row_len=12, seq_len=4)
    assert tokens.shape == segments.shape == (2, 12)
    assert segments[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    steps = (np.diff(np.asarray(tokens), axis=1) % 10)[np.diff(np.asarray(segments), axis=1) == 0]
    assert (steps == 1).all()


@pytest.mark.slow
def test_short_run_checkpoints_exports_and_reloads_exactly(tmp_path):
    result = foundation_demo.run_one(foundation_demo.DEFAULT_CONFIGS[1], tmp_path, steps=2, seed=0)
    assert result["checkpoint_step"] == 2
    assert result["max_logit_diff"] == 0.0
    assert (tmp_path / "tiny_qwen3_moe" / "hf" / "config.json").exists()


def test_refuses_to_clobber_output_without_overwrite(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        foundation_demo.main(["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").exists()
