"""Shared fixtures: tiny random Hugging Face checkpoints written to temporary folders."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

from tests.hf_utils import make_hf_model  # noqa: E402


@pytest.fixture
def hf_checkpoint(tmp_path):
    """Factory: writes a tiny random HF model and returns (folder, torch model)."""
    def make(moe: bool = False, name: str = "hf", **overrides):
        model = make_hf_model(moe, **overrides)
        folder = tmp_path / name
        model.save_pretrained(folder)
        return folder, model
    return make
