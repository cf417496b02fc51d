"""Trainer configuration: the sections of a config file as frozen, validated dataclasses.

A config file (``configs/*.py``) defines ``get_config() -> ml_collections.ConfigDict`` whose sections
mirror the dataclasses below; ``python -m rao_jax.train --config configs/x.py --config.rl.lam=0.5``
loads it with ``lock_config=True``, so a misspelt override fails at start. ``from_config_dict``
converts the ConfigDict to a ``TrainConfig`` once, at the boundary: library code never sees a
ConfigDict. Every section rejects keys it does not know and checks its values, with a message
naming the key (``ConfigError``). ``default_config()`` is the ConfigDict of all defaults; config
files start from it and change what they need, so a file names only what differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

# config_file and to_dict are re-exported: config files and callers load and write configs through rao_jax.config.
from rao_jax.config_parse import build_section, to_plain
from rao_jax.config_parse import config_file as config_file
from rao_jax.config_parse import to_dict as to_dict
from rao_jax.errors import ConfigError


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The policy's shape and starting weights.

    Attributes:
        config_json: the model's Hugging Face ``config.json`` (a file, or a folder holding one).
        init_checkpoint: a Hugging Face folder (``config.json`` + safetensors) to start from;
            "" starts from random weights (from-scratch demo models).
        vocab_from_tokenizer: for from-scratch models, set ``vocab_size`` to the tokenizer's.
        dtype / param_dtype: compute and parameter dtypes.
        attn_impl: training attention: "xla" (every backend), "splash" (TPU Pallas kernel) or
            "cudnn" (GPU cuDNN flash attention; needs dtype bfloat16). The sampler has its own.
        remat: recompute each decoder layer's activations in the backward pass (less memory, about
            a third more compute; the pod recipes turn it on).
    """

    config_json: str = "configs/models/tiny_qwen3.json"
    init_checkpoint: str = ""
    vocab_from_tokenizer: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    attn_impl: str = "xla"
    remat: bool = False

    def __post_init__(self):
        _need(self.attn_impl in ("xla", "splash", "cudnn"), "model.attn_impl must be xla, splash or cudnn")
        _need(self.attn_impl != "cudnn" or self.dtype == "bfloat16", "model.attn_impl=cudnn needs model.dtype=bfloat16")
        _need(bool(self.config_json) or bool(self.init_checkpoint),
              "model.config_json or model.init_checkpoint must name the model")
        for name in ("dtype", "param_dtype"):
            _need(getattr(self, name) in ("float32", "bfloat16"), f"model.{name} must be float32 or bfloat16")


@dataclasses.dataclass(frozen=True)
class TokenizerSection:
    """Attributes:
        path: a sentencepiece ``.model`` or a Hugging Face ``tokenizer.json`` (or its folder); ""
            trains a sentencepiece model on the task family into ``<workdir>/tokenizer.model``.
        vocab_size: size of a tokenizer trained here.
        template: chat layout, ``"sentencepiece"`` (from-scratch models) or ``"qwen3"``.
        corpus_tasks: training tasks whose prompts and oracle rollouts train the tokenizer.
    """

    path: str = ""
    vocab_size: int = 1024
    template: str = "sentencepiece"
    corpus_tasks: int = 64

    def __post_init__(self):
        _need(self.template in ("sentencepiece", "qwen3"), "tokenizer.template must be sentencepiece or qwen3")
        _need(self.vocab_size >= 300, "tokenizer.vocab_size must be >= 300 (bytes + chat specials)")
        _need(self.corpus_tasks >= 1, "tokenizer.corpus_tasks must be >= 1")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Attributes:
        family: task source (a name registered in ``rao_jax.envs.families``).
        knobs: the family's generator knobs (see docs/task_families.md).
        data_dir: where the array_record datasets are built ("" = ``<workdir>/data``).
        train_difficulties: train only on these difficulty buckets (empty: all).
        shuffle: shuffle training tasks (seeded; the order is resumable).
        families: several families in one run, ``name -> entry`` with optional weight, knobs,
            root_budget, max_context, train_difficulties and oracle_knobs (``rao_jax.data.mixture``);
            when set, it replaces family / knobs / train_difficulties, which must stay at their defaults.
    """

    family: str = "textcraft_synth"
    knobs: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"preset": "tiny", "per_difficulty": 40})
    data_dir: str = ""
    train_difficulties: tuple[str, ...] = ()
    shuffle: bool = True
    families: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        from rao_jax.envs import families
        _need(self.family in families.names(), f"data.family must be one of {families.names()}, got {self.family!r}")
        if self.families:
            default = DataSection()
            _need((self.family, dict(self.knobs), self.train_difficulties) ==
                  (default.family, dict(default.knobs), default.train_difficulties),
                  "data.families replaces data.family / data.knobs / data.train_difficulties: set those per "
                  "family in its data.families entry and leave them at their defaults")
        self.specs()   # each entry's checks, now

    def specs(self):
        """The run's families (``rao_jax.data.mixture.FamilySpec``), one for a single-family run."""
        from rao_jax.data import mixture
        from rao_jax.envs import families

        if not self.families:
            return mixture.single(self.family, self.knobs, self.train_difficulties)
        specs = []
        for name, entry in self.families.items():
            where = f"data.families.{name}"
            _need(name in families.names(), f"{where}: unknown family; known: {families.names()}")
            _need(isinstance(entry, Mapping) and "name" not in entry,
                  f"{where} must be a dict of the FamilySpec fields other than name, got {entry!r}")
            specs.append(build_section(mixture.FamilySpec, {**entry, "name": name}, f"{where}."))
        return mixture.check_families(specs)


