"""The trainer config: sections mirror the library dataclasses they configure, and mistakes that span
sections stop a run at start, naming both keys."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from rao_jax.config import EngineSection, OptimSection, RLSection, default_config, from_config_dict
from rao_jax.errors import ConfigError
from rao_jax.rl.batch import AdvantageConfig
from rao_jax.rl.learner import OptimConfig
from rao_jax.rl.losses import LossConfig
from rao_jax.sampling.engine import EngineConfig

ROOT = Path(__file__).resolve().parents[1]


def _defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("section, library, left_out", [
    (EngineSection, EngineConfig, {"seed"}),                     # the run's seed
    (RLSection, AdvantageConfig, set()),
    (RLSection, LossConfig, set()),
    (OptimSection, OptimConfig, {"warmup_steps", "schedule", "total_steps", "final_lr_ratio"}),   # sft's
])
def test_sections_carry_the_library_fields_with_their_defaults(section, library, left_out):
    ours, theirs = _defaults(section), _defaults(library)
    missing = set(theirs) - set(ours) - left_out
    assert not missing, f"{section.__name__} lacks {sorted(missing)} of {library.__name__}"
    differ = {k: (ours[k], theirs[k]) for k in set(theirs) & set(ours) if ours[k] != theirs[k]}
    assert not differ, f"{section.__name__} defaults differ from {library.__name__}: {differ}"


def _config(**overrides):
    raw = default_config().to_dict()
    raw["workdir"] = "runs/x"
    for key, value in overrides.items():
        section, name = key.split(".")
        raw[section][name] = value
    return from_config_dict(raw)


@pytest.mark.parametrize("overrides, keys", [
    ({"rollout.top_k": 100}, ("rollout.top_k (100)", "engine.max_top_k (64)")),
    ({"rollout.max_context": 4096}, ("rollout.max_context (4096)", "engine.max_seq_len (1024)")),
    ({"rollout.max_new_tokens": 1024}, ("rollout.max_new_tokens", "engine.max_seq_len")),
    ({"tokenizer.template": "qwen3"}, ("tokenizer.template='qwen3'", "tokenizer.path")),
    ({"train.row_len": 512}, ("train.row_len (512)", "engine.max_seq_len (1024)")),
])
def test_cross_section_mistakes_name_both_keys(overrides, keys):
    with pytest.raises(ConfigError) as err:
        _config(**overrides)
    for key in keys:
        assert key in str(err.value), (key, str(err.value))


@pytest.mark.parametrize("overrides, message", [
    ({"engine.max_prefill_tokens": 512}, "engine: max_prefill_tokens (512) must be >= max_seq_len (1024)"),
    ({"engine.num_pages": 8}, "engine: num_pages (8) leaves fewer than the 64 pages"),
    ({"rl.max_weight": 0.0}, "rl: "),
])
def test_library_checks_run_when_the_config_is_read(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _config(**overrides)


def test_the_trainer_stops_at_start_on_a_cross_section_mistake(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rao_jax.train", "--config", str(ROOT / "configs" / "tiny_test.py"),
                          f"--config.workdir={tmp_path / 'run'}", "--config.rollout.top_k=100"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "rollout.top_k (100) exceeds engine.max_top_k (64)" in out.stderr
    assert not (tmp_path / "run").exists()          # nothing built, no tokenizer trained, no warm start

