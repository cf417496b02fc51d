"""The sampling engine: continuous batching of many sequences over one paged KV cache.

``await engine.submit(tokens, params, seq_id=...)`` returns a ``Completion``. Requests queue up;
an engine loop admits waiting requests into free batch rows (one ragged prefill for all of them),
then runs decode chunks over every running row, so rows freed by finished requests are refilled at
the next chunk boundary. A request made with a ``seq_id`` keeps its KV pages after it completes:
a later request with the same ``seq_id`` whose tokens extend the cached ones prefills only the new
tokens (a delegation-tree node resuming with its children's results). ``fork`` shares the full
pages of a cached prefix (the G trees of one task share their prompt).

When pages run out the engine preempts: first kept sequences that are not running (least recently
used first; their prefix is recomputed when they are next extended), then the most recently
admitted running requests, which go back to the queue and later resume exactly where they were.
A request that could never fit is refused at submission with a clear error.

Device work runs in one worker thread, so the asyncio loop that submits requests (and serves
sandboxed tool calls) stays responsive while the model runs; with ``decode_groups`` > 1 that
thread decodes one group of rows and hands the others to as many helper threads.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import threading
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rao_jax.models.qwen3 import Qwen3
from rao_jax.sampling import sampler
from rao_jax.sampling.kv_cache import copy_pages, pool_init
from rao_jax.sampling.logits import NO_TOKEN, NOT_YET, SamplingParams
from rao_jax.sampling.page_allocator import NULL_PAGE, PageAllocator, PoolExhausted
from rao_jax.sampling.paged_attention import IMPLS


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Static sizes of the engine (each distinct shape is one compilation).

    Args:
        max_rows: sequences decoded together in one batch.
        page_size: tokens per KV page.
        num_pages: pages in the pool, including the reserved null page.
        max_seq_len: the longest sequence (prompt + generated); a multiple of page_size.
        decode_steps: decode steps per device call between scheduling decisions.
        decode_groups: decode calls that may run at once, each over ``max_rows // decode_groups``
            rows of similar length, from one thread each (reference attention only), each
            attending only as wide as its own longest row. On a CPU, XLA runs one decode call's
            small operations on one core: 4 groups keep 2 cores busy and read fewer padded
            keys (``benchmarks/sampler_throughput.py``). Keep 1 on an accelerator.
        max_prefill_tokens: the most new tokens one prefill call admits.
        min_prefill_bucket: the smallest flat-token bucket of prefill calls (a power of two).
        prefill_buckets_per_octave: 1, 2 or 4 bucket sizes per power of two, which larger calls pad
            to: 2 gives 1x and 1.5x a power of two; 4 adds 1.25x and 1.75x (less padding, up to
            twice the prefill compilations).
        prefill_block: queries per block of the reference prefill attention (a power of two, at
            most half of ``min_prefill_bucket``): each admitted row's new tokens start a new block,
            and each block attends over its own row only, up to its last position.
        max_top_k: static bound on top-k (the nucleus of top-p is found over the whole vocabulary).
        max_stops / max_stop_len: stop sequences per request, and their longest length.
        attn_impl: "reference" (pure jnp, every backend) or "pallas" (TPU kernel).
        cache_dtype: dtype of the KV pages.
        seed: sampling seed.
    """

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
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"EngineConfig: {message}")

        need(self.attn_impl in IMPLS, f"attn_impl must be one of {IMPLS}, got {self.attn_impl!r}")
        need(self.max_rows >= 1 and self.decode_steps >= 1, "max_rows and decode_steps must be >= 1")
        need(self.decode_groups >= 1 and self.max_rows % self.decode_groups == 0,
             f"decode_groups ({self.decode_groups}) must be >= 1 and divide max_rows ({self.max_rows})")
        need(self.decode_groups == 1 or self.attn_impl == "reference",
             "decode_groups > 1 needs attn_impl='reference' (the Pallas path writes the pages while it decodes)")
        need(self.page_size >= 1 and self.max_seq_len % self.page_size == 0,
             f"max_seq_len ({self.max_seq_len}) must be a positive multiple of page_size ({self.page_size})")
        need(_is_pow2(self.min_prefill_bucket), "min_prefill_bucket must be a power of two")
        need(self.prefill_buckets_per_octave in (1, 2, 4),
             f"prefill_buckets_per_octave must be 1, 2 or 4, got {self.prefill_buckets_per_octave}")
        need(_is_pow2(self.prefill_block) and 2 * self.prefill_block <= self.min_prefill_bucket,
             f"prefill_block ({self.prefill_block}) must be a power of two and at most half of "
             f"min_prefill_bucket ({self.min_prefill_bucket})")
        need(self.max_prefill_tokens >= self.max_seq_len,
             f"max_prefill_tokens ({self.max_prefill_tokens}) must be >= max_seq_len ({self.max_seq_len})")
        need(self.num_pages - 1 >= self.pages_per_seq,
             f"num_pages ({self.num_pages}) leaves fewer than the {self.pages_per_seq} pages one "
             f"max_seq_len sequence needs (page 0 is reserved)")

    @property
    def pages_per_seq(self) -> int:
        return self.max_seq_len // self.page_size