@dataclasses.dataclass(frozen=True)
class RolloutSection:
    """How trees are sampled during training.

    Attributes:
        tasks_per_step / group_size: root tasks per RL step and trees per task (G).
        recursive: False trains the flat baseline (no ``launch_subagent``).
        root_budget: root step budget; 0 uses each task's own ``max_steps``.
        temperature / top_k / top_p / max_new_tokens: sampling of each action (temperature 0:
            greedy, so the G trees of a task are identical and carry no signal; for tests).
        max_context: cap on a node's sequence length (0: the engine's ``max_seq_len``).
        max_depth / max_children / max_concurrent: optional tree caps (0: off).
        sandbox_workers: template processes that fork each tree's own sandbox worker (1-2 suffice:
            a fork takes milliseconds); cell_cpu_seconds / cell_wall_seconds: limits of every cell.
        require_isolation: refuse to start unless the kernel isolates every tree's worker (network,
            files, processes; ``rao_jax.agent.sandbox``). Turn off only where the kernel cannot (e.g.
            Docker's default seccomp profile): the run then relies on the Python guards and says so.
        brief_prompt: a few-line system prompt (format + tool signatures) for tiny from-scratch
            models, in training, evaluation and warm-start demonstrations alike.
        goal_variables: predefine ``goal`` (the node's goal spec, e.g. ``{'targets': {'s3b': 2}}``) and
            ``budget`` (its steps) in every node's REPL namespace, as well as stating them in the prompt,
            so a policy can read its task as data instead of copying it from text (the system prompt says so).
    """

    tasks_per_step: int = 4
    group_size: int = 4
    recursive: bool = True
    root_budget: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 96
    max_context: int = 0
    max_depth: int = 0
    max_children: int = 0
    max_concurrent: int = 0
    sandbox_workers: int = 2
    cell_cpu_seconds: float = 5.0
    cell_wall_seconds: float = 20.0
    require_isolation: bool = True
    brief_prompt: bool = False
    goal_variables: bool = False

    def __post_init__(self):
        _need(self.tasks_per_step >= 1, "rollout.tasks_per_step must be >= 1")
        _need(self.group_size >= 2, "rollout.group_size must be >= 2 (the leave-one-out baseline needs "
                                    "another tree of the same task)")
        _need(self.temperature >= 0, "rollout.temperature must be >= 0 (0 decodes greedily: every tree of a "
                                     "task is then the same, which only tests and debugging want)")
        _need(self.max_new_tokens >= 8, "rollout.max_new_tokens must be >= 8")
        _need(self.sandbox_workers >= 1, "rollout.sandbox_workers must be >= 1")
        for name in ("root_budget", "max_context", "max_depth", "max_children", "max_concurrent", "top_k"):
            _need(getattr(self, name) >= 0, f"rollout.{name} must be >= 0 (0 = off / default)")


