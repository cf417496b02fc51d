"""What training and evaluation share: tasks, tokenizer, the learner and its sampler, rollouts.

``Runtime.create(config)`` builds, in order and with an error naming the culprit when something is
wrong: the layout (the learner mesh and the sampler replicas, ``rao_jax.layout``), the task
datasets (built once into ``data_dir`` as array_record by process 0, reused afterwards), the
tokenizer (a given file, or a sentencepiece model trained by process 0 on the family's prompts and
oracle rollouts and saved in the workdir so a resumed run reuses it), the learner (a Hugging Face
checkpoint loaded straight into its shards, or random weights shaped by ``config.json``) with its
optimizers, and the sampler replicas of this process, whose weights are a resharded copy of the
learner's (``sync_sampler``). ``async with runtime.sandboxes()`` starts the REPL worker pool;
``await runtime.rollout(...)`` rolls out G trees per task with the model, ``await
runtime.scripted_rollout(...)`` with each task's oracle.

On several processes (a pod) every process builds the same Runtime; each rolls out only the tasks
it is given (``share``), on its own replicas, with no collective until the caller gathers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rao_jax import config_libs
from rao_jax.agent.budget import BudgetCaps
from rao_jax.agent.corpus import corpus_texts, oracle_corpus_texts
from rao_jax.agent.demo_policy import DemoPolicy
from rao_jax.agent.model_policy import ModelPolicy
from rao_jax.agent.oracles import make_oracle
from rao_jax.agent.protocol import qwen3_template, sentencepiece_template
from rao_jax.agent.rollout import RolloutConfig, RolloutRunner
from rao_jax.agent.sandbox import SandboxLimits, SandboxPool
from rao_jax.agent.tree import TreeResult
from rao_jax.checkpoint.hf import load_pretrained
from rao_jax.config import TrainConfig
from rao_jax.data.tokenizer import load_tokenizer, train_sentencepiece
from rao_jax.envs.base import Task
from rao_jax.envs.families import open_episode
from rao_jax.errors import ConfigError
from rao_jax.layout import Layout, LearnerInit, learner_init
from rao_jax.models import ModelConfig, Qwen3
from rao_jax.parallel import multihost
from rao_jax.paths import as_path, local_copy, staged
from rao_jax.sampling import EngineConfig, SamplingParams
from rao_jax.sampling.replicas import SamplerReplicas
from rao_jax.tasks import TaskSet

log = logging.getLogger(__name__)


def _tokenizer(config: TrainConfig, tasks: TaskSet):
    tok = config.tokenizer
    if tok.path:
        path = as_path(tok.path)
        if not path.exists():
            raise ConfigError(f"tokenizer.path {path} does not exist")
        return load_tokenizer(local_copy(path))
    workdir = as_path(config.workdir)
    path = workdir / "tokenizer.model"

    def train() -> None:
        if path.exists():
            return
        log.info("training a %d-token sentencepiece tokenizer on %d %s tasks", tok.vocab_size, tok.corpus_tasks,
                 tasks.family)
        corpus = tasks.tasks("train", tok.corpus_tasks)
        texts = corpus_texts(corpus)
        if config.rollout.brief_prompt or any(tasks.oracle_knobs(t) for t in corpus):
            # The warm start's oracle (each family's) and prompt variant are what the model reads and
            # writes most: the tokenizer learns their text too.
            texts = itertools.chain(texts, *(oracle_corpus_texts([t], tasks.oracle_knobs(t),
                                                                 brief_prompt=config.rollout.brief_prompt)
                                             for t in corpus))
        with staged(workdir) as local:
            train_sentencepiece(texts, tok.vocab_size, local / "tokenizer", seed=config.seed)

    multihost.on_primary(train)
    return load_tokenizer(local_copy(path))


def _model_config(config: TrainConfig, vocab_size: int) -> ModelConfig:
    m = config.model
    if m.init_checkpoint:
        path = as_path(m.init_checkpoint)
        if not path.exists():
            raise ConfigError(f"model.init_checkpoint {path} does not exist")
        cfg = ModelConfig.from_json_file(local_copy(path / "config.json"))
    else:
        path = as_path(m.config_json)
        if not path.exists():
            raise ConfigError(f"model.config_json {path} does not exist")
        cfg = ModelConfig.from_json_file(local_copy(path))
        if m.vocab_from_tokenizer:
            cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
    if cfg.vocab_size < vocab_size:
        raise ConfigError(f"the tokenizer has {vocab_size} tokens but the model's vocabulary only {cfg.vocab_size}")
    return cfg


def layout_of(config: TrainConfig, devices: Sequence[jax.Device] | None = None) -> Layout:
    """The run's meshes (``config.mesh`` for the learner, ``engine.replica_*`` for the sampler)."""
    mesh, e = config.mesh, config.engine
    try:
        return Layout.create(data=mesh.data, fsdp=mesh.fsdp, expert=mesh.expert, tensor=mesh.tensor,
                             replica_expert=e.replica_expert, replica_tensor=e.replica_tensor, devices=devices)
    except ValueError as err:
        raise ConfigError(f"mesh: {err}") from None


