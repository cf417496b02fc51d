"""Recipes for config files: the paper's full fine-tune of a Qwen3 policy on a TPU slice
(``qwen3_pod_config``) and its TextCraft-Synth protocol on the authors' task files
(``textcraft_paper_protocol``). The per-slice sizes stay in the config files (``configs/qwen3_*.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from rao_jax.config import default_config
from rao_jax.errors import ConfigError

PAPER_TRAIN_DIFFICULTIES = ("medium", "hard")


def textcraft_paper_protocol(config: ml_collections.ConfigDict, *, wheel: str,
                             train_difficulty: str = "medium") -> ml_collections.ConfigDict:
    """The paper's TextCraft-Synth experiment (RAO_SPEC section 5) on the authors' task files.

    Trains on the ``train_difficulty`` tasks of the authors' train file (medium: 852 tasks; hard: 544)
    and evaluates on the first 100 tasks of their val file (mixed difficulties, in file order) at
    temperature 1, with a greedy pass as an extra mode; every root gets 200 steps, whatever the
    file's ``max_steps`` says, and the environment follows the authors' rules (``errors="return"``).
    ``wheel`` is the ``platoon-textcraft`` wheel (or its unpacked data folder) on the host that builds
    the dataset (tpu_scripts/setup.sh copies it to every host).
    """
    if train_difficulty not in PAPER_TRAIN_DIFFICULTIES:
        raise ConfigError(f"train_difficulty must be one of {PAPER_TRAIN_DIFFICULTIES}, got {train_difficulty!r}")
    config.data.family = "textcraft_official"
    config.data.knobs = {"wheel": wheel, "errors": "return"}
    config.data.train_difficulties = (train_difficulty,)
    config.rollout.root_budget = 200
    config.eval.split = "val"
    config.eval.num_tasks = 100
    config.eval.difficulties = ()
    config.eval.temperature = 1.0
    config.eval.modes = ("recursive", "recursive_greedy")
    return config


def qwen3_pod_config(*, slice_name: str, model_json: str, checkpoint: str, workdir: str, family: str,
                     knobs: Mapping[str, Any], context: int) -> ml_collections.ConfigDict:
    """The paper's full fine-tune of a Qwen3 policy on a TPU slice (RAO_SPEC section 4).

    16 tasks x 8 trees per step, temperature 1.0, 512 tokens per action, AdamW(0.9, 0.95) at a
    constant 3e-6 with weight decay 0.017 and clipping at 1.0, fp32 master weights with bf16
    compute (a 3e-6 step is below bf16 resolution), bf16 KV pages, and the Pallas kernels for
    training (splash) and sampling (ragged paged attention).
    The per-slice sizes (mesh, KV pool, micro-batches) are left to the config file, from
    ``python -m rao_jax.plan``.
    """
    config = default_config()
    config.slice = slice_name
    config.workdir = workdir
    config.model.config_json = model_json       # for planning; a run uses the checkpoint's own
    config.model.init_checkpoint = checkpoint
    config.model.vocab_from_tokenizer = False
    config.model.param_dtype = "float32"
    config.model.dtype = "bfloat16"
    config.model.attn_impl = "splash"   # Pallas TPU kernel in training (the plan assumes blockwise attention)
    config.model.remat = True
    config.tokenizer.path = checkpoint
    config.tokenizer.template = "qwen3"
    config.data.family = family
    config.data.knobs = dict(knobs)
    config.rollout.tasks_per_step = 16
    config.rollout.group_size = 8
    config.rollout.temperature = 1.0
    config.rollout.max_new_tokens = 512
    config.rollout.max_context = context
    config.rollout.sandbox_workers = 2
    config.optim.learning_rate = 3e-6
    config.optim.b1 = 0.9
    config.optim.b2 = 0.95
    config.optim.weight_decay = 0.017
    config.optim.grad_clip = 1.0
    config.engine.page_size = 64
    config.engine.max_seq_len = context
    config.engine.max_prefill_tokens = context
    config.engine.decode_steps = 32
    config.engine.attn_impl = "pallas"
    config.engine.cache_dtype = "bfloat16"
    config.engine.weights_dtype = "bfloat16"
    config.train.steps = 200
    config.train.row_len = context
    config.train.logprob_chunk = 512
    config.train.checkpoint_every = 10
    config.eval.num_tasks = 64
    return config
