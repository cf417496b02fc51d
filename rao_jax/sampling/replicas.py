"""This process's sampler replicas, behind the interface of one ``SamplingEngine``.

A replica is a ``SamplingEngine`` on a few devices of this host (``rao_jax.parallel.mesh``): its
own weights in the sampling dtype, laid out by SAMPLE_RULES, and its own KV page pool. Decoding
never leaves the replica. ``SamplerReplicas`` routes each request to a replica by delegation tree
(every node of a tree on one replica, trees spread round-robin as they start), so a policy sees one
engine; replicas decode concurrently, each from its own thread.

Weights. ``sync(params, version)`` casts and reshards the learner's parameters into every replica
of every process in one jitted call (``rao_jax.layout.sampler_sync``; all processes call it at the
same point of the run, as for any collective), then each replica installs its share between two
of its own device calls (``SamplingEngine.swap_weights``) and tags what it samples from then on
with ``version``. On a single device with the learner's dtype the replica reads the learner's
arrays themselves (no copy; an update replaces those arrays, so the replica still sees the old
ones until the next sync). ``release_weights`` frees the copies while no rollout runs, so a
synchronous run does not hold them through the learner's update.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rao_jax.layout import Layout, replica_view, sampler_init
from rao_jax.models.config import ModelConfig
from rao_jax.sampling.engine import Completion, EngineConfig, SamplingEngine
from rao_jax.sampling.logits import SamplingParams


class SamplerReplicas:
    """The sampler replicas this process drives (see the module docstring).

    Args:
        layout: the run's meshes; this process drives ``layout.local_replicas()``.
        model_cfg: the policy's shape.
        engine_config: each replica's static sizes (rows, page pool, ...).
        weights_dtype: the replicas' weight dtype (bf16 on pods).
        compute_dtype: the dtype the sampler computes in.
        learner_param_shardings: how the learner's ``nnx.Param`` state is laid out.
        learner_dtype: the learner's parameter dtype (equal dtypes on one device share arrays).
    """

    def __init__(self, layout: Layout, model_cfg: ModelConfig, engine_config: EngineConfig, *, weights_dtype,
                 compute_dtype, learner_param_shardings: nnx.State, learner_dtype):
        self.layout = layout
        self.config = engine_config
        self.model_cfg = model_cfg
        self.vocab_size = model_cfg.vocab_size
        self.replica_ids = layout.local_replicas()
        self.weights_dtype = jnp.dtype(weights_dtype)
        init = sampler_init(model_cfg, layout, weights_dtype=weights_dtype, compute_dtype=compute_dtype,
                            learner_param_shardings=learner_param_shardings, learner_dtype=learner_dtype)
        self._graphdef, self.shardings, self._sync = init.graphdef, init.shardings, init.sync
        self.shares_learner_arrays = self._sync is None
        self._weights = None          # the sampler arrays this process holds (global across replicas)
        self.engines: list[SamplingEngine] = []
        self.version: int | None = None
        self._seq_engine: dict[Hashable, int] = {}
        self._tree_engine: dict[Hashable, int] = {}
        self._tree_live: collections.Counter = collections.Counter()
        self._next = 0

    # ---- weights ---------------------------------------------------------------------------

    def sync(self, params: nnx.State, version: int) -> float:
        """Installs the learner's ``params`` (its ``nnx.Param`` state) in every replica as ``version``;
        returns the seconds the reshard took (waited for). A collective: every process calls it."""
        start = time.perf_counter()
        if self.shares_learner_arrays:   # new Variables around the learner's arrays, not its Variables
            weights = jax.tree.map(lambda x: x, params)
        else:
            weights = self._sync(params)
            jax.block_until_ready(weights)
        self._weights = weights
        for i, replica in enumerate(self.replica_ids):
            view = weights if self.shares_learner_arrays else replica_view(weights, self.layout, replica)
            if i < len(self.engines):
                self.engines[i].swap_weights(view, version)
            else:
                model = nnx.merge(self._graphdef, view)
                self.engines.append(SamplingEngine(model, self.config, mesh=self.layout.replica_mesh(replica),
                                                   version=version))
        self.version = version
        return time.perf_counter() - start

    @property
    def has_weights(self) -> bool:
        return self._weights is not None

    def release_weights(self) -> None:
        """Frees the replicas' weight copies (no-op when they are the learner's own arrays); the
        next ``sync`` brings them back. Only while no request is in flight."""
        if self._weights is None or self.shares_learner_arrays:
            return
        for x in jax.tree.leaves(self._weights):
            x.delete()
        self._weights = None

    def weights(self, replica_index: int = 0) -> nnx.State:
        """The ``nnx.Param`` state a local replica samples with (after its pending swap)."""
        engine = self.engines[replica_index]
        engine._install_weights()
        return nnx.state(engine.model, nnx.Param)

    def reseed(self, seed: int) -> None:
        """Each replica restarts its rng from ``seed`` on its own stream (its replica index)."""
        for engine, replica in zip(self.engines, self.replica_ids, strict=True):
            engine.reseed(seed, stream=replica)

    # ---- the engine interface ----------------------------------------------------------------

    async def submit(self, tokens: Sequence[int], params: SamplingParams | None = None, *,
                     seq_id: Hashable | None = None) -> Completion:
        engine = self._engine_for(seq_id)
        return await self.engines[engine].submit(tokens, params, seq_id=seq_id)

    async def fork(self, src: Hashable, dst: Hashable) -> None:
        engine = self._seq_engine[src]
        self._place(dst, engine)
        await self.engines[engine].fork(src, dst)

    async def release(self, seq_id: Hashable) -> None:
        engine = self._seq_engine.get(seq_id)
        if engine is None:
            return
        await self.engines[engine].release(seq_id)
        del self._seq_engine[seq_id]
        tree = _tree_of(seq_id)
        self._tree_live[tree] -= 1
        if self._tree_live[tree] <= 0:
            del self._tree_live[tree]
            self._tree_engine.pop(tree, None)

    @property
    def stats(self) -> collections.Counter:
        total: collections.Counter = collections.Counter()
        for engine in self.engines:
            total.update(engine.stats)
        return total

    def _engine_for(self, seq_id: Hashable | None) -> int:
        if not self.engines:
            raise RuntimeError("the sampler has no weights yet: call sync() first")
        if seq_id is None:  # an anonymous request: the next replica in turn
            self._next += 1
            return self._next % len(self.engines)
        engine = self._seq_engine.get(seq_id)
        if engine is None:
            tree = _tree_of(seq_id)
            engine = self._tree_engine.get(tree)
            if engine is None:
                engine = self._tree_engine[tree] = self._next % len(self.engines)
                self._next += 1
            self._place(seq_id, engine)
        return engine

    def _place(self, seq_id: Hashable, engine: int) -> None:
        self._seq_engine[seq_id] = engine
        tree = _tree_of(seq_id)
        self._tree_engine.setdefault(tree, engine)
        self._tree_live[tree] += 1


def _tree_of(seq_id: Hashable) -> Hashable:
    """The tree part of a node's sequence id, ``(..., tree_id, node_id)``: every node of a tree
    goes to one replica."""
    return seq_id[:-1] if isinstance(seq_id, tuple) and len(seq_id) >= 2 else seq_id