def learner_constructor(config: TrainConfig, model_cfg: ModelConfig, layout: Layout,
                        make_optimizers: Callable[[Qwen3], tuple]) -> LearnerInit:
    """The learner's jitted constructor (``rao_jax.layout.learner_init``) as this config asks."""
    m = config.model
    return learner_init(model_cfg, layout.learner, make_optimizers=make_optimizers, dtype=jnp.dtype(m.dtype),
                        param_dtype=jnp.dtype(m.param_dtype), attn_impl=m.attn_impl, remat=m.remat, seed=config.seed)


def engine_config(config: TrainConfig) -> EngineConfig:
    """Each sampler replica's static sizes."""
    return config_libs.engine_config(config.engine, seed=config.seed)


def sampler_dtype(config: TrainConfig) -> str:
    return config.engine.weights_dtype or config.model.dtype


def no_optimizers(model: Qwen3) -> tuple:
    return ()


def allocate(config: TrainConfig, model_cfg: ModelConfig, layout: Layout,
             make_optimizers: Callable[[Qwen3], tuple] = no_optimizers) -> tuple[Qwen3, tuple, SamplerReplicas]:
    """Everything long-lived on the devices: the learner (weights from ``model.init_checkpoint`` or
    random) with its optimizers, and this process's sampler replicas holding version 0 of its
    weights, each with its page pool. ``python -m rao_jax.plan`` evaluates these same constructors."""
    m = config.model
    init = learner_constructor(config, model_cfg, layout, make_optimizers)
    if m.init_checkpoint:
        loaded, _ = load_pretrained(local_copy(m.init_checkpoint), dtype=jnp.dtype(m.dtype),
                                    param_dtype=jnp.dtype(m.param_dtype), attn_impl=m.attn_impl, remat=m.remat,
                                    shardings=init.param_shardings)
        state = init.init(nnx.state(loaded, nnx.Param))
    else:
        state = init.init()
    model, optimizers = init.merge(state)
    sampler = SamplerReplicas(layout, model_cfg, engine_config(config), weights_dtype=sampler_dtype(config),
                              compute_dtype=m.dtype, learner_param_shardings=init.param_shardings,
                              learner_dtype=m.param_dtype)
    sampler.sync(nnx.state(model, nnx.Param), version=0)
    return model, optimizers, sampler


