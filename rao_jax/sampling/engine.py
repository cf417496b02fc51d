"""The sampling engine: continuous batching of many sequences over one paged KV cache.

``await engine.submit(tokens, params, seq_id=...)`` returns a ``Completion``. Requests queue up;
an engine loop admits waiting requests into free batch rows (one ragged prefill for all of them),
then runs decode chunks over every running row, so rows freed by finished requests are refilled at
the next chunk boundary. A request made with a ``seq_id`` keeps its KV pages after it completes:
a later request with the same ``seq_id`` whose tokens extend the cached ones prefills only the new
tokens (a delegation-tree node resuming with its children's results). ``fork`` shares the full
pages of a cached prefix (the G trees of one task share their prompt).

When pages run out the engine preempts (``scheduler``: the policy, host-side and model-free); a
request that could never fit is refused at submission with a clear error. ``batch`` packs the
scheduled rows into the small structs the jitted programs (``sampler``) take.

Device work runs in one worker thread, so the asyncio loop that submits requests (and serves
sandboxed tool calls) stays responsive while the model runs; with ``decode_groups`` > 1 that
thread decodes one group of rows and hands the others to as many helper threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import threading
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rao_jax.models.qwen3 import Qwen3
from rao_jax.sampling import sampler
from rao_jax.sampling.batch import DecodeGroup, decode_groups, prefill_batch
from rao_jax.sampling.kv_cache import copy_pages, pool_init
from rao_jax.sampling.logits import SamplingParams
from rao_jax.sampling.scheduler import Admission, Completion, Request, Scheduler
from rao_jax.sampling.sizes import EngineConfig

__all__ = ["Completion", "EngineConfig", "SamplingEngine"]


class SamplingEngine:
    """Continuous-batching sampler over a paged KV cache for one ``Qwen3`` model.

    The model's parameters are read at every device call, so a learner updating the same model
    in place (an optimizer step, ``nnx.update``, a checkpoint restore) is picked up by the next
    prefill / decode chunk without any weight transfer. The model's structure is split once, here
    (a graph traversal per call costs milliseconds, as much as a small device call): replacing a
    submodule or a variable object after construction is not seen; build a new engine for that.

    Versioned weights: ``swap_weights(params, version)`` installs new parameters between two
    device calls (never inside one), and every ``Completion`` reports the oldest version that
    sampled any of its tokens. Keys and values already cached stay as they were computed; the
    behaviour log-probs are those of the weights that actually sampled each token.

    ``mesh``: a sampler replica's mesh (axes ``expert``, ``tensor``) that the model's parameters
    already live on; the page pool is laid out on it (``kv_cache.kv_pool_spec``) and the device
    calls trace under it, so the Pallas kernel and the MoE experts split over its axes. No mesh:
    one device.
    """

    def __init__(self, model: Qwen3, config: EngineConfig | None = None, *, mesh=None, version: int = 0):
        config = config or EngineConfig()
        self.model = model
        self.config = config
        self.mesh = mesh
        self.version = version
        self._pending_weights: tuple[object, int] | None = None
        # The state holds the model's own Variable objects: in-place updates show through.
        self._graphdef, self._state = nnx.split(model)
        self.vocab_size = model.cfg.vocab_size
        if config.attn_impl == "pallas" and model.cfg.head_dim % 128:
            raise ValueError(f"attn_impl='pallas': the ragged paged attention kernel needs head_dim to be a multiple "
                             f"of 128, the model's is {model.cfg.head_dim}; use attn_impl='reference'")
        # Prefill rows start at multiples of this (the Pallas kernel takes rows back to back).
        self._prefill_align = 1 if config.attn_impl == "pallas" else config.prefill_block
        self.scheduler = Scheduler(config, align=self._prefill_align, copy_page=self._copy_page,
                                   resolve=_resolve)
        self.stats = self.scheduler.stats
        self._cache = pool_init(model.cfg, config.num_pages, config.page_size, jnp.dtype(config.cache_dtype), mesh)()
        self._lock = threading.Lock()  # the pending weights and the rng
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rao-sampler")
        # Decode row groups beyond the first run here, beside the executor thread.
        self._group_threads = concurrent.futures.ThreadPoolExecutor(max(1, config.decode_groups - 1),
                                                                    thread_name_prefix="rao-decode-group")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._rng = jax.random.key(config.seed)
        self._anonymous = itertools.count()

    # ------------------------------------------------------------------------------------------
    # Public API

    async def submit(self, tokens: Sequence[int], params: SamplingParams | None = None, *,
                     seq_id: Hashable | None = None) -> Completion:
        """Generates a completion of ``tokens``.

        Args:
            tokens: the whole prompt; with a ``seq_id`` already cached, usually the cached tokens
                plus an extension (only the part after the longest common prefix is prefilled).
            params: sampling settings.
            seq_id: keep this sequence's KV pages after completion under this id.
        """
        tokens = [int(t) for t in tokens]
        params = params or SamplingParams()
        self._validate(tokens, params)
        loop = asyncio.get_running_loop()
        keep = seq_id is not None
        seq = seq_id if keep else ("_anon", next(self._anonymous))
        request = Request(seq, tokens, params, keep, handle=(loop, loop.create_future()))
        self.scheduler.enqueue(request)
        self._ensure_loop()
        self._wake.set()
        try:
            return await request.handle[1]
        except asyncio.CancelledError:   # the caller gave up: the request stops and frees its row and pages
            loop.run_in_executor(self._executor, self.scheduler.abort, request.seq)
            raise

    async def abort(self, seq_id: Hashable) -> bool:
        """Stops the request on ``seq_id`` (queued or running) and frees its row and its KV pages; the
        request's ``submit`` raises ``asyncio.CancelledError``. Returns whether there was one."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.scheduler.abort, seq_id)

    async def fork(self, src: Hashable, dst: Hashable) -> None:
        """Makes ``dst`` a cached copy of ``src`` that shares its full KV pages."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.scheduler.fork, src, dst)

    async def release(self, seq_id: Hashable) -> None:
        """Frees a kept sequence's pages (no-op if it was already preempted)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.scheduler.release, seq_id)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64, temperature: float = 1.0,
                 *, top_k: int = 0, top_p: float = 1.0, stop: Sequence[Sequence[int]] = ()) -> list[Completion]:
        """Synchronous batch generation for scripts (runs its own event loop)."""
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, tuple(tuple(s) for s in stop))

        for prompt in prompts:   # refuse a bad batch before anything of it is queued
            self._validate([int(t) for t in prompt], params)

        async def run():
            return await asyncio.gather(*(self.submit(p, params) for p in prompts))

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return list(asyncio.run(run()))
        raise RuntimeError("generate() cannot run inside an event loop; await engine.submit(...) instead")

    def reseed(self, seed: int, stream: int = 0) -> None:
        """Restarts the sampling rng from ``seed`` (a trainer derives one per step, so a resumed run
        samples as the uninterrupted one would); replicas of one sampler draw from their own
        ``stream`` of that seed."""
        key = jax.random.key(seed)
        with self._lock:
            self._rng = key if stream == 0 else jax.random.fold_in(key, stream)

    def swap_weights(self, params, version: int) -> None:
        """Installs new parameters (an ``nnx.Param`` state of the model's structure, on this
        engine's devices) before the next device call; requests then record ``version``."""
        with self._lock:
            self._pending_weights = (params, version)
        if self._task is None or self._task.done():  # no engine loop running: install right away
            self._install_weights()

    def _install_weights(self) -> None:
        with self._lock:
            pending, self._pending_weights = self._pending_weights, None
        if pending is not None:
            params, version = pending
            nnx.update(self.model, params)
            self.version = version

    @property
    def model_cfg(self):
        return self.model.cfg

    def _on_mesh(self):
        """The device calls trace under the replica's mesh when it has more than one device."""
        if self.mesh is None or self.mesh.size == 1:
            return contextlib.nullcontext()
        return jax.set_mesh(self.mesh)

    def cached_length(self, seq_id: Hashable) -> int:
        return self.scheduler.cached_length(seq_id)

    # ------------------------------------------------------------------------------------------
    # Event-loop side

    def _validate(self, tokens: list[int], params: SamplingParams) -> None:
        cfg = self.config
        params.validate(vocab_size=self.vocab_size, max_top_k=cfg.max_top_k, max_stops=cfg.max_stops,
                        max_stop_len=cfg.max_stop_len)
        if not tokens:
            raise ValueError("the prompt is empty; at least one token is needed")
        bad = [t for t in tokens if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt holds token ids outside the vocabulary [0, {self.vocab_size}): {bad[:5]}")
        if len(tokens) + params.max_new_tokens > cfg.max_seq_len:
            raise ValueError(f"prompt of {len(tokens)} tokens + max_new_tokens {params.max_new_tokens} exceeds "
                             f"max_seq_len {cfg.max_seq_len}; shorten the prompt or raise EngineConfig.max_seq_len")

    def _ensure_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.scheduler.has_work():
                self._wake.clear()
                if not self.scheduler.has_work():
                    await self._wake.wait()
                continue
            try:
                await loop.run_in_executor(self._executor, self._step)
            except Exception as e:  # a bug or a device error: fail every request rather than hang
                self.scheduler.fail_all(e)

    # ------------------------------------------------------------------------------------------
    # Device side (the executor thread)

    def _step(self) -> None:
        self._install_weights()
        with self._on_mesh():
            admitted = self.scheduler.admit()
            if admitted:
                self._prefill(admitted)
            if self.scheduler.has_decode_work():
                self._decode()

    def _next_key(self) -> jax.Array:
        with self._lock:
            self._rng, key = jax.random.split(self._rng)
        return key

    def _prefill(self, admitted: list[Admission]) -> None:
        cfg = self.config
        batch, candidates = prefill_batch(admitted, cfg, self.scheduler.alloc, align=self._prefill_align,
                                          vocab_size=self.vocab_size)
        self._cache, next_tokens, logprobs = sampler.prefill(
            self._graphdef, self._state, self._cache, batch, self._next_key(), attn_impl=cfg.attn_impl,
            candidates=candidates, block=self._prefill_align)
        self.stats["prefill_calls"] += 1
        self.stats["prefill_tokens"] += int(sum(len(a.request.tokens) - a.start for a in admitted))
        self.scheduler.record_prefill(admitted, np.asarray(next_tokens), np.asarray(logprobs), self.version)

    def _decode(self) -> None:
        cfg = self.config
        running = self.scheduler.reserve_decode()
        if all(r is None for r in running):
            return
        groups = decode_groups(running, cfg, self.scheduler.alloc, vocab_size=self.vocab_size)
        key = self._next_key()
        keys = [key] if len(groups) == 1 else list(jax.random.split(key, len(groups)))
        if cfg.attn_impl == "pallas":  # one group: the kernel writes the pages at every step
            (group,) = groups
            self._cache, _, *out = sampler.decode(self._graphdef, self._state, self._cache, group.batch, keys[0],
                                                  n_steps=cfg.decode_steps, attn_impl=cfg.attn_impl,
                                                  candidates=group.candidates)
            results = [tuple(map(np.asarray, out))]
        else:
            results = self._decode_concurrently(groups, keys)
        self.stats["decode_chunks"] += 1
        self.stats["decode_calls"] += len(groups)
        for group, (tokens, logprobs, count, reason) in zip(groups, results, strict=True):
            self.stats["decode_row_slots"] += len(group.rows)
            self.scheduler.record_decode(group.rows, tokens, logprobs, count, [_FINISHED.get(int(r)) for r in reason],
                                         self.version)

    def _decode_concurrently(self, groups: list[DecodeGroup], keys: list[jax.Array]) -> list[tuple[np.ndarray, ...]]:
        """The reference path: each group decodes in its own call, from its own thread, reading the
        pages; then one call writes every group's new keys / values. Returns, per group, its
        tokens, log-probs, counts and finish reasons."""
        steps = self.config.decode_steps

        def run(i: int):
            with self._on_mesh():  # the helper threads trace under the replica's mesh too
                new_kv, *out = sampler.decode_reads_pages(
                    self._graphdef, self._state, self._cache, groups[i].batch, keys[i], n_steps=steps,
                    attn_impl=self.config.attn_impl, candidates=groups[i].candidates)
                return new_kv, tuple(map(np.asarray, out))

        later = [self._group_threads.submit(run, i) for i in range(1, len(groups))]
        ran = [run(0)] + [f.result() for f in later]
        results = [out for _, out in ran]
        where = [g.destinations(out[2], steps, self.config.page_size) for g, out in zip(groups, results, strict=True)]
        page, offset = (np.concatenate(parts) for parts in zip(*where, strict=True))
        self._cache = sampler.write_decoded(self._cache, tuple(new_kv for new_kv, _ in ran), page, offset)
        return results

    def _copy_page(self, src: int, dst: int) -> None:
        self._cache = copy_pages(self._cache, jnp.asarray([src], jnp.int32), jnp.asarray([dst], jnp.int32))


_FINISHED = {sampler.STOPPED: "stop", sampler.LENGTH: "length"}  # decode finish reasons; RUNNING: None


def _resolve(request: Request, outcome) -> None:
    """Delivers a request's outcome to its future, on the loop that awaits it."""
    loop, future = request.handle
    if outcome is None:
        loop.call_soon_threadsafe(_cancel, future)
    elif isinstance(outcome, BaseException):
        loop.call_soon_threadsafe(_set_exception, future, outcome)
    else:
        loop.call_soon_threadsafe(_set_result, future, outcome)


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _cancel(future: asyncio.Future) -> None:
    if not future.done():
        future.cancel()


def _set_exception(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