@dataclasses.dataclass(frozen=True)
class Completion:
    tokens: list[int]
    logprobs: list[float]      # behaviour log-probs: under the distribution each token was drawn from
    finish_reason: str         # "stop" | "length" | "prefill" (max_new_tokens=0)
    prompt_tokens: int
    reused_tokens: int         # prompt tokens whose K/V were already cached (not recomputed)
    policy_version: int = 0    # the oldest weights version that sampled any of ``tokens``


@dataclasses.dataclass
class _Request:
    seq: Hashable
    prompt: list[int]
    params: SamplingParams
    keep: bool
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    generated: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    reused: int = -1           # set at first admission
    version: int | None = None  # the oldest weights version that sampled one of its tokens
    pos: int = 0               # position of generated[-1] (not yet in the cache)
    admitted_at: int = -1      # admission counter: larger is newer (preemption takes the newest)

    @property
    def remaining(self) -> int:
        return self.params.max_new_tokens - len(self.generated)

    def saw_version(self, version: int) -> None:
        self.version = version if self.version is None else min(self.version, version)

    def reach(self, steps: int) -> int:
        """The sequence's length once a decode chunk of ``steps`` steps has run."""
        return self.pos + min(steps, self.remaining)


@dataclasses.dataclass
class _DecodeGroup:
    """The host-side inputs of one decode call: ``rows[i]`` is the batch row in slot ``i`` (None:
    idle padding)."""

    rows: list[int | None]
    last: np.ndarray
    pos: np.ndarray
    active: np.ndarray
    remaining: np.ndarray
    history: np.ndarray
    stops: np.ndarray
    page_table: np.ndarray
    sampling: tuple[np.ndarray, np.ndarray, np.ndarray]  # temperature, top_k, top_p
    candidates: int

    def device_args(self, key: jax.Array) -> tuple:
        """The positional arguments of ``sampler.decode`` after the cache (host arrays: the jitted
        call transfers them itself, cheaper than staging each through ``jnp.asarray``)."""
        return (self.last, self.pos, self.active, self.remaining, self.history, self.stops, self.page_table, key,
                *self.sampling)

    def destinations(self, count: np.ndarray, n_steps: int, page_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(page, offset) of each new token of the chunk, in (slot, step) order: the slot's page for
        its position, or the null page for the steps it did not take (``count`` per slot)."""
        steps = np.arange(n_steps)
        at = self.pos[:, None] + steps[None, :]
        column = np.minimum(at // page_size, self.page_table.shape[1] - 1)
        page = np.where(steps[None, :] < count[:, None], np.take_along_axis(self.page_table, column, axis=1), NULL_PAGE)
        return page.reshape(-1), (at % page_size).reshape(-1)


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
        self._alloc = PageAllocator(config.num_pages, config.page_size, config.pages_per_seq)
        self._cache = pool_init(model.cfg, config.num_pages, config.page_size, jnp.dtype(config.cache_dtype), mesh)()
        self._cached: dict[Hashable, list[int]] = {}  # tokens whose K/V are in the cache, per sequence
        self._idle: collections.OrderedDict[Hashable, None] = collections.OrderedDict()  # kept, not running
        self._waiting: collections.deque[_Request] = collections.deque()
        self._rows: list[_Request | None] = [None] * config.max_rows
        self._busy: set[Hashable] = set()  # sequences with a request queued or running
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rao-sampler")
        # Decode row groups beyond the first run here, beside the executor thread.
        self._group_threads = concurrent.futures.ThreadPoolExecutor(max(1, config.decode_groups - 1),
                                                                    thread_name_prefix="rao-decode-group")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._rng = jax.random.key(config.seed)
        self._anonymous = itertools.count()
        self._admissions = itertools.count()
        self.stats = collections.Counter()

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
        with self._lock:
            if seq in self._busy:
                raise ValueError(f"sequence {seq_id!r} already has a request in flight")
            self._busy.add(seq)
            request = _Request(seq, tokens, params, keep, loop.create_future(), loop)
            self._waiting.append(request)
        self._ensure_loop()
        self._wake.set()
        try:
            return await request.future
        except asyncio.CancelledError:   # the caller gave up: the request stops and frees its row and pages
            loop.run_in_executor(self._executor, self._abort, request.seq)
            raise

    async def abort(self, seq_id: Hashable) -> bool:
        """Stops the request on ``seq_id`` (queued or running) and frees its row and its KV pages; the
        request's ``submit`` raises ``asyncio.CancelledError``. Returns whether there was one."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._abort, seq_id)

    async def fork(self, src: Hashable, dst: Hashable) -> None:
        """Makes ``dst`` a cached copy of ``src`` that shares its full KV pages."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._fork, src, dst)

    async def release(self, seq_id: Hashable) -> None:
        """Frees a kept sequence's pages (no-op if it was already preempted)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._release, seq_id)

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
        return len(self._cached.get(seq_id, ()))

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
            if not self._has_work():
                self._wake.clear()
                if not self._has_work():
                    await self._wake.wait()
                continue
            try:
                await loop.run_in_executor(self._executor, self._step)
            except Exception as e:  # a bug or a device error: fail every request rather than hang
                self._fail_all(e)

    def _has_work(self) -> bool:
        with self._lock:
            return bool(self._waiting) or any(r is not None for r in self._rows)

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            requests = list(self._waiting) + [r for r in self._rows if r is not None]
            self._waiting.clear()
            self._rows = [None] * self.config.max_rows
        for request in requests:
            self._busy.discard(request.seq)
            if request.seq in self._alloc:
                self._drop(request.seq)
            request.loop.call_soon_threadsafe(_set_exception, request.future, error)

    # ------------------------------------------------------------------------------------------
    # Device side (the executor thread)

    def _step(self) -> None:
        self._install_weights()
        with self._on_mesh():
            admitted = self._admit()
            if admitted:
                self._prefill(admitted)
            if any(r is not None and r.remaining > 0 for r in self._rows):
                self._decode()

    def _admit(self) -> list[tuple[int, _Request, int]]:
        """Moves waiting requests into free rows; returns (row, request, first new token index)."""
        admitted: list[tuple[int, _Request, int]] = []
        budget = self.config.max_prefill_tokens
        while True:
            with self._lock:
                if not self._waiting or None not in self._rows:
                    break
                request = self._waiting[0]
            full = request.prompt + request.generated
            # The prefill budget is checked before any page is reserved: a request that waits for the
            # next call holds no pages (nothing could preempt them while it waits).
            new = self._aligned(len(full) - self._reusable(request.seq, full))
            if admitted and new > budget:
                break
            start = self._prepare(request.seq, full)
            if start is None:
                break  # no pages yet: running requests will free some
            new = self._aligned(len(full) - start)
            budget -= new
            if request.reused < 0:
                request.reused = start
            request.admitted_at = next(self._admissions)
            with self._lock:
                self._waiting.popleft()
                row = self._rows.index(None)
                self._rows[row] = request
            self._idle.pop(request.seq, None)
            admitted.append((row, request, start))
        return admitted

    def _reusable(self, seq: Hashable, tokens: list[int]) -> int:
        """How many of ``tokens`` ``seq``'s cache already holds (at least the last is recomputed)."""
        cached = self._cached.get(seq) if seq in self._alloc else None
        return 0 if cached is None else min(_common_prefix(cached, tokens), len(tokens) - 1)

    def _prepare(self, seq: Hashable, tokens: list[int]) -> int | None:
        """Gets ``seq``'s cache ready to take ``tokens``; returns how many are already cached.

        At least the last token is always recomputed (its logits choose the next token).
        """
        alloc = self._alloc
        cached = self._cached.get(seq) if seq in alloc else None
        if cached is None:
            if seq in alloc:
                self._drop(seq)
            alloc.create(seq)
            self._cached[seq] = []
            cached = []
        common = min(_common_prefix(cached, tokens), len(tokens) - 1)
        while True:
            try:
                if common < len(cached):
                    self._copy(alloc.truncate(seq, common))
                    cached = self._cached[seq] = cached[:common]
                alloc.reserve(seq, len(tokens))
                return common
            except PoolExhausted:
                if not self._preempt_idle(exclude=seq):
                    return None

    def _aligned(self, n: int) -> int:
        """Slots ``n`` new tokens of one row take in a prefill buffer (rows start at block bounds)."""
        return -(-n // self._prefill_align) * self._prefill_align

    def _prefill(self, admitted: list[tuple[int, _Request, int]]) -> None:
        cfg = self.config
        rows = cfg.max_rows
        flat_tokens, flat_pos, flat_row, flat_valid = [], [], [], []
        last_index = np.zeros(rows, np.int32)
        kv_lens = np.zeros(rows, np.int32)
        new_tokens = np.zeros(rows, np.int32)
        order = sorted(admitted, key=lambda item: item[0])  # the Pallas kernel wants rows in order
        for row, request, start in order:
            full = request.prompt + request.generated
            n = len(full) - start
            pad = self._aligned(n) - n  # padding of the row's last block: invalid, same row
            flat_tokens += full[start:] + [0] * pad
            flat_pos += list(range(start, len(full))) + [len(full) - 1] * pad
            flat_row += [row] * (n + pad)
            flat_valid += [True] * n + [False] * pad
            last_index[row] = len(flat_tokens) - pad - 1
            kv_lens[row] = len(full)
            new_tokens[row] = n
        cu_q_lens = np.concatenate([[0], np.cumsum(new_tokens)]).astype(np.int32)
        n = len(flat_tokens)
        bucket = max(cfg.min_prefill_bucket, _bucket(n, cfg.prefill_buckets_per_octave))
        pad = bucket - n
        seq_of_row = {row: r.seq for row, r, _ in order}
        # The full width: the prefill attention reads each block's pages only up to its position
        # (and the Pallas kernel up to kv_lens), so a narrower table would only add compilations.
        page_table = self._alloc.page_table([seq_of_row.get(r) for r in range(rows)])
        params = [None] * rows
        for row, request, _ in order:
            params[row] = request.params
        temperature, top_k, top_p, candidates = self._sampling_arrays(params)
        self._rng, key = jax.random.split(self._rng)
        self._cache, next_tokens, logprobs = sampler.prefill(
            self._graphdef, self._state, self._cache,
            np.array(flat_tokens + [0] * pad, np.int32), np.array(flat_pos + [0] * pad, np.int32),
            np.array(flat_row + [0] * pad, np.int32), np.array(flat_valid + [False] * pad), page_table, last_index,
            kv_lens, cu_q_lens, np.array([rows], np.int32), key,
            temperature, top_k, top_p, attn_impl=cfg.attn_impl, candidates=candidates, block=self._prefill_align)
        next_tokens, logprobs = np.asarray(next_tokens), np.asarray(logprobs)
        self.stats["prefill_calls"] += 1
        self.stats["prefill_tokens"] += int(new_tokens.sum())
        for row, request, _ in order:
            full = request.prompt + request.generated
            self._alloc.set_length(request.seq, len(full))
            self._cached[request.seq] = full
            if request.params.max_new_tokens == 0:
                self._finish(row, "prefill")
                continue
            request.generated.append(int(next_tokens[row]))
            request.saw_version(self.version)
            request.logprobs.append(float(logprobs[row]))
            request.pos = len(full)
            self._maybe_finish(row)

    def _decode(self) -> None:
        cfg = self.config
        steps = cfg.decode_steps
        for row in sorted(range(cfg.max_rows), key=lambda r: self._admission_age(r)):
            request = self._rows[row]
            if request is None:
                continue
            while True:
                try:
                    self._alloc.reserve(request.seq, request.reach(steps))
                    break
                except PoolExhausted as err:
                    if not (self._preempt_idle(exclude=request.seq) or self._preempt_running(keep_row=row)):
                        self._fail(row, err)   # this request alone: the others go on
                        break
        active_rows = [r for r in range(cfg.max_rows) if self._rows[r] is not None]
        if not active_rows:
            return
        groups = self._decode_groups(active_rows)
        self._rng, key = jax.random.split(self._rng)
        keys = [key] if len(groups) == 1 else list(jax.random.split(key, len(groups)))
        if cfg.attn_impl == "pallas":  # one group: the kernel writes the pages at every step
            (group,) = groups
            self._cache, _, *out = sampler.decode(self._graphdef, self._state, self._cache,
                                                  *group.device_args(keys[0]), n_steps=steps, attn_impl=cfg.attn_impl,
                                                  candidates=group.candidates)
            results = [tuple(map(np.asarray, out))]
        else:
            results = self._decode_concurrently(groups, keys)
        self.stats["decode_chunks"] += 1
        self.stats["decode_calls"] += len(groups)
        for group, (tokens, logprobs, count, reason) in zip(groups, results, strict=True):
            self.stats["decode_row_slots"] += len(group.rows)
            for i, r in enumerate(group.rows):
                if r is None:
                    continue
                request = self._rows[r]
                n = int(count[i])
                request.generated += tokens[i, :n].tolist()
                if n:
                    request.saw_version(self.version)
                request.logprobs += logprobs[i, :n].tolist()
                request.pos += n
                self.stats["decode_active_rows"] += 1
                self.stats["decode_tokens"] += n
                full = request.prompt + request.generated
                self._alloc.set_length(request.seq, request.pos)
                self._cached[request.seq] = full[: request.pos]
                if reason[i] != sampler.RUNNING:
                    self._finish(r, "stop" if reason[i] == sampler.STOPPED else "length")

    def _decode_concurrently(self, groups: list[_DecodeGroup], keys: list[jax.Array]) -> list[tuple[np.ndarray, ...]]:
        """The reference path: each group decodes in its own call, from its own thread, reading the
        pages; then one call writes every group's new keys / values. Returns, per group, its
        tokens, log-probs, counts and finish reasons."""
        steps = self.config.decode_steps

        def run(i: int):
            with self._on_mesh():  # the helper threads trace under the replica's mesh too
                return decode_group(i)

        def decode_group(i: int):
            group = groups[i]
            new_kv, *out = sampler.decode_reads_pages(
                self._graphdef, self._state, self._cache, *group.device_args(keys[i]), n_steps=steps,
                attn_impl=self.config.attn_impl, candidates=group.candidates)
            return new_kv, tuple(map(np.asarray, out))

        later = [self._group_threads.submit(run, i) for i in range(1, len(groups))]
        ran = [run(0)] + [f.result() for f in later]
        results = [out for _, out in ran]
        where = [g.destinations(out[2], steps, self.config.page_size) for g, out in zip(groups, results, strict=True)]
        page, offset = (np.concatenate(parts) for parts in zip(*where, strict=True))
        self._cache = sampler.write_decoded(self._cache, tuple(new_kv for new_kv, _ in ran), page, offset)
        return results

    def _decode_groups(self, active_rows: list[int]) -> list[_DecodeGroup]:
        """The row groups of one decode chunk, each one device call.

        With ``decode_groups`` 1: every batch row, in row order (None: an idle row). With more: the running rows sorted
        by the length they reach in this chunk and cut into groups of ``max_rows // decode_groups``
        (only as many as the running rows fill; the last one padded with idle rows), so that each
        group's context is only as wide as its own longest row.
        """
        cfg, steps = self.config, self.config.decode_steps
        size = cfg.max_rows // cfg.decode_groups
        if cfg.decode_groups == 1:
            slices: list[list[int | None]] = [[r if r in active_rows else None for r in range(cfg.max_rows)]]
        else:
            order = sorted(active_rows, key=lambda r: self._rows[r].reach(steps))
            slices = [order[i:i + size] for i in range(0, len(order), size)]
            slices[-1] += [None] * (size - len(slices[-1]))
        return [self._decode_group(rows) for rows in slices]

    def _decode_group(self, rows: list[int | None]) -> _DecodeGroup:
        cfg = self.config
        requests = [None if r is None else self._rows[r] for r in rows]
        live = [q for q in requests if q is not None]
        history = np.full((len(rows), cfg.max_stop_len), NOT_YET, np.int32)
        stops = np.full((len(rows), cfg.max_stops, cfg.max_stop_len), NO_TOKEN, np.int32)
        for i, request in enumerate(requests):
            if request is None:
                continue
            tail = request.generated[-cfg.max_stop_len:]
            history[i, cfg.max_stop_len - len(tail):] = tail
            for j, stop in enumerate(request.params.stop):
                stops[i, j, cfg.max_stop_len - len(stop):] = stop
        longest = max(q.reach(cfg.decode_steps) for q in live)
        temperature, top_k, top_p, candidates = self._sampling_arrays([q.params if q else None for q in requests])
        return _DecodeGroup(
            rows=rows, last=np.array([q.generated[-1] if q else 0 for q in requests], np.int32),
            pos=np.array([q.pos if q else 0 for q in requests], np.int32),
            active=np.array([q is not None for q in requests]),
            remaining=np.array([q.remaining if q else 0 for q in requests], np.int32),
            history=history, stops=stops,
            page_table=self._page_table([q.seq if q else None for q in requests], longest),
            sampling=(temperature, top_k, top_p), candidates=candidates)

    def _maybe_finish(self, row: int) -> None:
        request = self._rows[row]
        if any(_ends_with(request.generated, s) for s in request.params.stop):
            self._finish(row, "stop")
        elif request.remaining <= 0:
            self._finish(row, "length")

    def _finish(self, row: int, reason: str) -> None:
        with self._lock:
            request = self._rows[row]
            self._rows[row] = None
            self._busy.discard(request.seq)
        if request.keep:
            self._idle[request.seq] = None
            self._idle.move_to_end(request.seq)
        else:
            self._drop(request.seq)
        completion = Completion(tokens=list(request.generated), logprobs=list(request.logprobs),
                                finish_reason=reason, prompt_tokens=len(request.prompt),
                                reused_tokens=max(request.reused, 0),
                                policy_version=self.version if request.version is None else request.version)
        request.loop.call_soon_threadsafe(_set_result, request.future, completion)

    def _fail(self, row: int, error: Exception) -> None:
        """Ends the request in ``row`` with ``error``, freeing its row and pages."""
        with self._lock:
            request, self._rows[row] = self._rows[row], None
            self._busy.discard(request.seq)
        self._idle.pop(request.seq, None)
        self._drop(request.seq)
        request.loop.call_soon_threadsafe(_set_exception, request.future, error)

    def _abort(self, seq: Hashable) -> bool:
        """Drops the request on ``seq`` wherever it is, with its row and pages (executor thread)."""
        with self._lock:
            request = next((r for r in self._waiting if r.seq == seq), None)
            if request is not None:
                self._waiting.remove(request)
            else:
                row = next((i for i, r in enumerate(self._rows) if r is not None and r.seq == seq), None)
                if row is None:
                    return False
                request, self._rows[row] = self._rows[row], None
            self._busy.discard(seq)
        self._idle.pop(seq, None)
        if seq in self._alloc:
            self._drop(seq)
        request.loop.call_soon_threadsafe(_cancel, request.future)
        self.stats["aborted"] += 1
        return True

    def _preempt_idle(self, exclude: Hashable) -> bool:
        for seq in self._idle:
            if seq != exclude:
                del self._idle[seq]
                self._drop(seq)
                self.stats["preempted_idle"] += 1
                return True
        return False

    def _preempt_running(self, keep_row: int) -> bool:
        """Sends the most recently admitted running request (other than ``keep_row``) back to the queue."""
        candidates = [r for r in range(self.config.max_rows) if self._rows[r] is not None and r != keep_row]
        if not candidates:
            return False
        row = max(candidates, key=self._admission_age)
        with self._lock:
            request = self._rows[row]
            self._rows[row] = None
            self._waiting.appendleft(request)
        self._drop(request.seq)
        self.stats["preempted_running"] += 1
        return True

    def _admission_age(self, row: int) -> int:
        request = self._rows[row]
        return -1 if request is None else request.admitted_at

    def _drop(self, seq: Hashable) -> None:
        self._alloc.release(seq)
        self._cached.pop(seq, None)

    def _fork(self, src: Hashable, dst: Hashable) -> None:
        if src not in self._alloc or src in self._busy:
            raise ValueError(f"cannot fork {src!r}: it is not a cached, idle sequence")
        if dst in self._alloc or dst in self._busy:
            raise ValueError(f"cannot fork into {dst!r}: that sequence already exists")
        while True:
            try:
                self._copy(self._alloc.fork(src, dst))
                break
            except PoolExhausted:
                if not self._preempt_idle(exclude=src):
                    raise
        self._cached[dst] = list(self._cached[src])
        self._idle[dst] = None

    def _release(self, seq: Hashable) -> None:
        if seq in self._busy:
            raise ValueError(f"cannot release {seq!r} while a request on it is in flight")
        self._idle.pop(seq, None)
        if seq in self._alloc:
            self._drop(seq)

    def _copy(self, pair: tuple[int, int] | None) -> None:
        if pair is not None:
            src, dst = pair
            self._cache = copy_pages(self._cache, jnp.asarray([src], jnp.int32), jnp.asarray([dst], jnp.int32))

    def _page_table(self, seqs: Sequence[Hashable | None], longest: int) -> np.ndarray:
        """Decode page table of ``seqs`` (one per batch row; None: idle), wide enough for ``longest`` tokens.

        The decode attends over the table's whole width, so widths follow the longest sequence
        closely: powers of two of pages and 1.25x, 1.5x, 1.75x them, at least a quarter of the
        full width (at most nine widths ever compile).
        """
        full = self.config.pages_per_seq
        width = min(full, max(_bucket(-(-longest // self.config.page_size), 4), -(-full // 4)))
        return self._alloc.page_table(seqs, width)

    def _sampling_arrays(self, params: list[SamplingParams | None]):
        temperature = np.array([p.temperature if p else 0.0 for p in params], np.float32)
        top_k = np.array([p.top_k if p else 0 for p in params], np.int32)
        top_p = np.array([p.top_p if p else 1.0 for p in params], np.float32)
        filtered = any(p is not None and p.filtered for p in params)
        candidates = min(self.config.max_top_k, self.vocab_size) if filtered else 0
        return temperature, top_k, top_p, candidates


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _cancel(future: asyncio.Future) -> None:
    if not future.done():
        future.cancel()


def _set_exception(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _ends_with(tokens: list[int], stop: tuple[int, ...]) -> bool:
    return len(tokens) >= len(stop) and tuple(tokens[-len(stop):]) == stop


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _bucket(n: int, per_octave: int = 2) -> int:
    """The smallest bucket >= n: a power of two p, or ``per_octave - 1`` evenly spaced sizes between
    p / 2 and p (2: 0.75 p; 4: 0.625 p, 0.75 p, 0.875 p) where they are whole numbers."""
    power = _next_pow2(n)
    half = power // 2
    for k in range(1, per_octave):
        if half * k % per_octave == 0 and half + half * k // per_octave >= n:
            return half + half * k // per_octave
    return power