@dataclasses.dataclass(frozen=True)
class EngineSection:
    """The sampler: its replicas and each replica's static sizes (``rao_jax.sampling.EngineConfig``).

    Attributes:
        replica_expert / replica_tensor: a replica's mesh. Every replica lies on
            ``replica_expert x replica_tensor`` devices of one host (heads, MLP units and K/V heads
            over ``tensor``, experts over ``expert``); a host holds as many replicas as its devices
            allow, and each has its own weights and page pool (``rao_jax.parallel.mesh``).
        weights_dtype: the replicas' weight dtype ("" = ``model.dtype``).
        max_rows / num_pages / ...: per replica: every field of ``EngineConfig`` but its seed (the run's),
            with its default (``rao_jax.config_libs.engine_config`` builds one from them).
    """

    replica_expert: int = 1
    replica_tensor: int = 1
    weights_dtype: str = ""
    max_rows: int = 64
    page_size: int = 16
    num_pages: int = 2048
    max_seq_len: int = 1024
    decode_steps: int = 16
    decode_groups: int = 1
    max_prefill_tokens: int = 4096
    min_prefill_bucket: int = 64
    prefill_buckets_per_octave: int = 2
    prefill_block: int = 16
    max_top_k: int = 64
    max_stops: int = 4
    max_stop_len: int = 8
    attn_impl: str = "reference"
    cache_dtype: str = "float32"

    def __post_init__(self):
        _need(self.replica_expert >= 1 and self.replica_tensor >= 1,
              "engine.replica_expert and engine.replica_tensor must be >= 1")
        _need(self.weights_dtype in ("", "float32", "bfloat16"), "engine.weights_dtype must be '', float32 or bfloat16")
        from rao_jax.config_libs import engine_config
        engine_config(self)   # EngineConfig's own checks, now rather than at the first rollout


@dataclasses.dataclass(frozen=True)
class RLSection:
    """Reward, advantage and loss (RAO_SPEC sections 2-4).

    Attributes:
        bonus / lam / beta / cap: ``rao_jax.rl.rewards.node_rewards``.
        baseline / normalize_std: ``rao_jax.rl.advantages.tree_advantages``.
        drop_zero_signal: drop task groups whose node rewards are all equal.
        loss: one of ``rao_jax.rl.losses.RL_LOSS_NAMES`` (cispo, ppo); max_weight (CISPO), eps_low /
            eps_high (PPO).
        kl_coef: weight of a KL penalty to the initial policy (0: off, as in the paper).
        entropy_coef: weight of an entropy bonus (0: off); entropy is logged either way.
        staleness: policy versions a rollout may lag the learner (0: synchronous). With s > 0 the
            sampler works on a copy of the parameters refreshed after every update, and the rollouts
            of the next s steps run while the learner updates.
    """

    bonus: str = "mean"
    lam: float = 0.0
    beta: float = 0.2
    cap: float = 0.4
    baseline: str = "loo"
    normalize_std: bool = False
    drop_zero_signal: bool = True
    loss: str = "cispo"
    max_weight: float = 5.0
    eps_low: float = 0.2
    eps_high: float = 0.28
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    staleness: int = 0

    def __post_init__(self):
        _need(self.bonus in ("mean", "capped_sum"), f"rl.bonus must be mean or capped_sum, got {self.bonus!r}")
        _need(self.baseline in ("loo", "mean"), f"rl.baseline must be loo or mean, got {self.baseline!r}")
        _need(self.kl_coef >= 0 and self.entropy_coef >= 0, "rl.kl_coef and rl.entropy_coef must be >= 0")
        _need(self.staleness >= 0, "rl.staleness must be >= 0")
        from rao_jax.config_libs import advantage_config, loss_config
        advantage_config(self), loss_config(self)   # the library's own checks, now