@dataclasses.dataclass
class Runtime:
    config: TrainConfig
    layout: Layout
    tasks: TaskSet
    tokenizer: object
    template: object
    model: Qwen3
    model_cfg: ModelConfig
    optimizers: tuple
    sampler: SamplerReplicas
    learner_version: int = 0
    sync_seconds: float = 0.0
    pool: SandboxPool | None = None

    @classmethod
    def create(cls, config: TrainConfig, make_optimizers: Callable[[Qwen3], tuple] = no_optimizers) -> Runtime:
        """Builds everything (see the module docstring); ``make_optimizers(model)`` gives the
        optimizers the learner state holds (none for evaluation)."""
        from rao_jax.models.attention_kernels import check_attn_impl

        try:
            check_attn_impl(config.model.attn_impl)
        except ValueError as err:
            raise ConfigError(f"model.attn_impl: {err}") from None
        layout = layout_of(config)
        share = config.rollout.tasks_per_step % jax.process_count()
        if share:
            raise ConfigError(f"rollout.tasks_per_step ({config.rollout.tasks_per_step}) must be a multiple of the "
                              f"{jax.process_count()} processes (each rolls out its own share of every step's tasks)")
        multihost.on_primary(lambda: as_path(config.workdir).mkdir(parents=True, exist_ok=True))
        tasks = TaskSet(config)
        tokenizer = _tokenizer(config, tasks)
        template = sentencepiece_template() if config.tokenizer.template == "sentencepiece" else qwen3_template()
        model_cfg = _model_config(config, tokenizer.vocab_size)
        model, optimizers, sampler = allocate(config, model_cfg, layout, make_optimizers)
        return cls(config, layout, tasks, tokenizer, template, model, model_cfg, optimizers, sampler)

    @property
    def mesh(self) -> jax.sharding.Mesh:
        """The learner mesh."""
        return self.layout.learner

    def learner_updated(self) -> None:
        """Counts one change of the learner's parameters (an update, a restore); the sampler lags
        until ``sync_sampler``."""
        self.learner_version += 1

    def sync_sampler(self) -> float:
        """Brings every sampler replica to the learner's current parameters (one jitted reshard and
        cast; a collective). Returns the seconds it took, 0 when already current."""
        if self.sampler.version == self.learner_version and self.sampler.has_weights:
            return 0.0
        self.sync_seconds = self.sampler.sync(nnx.state(self.model, nnx.Param), self.learner_version)
        return self.sync_seconds

    def release_sampler_weights(self) -> None:
        """Frees the replicas' weight copies while nothing samples (a synchronous run's update)."""
        self.sampler.release_weights()

    @contextlib.asynccontextmanager
    async def sandboxes(self) -> AsyncIterator[SandboxPool]:
        r = self.config.rollout
        limits = SandboxLimits(cpu_seconds=r.cell_cpu_seconds, wall_seconds=r.cell_wall_seconds,
                               require_isolation=r.require_isolation)
        async with SandboxPool(r.sandbox_workers, limits) as pool:
            self.pool = pool
            try:
                yield pool
            finally:
                self.pool = None

    def rollout_config(self, recursive: bool) -> RolloutConfig:
        r = self.config.rollout
        caps = BudgetCaps(max_depth=r.max_depth or None, max_children_per_node=r.max_children or None,
                          max_concurrent_nodes=r.max_concurrent or None)
        return RolloutConfig(recursive=recursive, caps=caps, goal_variables=r.goal_variables)

    def context_limit(self) -> int:
        r, e = self.config.rollout, self.config.engine
        return min(e.max_seq_len, r.max_context or e.max_seq_len, self.model_cfg.max_position_embeddings)

    async def rollout(self, tasks: Sequence[Task], group_size: int, *, recursive: bool, temperature: float,
                      name: str, on_tree_end: Callable[[TreeResult], None] | None = None) -> list[list[TreeResult]]:
        """``group_size`` model-driven trees per task, all in flight together; ``[task][g]``."""
        if self.pool is None:
            raise RuntimeError("rollout needs the sandbox pool: use `async with runtime.sandboxes():`")
        if not tasks:
            return []
        if not self.sampler.has_weights:
            raise RuntimeError("the sampler's weights were released: call sync_sampler() first")
        r = self.config.rollout
        params = SamplingParams(max_new_tokens=r.max_new_tokens, temperature=temperature, top_k=r.top_k,
                                top_p=r.top_p)
        policy = ModelPolicy(self.sampler, self.tokenizer, self.template, None, params,
                             max_context=r.max_context or None, name=name, brief_prompt=r.brief_prompt)
        runner = RolloutRunner(policy, self.pool, self.rollout_config(recursive), on_node_end=policy.end_node)
        roots = [self.tasks.budgeted(t) for t in tasks]
        flat = await runner.run_group(roots, lambda task, g: open_episode(task), group_size, on_tree_end,
                                      max_context=self.tasks.max_context)
        return [flat[i * group_size:(i + 1) * group_size] for i in range(len(tasks))]

    async def scripted_rollout(self, tasks: Sequence[Task], *, recursive: bool, record_tokens: bool = False,
                               oracle_knobs: Mapping[str, Any] | None = None) -> list[TreeResult]:
        """One oracle tree per task (each task has its own oracle object, which serves every node of
        its tree, made with ``oracle_knobs``, or by default its family's: ``TaskSet.oracle_knobs``);
        with ``record_tokens`` the nodes carry the tokens a model would have produced."""
        import asyncio

        if self.pool is None:
            raise RuntimeError("scripted_rollout needs the sandbox pool: use `async with runtime.sandboxes():`")

        async def one(task: Task) -> TreeResult:
            knobs = self.tasks.oracle_knobs(task) if oracle_knobs is None else dict(oracle_knobs)
            policy = make_oracle(task, recursive, **knobs)
            on_end = None
            if record_tokens:
                policy = DemoPolicy(policy, self.tokenizer, self.template, None,
                                    self.context_limit(), brief_prompt=self.config.rollout.brief_prompt)
                on_end = policy.end_node
            runner = RolloutRunner(policy, self.pool, self.rollout_config(recursive), on_node_end=on_end)
            task = self.tasks.budgeted(task)
            return await runner.run_tree(open_episode(task), task.max_steps, task_id=task.task_id,
                                         max_context=self.tasks.max_context(task))

        return list(await asyncio.gather(*(one(t) for t in tasks)))