@dataclasses.dataclass(frozen=True)
class OptimSection:
    """AdamW with global-norm clipping; the paper's settings by default."""

    learning_rate: float = 3e-6
    b1: float = 0.9
    b2: float = 0.95
    weight_decay: float = 0.017
    grad_clip: float = 1.0

    def __post_init__(self):
        _need(self.learning_rate > 0, "optim.learning_rate must be > 0")
        _need(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "optim.b1 and optim.b2 must be in [0, 1)")
        from rao_jax.config_libs import optim_config
        optim_config(self)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """The loop.

    Attributes:
        steps: RL steps (one optimizer update each).
        row_len: tokens per packed row; a node's whole episode must fit one row.
        micro_batch_rows: rows per micro-batch (a power of two). A step's rows are padded to a
            multiple of it and accumulated over micro-batches into one update; every micro-batch
            has this shape, so the update compiles once.
        logprob_chunk: positions per chunk of the log-prob computation.
        checkpoint_every / keep_checkpoints: checkpoint cadence and retention.
        eval_every: evaluate every N steps (0: only at the end).
        export_hf: write the final policy as a Hugging Face folder ``<workdir>/hf``.
        save_trees: keep every RL step's trees with their tokens, as traces under
            ``<workdir>/trees/step_<N>/process_<i>/`` (each process its own).
    """

    steps: int = 20
    row_len: int = 1024
    micro_batch_rows: int = 8
    logprob_chunk: int = 256
    checkpoint_every: int = 5
    keep_checkpoints: int = 3
    eval_every: int = 0
    export_hf: bool = True
    save_trees: bool = False

    def __post_init__(self):
        _need(self.steps >= 0, "train.steps must be >= 0")
        _need(self.checkpoint_every >= 1, "train.checkpoint_every must be >= 1")
        _need(self.micro_batch_rows >= 1 and self.micro_batch_rows & (self.micro_batch_rows - 1) == 0,
              f"train.micro_batch_rows must be a power of two, got {self.micro_batch_rows}")
        _need(self.row_len % min(self.logprob_chunk, self.row_len) == 0,
              f"train.row_len ({self.row_len}) must be a multiple of train.logprob_chunk ({self.logprob_chunk})")
        _need(self.eval_every >= 0, "train.eval_every must be >= 0")


EVAL_MODES = ("recursive", "flat", "recursive_greedy", "flat_greedy", "oracle")


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Held-out evaluation (``split`` tasks, the same ones every time).

    Attributes:
        num_tasks: tasks evaluated (the first ``num_tasks`` of the split, in file order).
        modes: any of ``recursive``, ``flat`` (the model at ``temperature``), ``recursive_greedy``,
            ``flat_greedy`` (the model decoding greedily, whatever ``temperature`` is) and ``oracle``
            (the scripted expert).
        temperature: of the ``recursive`` and ``flat`` modes (0 decodes greedily).
        difficulties: only these buckets (empty: all).
        per_difficulty: ``{bucket: n}``, the first ``n`` tasks of each bucket named instead (where
            larger buckets cost more to roll out); ``num_tasks`` must then be their sum and
            ``difficulties`` empty.
    """

    split: str = "val"
    num_tasks: int = 16
    modes: tuple[str, ...] = ("recursive", "flat")
    temperature: float = 0.0
    difficulties: tuple[str, ...] = ()
    per_difficulty: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        bad = [m for m in self.modes if m not in EVAL_MODES]
        _need(not bad, f"eval.modes: unknown {bad}; use {', '.join(EVAL_MODES)}")
        _need(self.num_tasks >= 1, "eval.num_tasks must be >= 1")
        if self.per_difficulty:
            counts = dict(self.per_difficulty)
            _need(all(isinstance(n, int) and n >= 1 for n in counts.values()),
                  f"eval.per_difficulty: every count must be an integer >= 1, got {counts}")
            _need(not self.difficulties, "eval.per_difficulty names the buckets: leave eval.difficulties empty")
            _need(sum(counts.values()) == self.num_tasks,
                  f"eval.per_difficulty adds up to {sum(counts.values())} tasks but eval.num_tasks is "
                  f"{self.num_tasks}: make them equal")


@dataclasses.dataclass(frozen=True)
class SFTSection:
    """Optional warm start on oracle demonstrations before RL (0 steps: none).

    Attributes:
        steps / learning_rate / rows: the supervised phase.
        schedule: ``"constant"`` lr, or ``"cosine"``: decay from ``learning_rate`` to 0 over ``steps``
            (the CPU demo keeps constant: over its 80 steps cosine fitted slower, NLL 0.065 against 0.014 at
            step 61).
        num_tasks: training tasks whose oracle trees are the demonstrations.
        difficulties: only demonstrations from these buckets (empty: all).
        recursive: demonstrate the recursive oracle (False: the flat one).
        oracle_knobs: keyword arguments of the family's oracle (``rao_jax.agent.oracles.make_oracle``).
    """

    steps: int = 0
    learning_rate: float = 1e-3
    schedule: str = "constant"
    rows: int = 8
    num_tasks: int = 64
    difficulties: tuple[str, ...] = ()
    recursive: bool = True
    oracle_knobs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _need(self.steps >= 0 and self.rows >= 1 and self.num_tasks >= 1,
              "sft.steps must be >= 0, sft.rows and sft.num_tasks >= 1")
        _need(self.schedule in ("constant", "cosine"),
              f"sft.schedule must be constant or cosine, got {self.schedule!r}")


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """Device mesh ``(data, fsdp, expert, tensor)``; the sizes must multiply to the device count."""

    data: int = 1
    fsdp: int = 1
    expert: int = 1
    tensor: int = 1

    def __post_init__(self):
        _need(all(getattr(self, a) >= 1 for a in ("data", "fsdp", "expert", "tensor")), "mesh sizes must be >= 1")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The whole trainer config.

    Attributes:
        slice: the Cloud TPU slice the config was sized for (e.g. ``"v5p-16"``, ``"v6e-8"``); read
            by ``python -m rao_jax.plan`` and the tpu_scripts, ignored by the trainer ("" = none).
    """

    workdir: str = "runs/rao"
    slice: str = ""
    seed: int = 0
    log_every: int = 1
    model: ModelSection = ModelSection()
    tokenizer: TokenizerSection = TokenizerSection()
    data: DataSection = DataSection()
    rollout: RolloutSection = RolloutSection()
    engine: EngineSection = EngineSection()
    rl: RLSection = RLSection()
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    sft: SFTSection = SFTSection()
    mesh: MeshSection = MeshSection()

    def __post_init__(self):
        _need(bool(self.workdir), "workdir must be set")
        _need(self.rollout.max_new_tokens < self.engine.max_seq_len,
              "rollout.max_new_tokens must be < engine.max_seq_len")
        specs = self.data.specs()
        for where, knobs in [("sft.oracle_knobs", self.sft.oracle_knobs)] + [
                (f"data.families.{s.name}.oracle_knobs", s.oracle_knobs) for s in specs if s.oracle_knobs]:
            _need(not knobs.get("goal_variables") or self.rollout.goal_variables,
                  f"{where} goal_variables=True needs rollout.goal_variables=True (its cells read `goal`)")
        window = max(min(self.engine.max_seq_len, s.max_context or self.rollout.max_context or 1 << 30) for s in specs)
        _need(self.train.row_len >= window,
              f"train.row_len ({self.train.row_len}) must hold a whole node episode: make it >= "
              f"engine.max_seq_len ({self.engine.max_seq_len}) or the largest rollout / family max_context")
        for s in specs:
            _need(s.max_context <= self.engine.max_seq_len,
                  f"data.families.{s.name}.max_context ({s.max_context}) exceeds engine.max_seq_len "
                  f"({self.engine.max_seq_len}), the longest sequence a replica holds")
        _need(self.rollout.top_k <= self.engine.max_top_k,
              f"rollout.top_k ({self.rollout.top_k}) exceeds engine.max_top_k ({self.engine.max_top_k}), the "
              "sampler's static bound: raise engine.max_top_k or lower rollout.top_k")
        _need(self.rollout.max_context <= self.engine.max_seq_len,
              f"rollout.max_context ({self.rollout.max_context}) exceeds engine.max_seq_len "
              f"({self.engine.max_seq_len}), the longest sequence a replica holds")
        _need(self.tokenizer.template != "qwen3" or bool(self.tokenizer.path),
              "tokenizer.template='qwen3' needs tokenizer.path (a Qwen3 tokenizer.json): a tokenizer trained here "
              "has the sentencepiece template's special tokens, not <|im_start|> / <|im_end|>")


def default_config() -> ml_collections.ConfigDict:
    """All defaults as a ConfigDict (what config files start from)."""
    return ml_collections.ConfigDict(to_plain(TrainConfig()))


def from_config_dict(cfg: ml_collections.ConfigDict | Mapping[str, Any]) -> TrainConfig:
    """Validates a ConfigDict and converts it to a ``TrainConfig``.

    Raises:
        ConfigError: an unknown key, a value of the wrong type or out of range (the message names it).
    """
    raw = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    return build_section(TrainConfig, raw, "")


