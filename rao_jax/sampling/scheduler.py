"""The engine's scheduling policy, on the host and without a model: which requests run in which
batch rows, which KV pages they hold, prefix reuse, and preemption when pages run out.

``Scheduler`` owns the request queue, the batch rows, the page allocator and the tokens each cached
sequence holds. The engine asks it to ``admit`` waiting requests (each with how many of its tokens
are already cached) and to ``reserve_decode`` pages for the next decode chunk, runs the device
calls, and hands back the sampled tokens (``record_prefill`` / ``record_decode``). Two callbacks
connect it to the rest: ``copy_page(src, dst)`` copies one KV page on the device (a shared page
about to be written, copy-on-write), and ``resolve(request, outcome)`` delivers a request's end: a
``Completion``, an exception, or None when it was cancelled.

Preemption order when pages run out: first kept sequences that are not running (least recently
used first; their prefix is recomputed when they are next extended), then the most recently
admitted running requests, which go back to the front of the queue and later resume exactly
where they were. ``lock`` guards the queue, the rows and the in-flight set, which the submitting
thread touches too; everything else runs on the engine's device thread.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import NamedTuple

from rao_jax.sampling.logits import SamplingParams
from rao_jax.sampling.page_allocator import PageAllocator, PoolExhausted
from rao_jax.sampling.sizes import EngineConfig


@dataclasses.dataclass(frozen=True)
class Completion:
    tokens: list[int]
    logprobs: list[float]      # behaviour log-probs: under the distribution each token was drawn from
    finish_reason: str         # "stop" | "length" | "prefill" (max_new_tokens=0)
    prompt_tokens: int
    reused_tokens: int         # prompt tokens whose K/V were already cached (not recomputed)
    policy_version: int = 0    # the oldest weights version that sampled any of ``tokens``


@dataclasses.dataclass
class Request:
    seq: Hashable
    prompt: list[int]
    params: SamplingParams
    keep: bool                 # keep the sequence's pages after it completes
    handle: object = None      # the submitter's own (its event loop and future): opaque here
    generated: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    reused: int = -1           # set at first admission
    version: int | None = None  # the oldest weights version that sampled one of its tokens
    pos: int = 0               # position of generated[-1] (not yet in the cache)
    admitted_at: int = -1      # admission counter: larger is newer (preemption takes the newest)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.generated

    @property
    def remaining(self) -> int:
        return self.params.max_new_tokens - len(self.generated)

    def saw_version(self, version: int) -> None:
        self.version = version if self.version is None else min(self.version, version)

    def reach(self, steps: int) -> int:
        """The sequence's length once a decode chunk of ``steps`` steps has run."""
        return self.pos + min(steps, self.remaining)


class Admission(NamedTuple):
    row: int
    request: Request
    start: int  # the first of its tokens the prefill computes (the ones before are cached)


class Scheduler:
    """Rows, queue and pages of one engine (see the module docstring).

    Args:
        config: the engine's sizes.
        align: prefill rows start at multiples of this many slots (the reference attention's
            query block; 1 for the Pallas kernel): admission counts aligned slots against
            ``max_prefill_tokens``.
        copy_page: copies one KV page on the device, ``copy_page(src, dst)``.
        resolve: delivers a request's outcome (``Completion``, exception, or None: cancelled).
    """

    def __init__(self, config: EngineConfig, *, align: int, copy_page: Callable[[int, int], None],
                 resolve: Callable[[Request, object], None]):
        self.config = config
        self.align = align
        self.alloc = PageAllocator(config.num_pages, config.page_size, config.pages_per_seq)
        self.cached: dict[Hashable, list[int]] = {}  # tokens whose K/V are in the cache, per sequence
        self.idle: collections.OrderedDict[Hashable, None] = collections.OrderedDict()  # kept, not running
        self.waiting: collections.deque[Request] = collections.deque()
        self.rows: list[Request | None] = [None] * config.max_rows
        self.busy: set[Hashable] = set()  # sequences with a request queued or running
        self.lock = threading.Lock()
        self.stats: collections.Counter = collections.Counter()
        self._copy_page = copy_page
        self._resolve = resolve
        self._admissions = itertools.count()

    # ------------------------------------------------------------------------------------------
    # Any thread

    def enqueue(self, request: Request) -> None:
        with self.lock:
            if request.seq in self.busy:
                raise ValueError(f"sequence {request.seq!r} already has a request in flight")
            self.busy.add(request.seq)
            self.waiting.append(request)

    def has_work(self) -> bool:
        with self.lock:
            return bool(self.waiting) or any(r is not None for r in self.rows)

    def has_decode_work(self) -> bool:
        return any(r is not None and r.remaining > 0 for r in self.rows)

    def cached_length(self, seq: Hashable) -> int:
        return len(self.cached.get(seq, ()))

    def fail_all(self, error: Exception) -> None:
        """Ends every queued and running request with ``error`` (a device error or a bug)."""
        with self.lock:
            requests = list(self.waiting) + [r for r in self.rows if r is not None]
            self.waiting.clear()
            self.rows = [None] * self.config.max_rows
        for request in requests:
            self.busy.discard(request.seq)
            if request.seq in self.alloc:
                self._drop(request.seq)
            self._resolve(request, error)

    # ------------------------------------------------------------------------------------------
    # The device thread

    def admit(self) -> list[Admission]:
        """Moves waiting requests into free rows, in queue order, while their new tokens fit the
        prefill budget and their pages fit the pool (after preempting idle sequences)."""
        admitted: list[Admission] = []
        budget = self.config.max_prefill_tokens
        while True:
            with self.lock:
                if not self.waiting or None not in self.rows:
                    break
                request = self.waiting[0]
            full = request.tokens
            # The prefill budget is checked before any page is reserved: a request that waits for the
            # next call holds no pages (nothing could preempt them while it waits).
            new = self._aligned(len(full) - self._reusable(request.seq, full))
            if admitted and new > budget:
                break
            start = self._prepare(request.seq, full)
            if start is None:
                break  # no pages yet: running requests will free some
            budget -= self._aligned(len(full) - start)
            if request.reused < 0:
                request.reused = start
            request.admitted_at = next(self._admissions)
            with self.lock:
                self.waiting.popleft()
                row = self.rows.index(None)
                self.rows[row] = request
            self.idle.pop(request.seq, None)
            admitted.append(Admission(row, request, start))
        return admitted

    def reserve_decode(self) -> list[Request | None]:
        """Reserves the pages every running row needs for one decode chunk, oldest admission first.
        When the pool runs out, idle sequences go first, then the newest running request (the one
        asking, if it is the newest) goes back to the queue; a request that cannot fit even alone
        fails. Returns the batch rows that decode (None: idle)."""
        steps = self.config.decode_steps
        for row in sorted(range(self.config.max_rows), key=self._admission_age):
            request = self.rows[row]
            while request is not None:
                try:
                    self.alloc.reserve(request.seq, request.reach(steps))
                    break
                except PoolExhausted as err:
                    if self._preempt_idle(exclude=request.seq):
                        continue
                    running = [r for r in range(self.config.max_rows) if self.rows[r] is not None]
                    if running == [row]:
                        self._fail(row, err)   # this request alone: the others go on
                        break
                    self._preempt_running(max(running, key=self._admission_age))
                    request = self.rows[row]   # None when it was the newest
        return list(self.rows)

    def record_prefill(self, admitted: Sequence[Admission], next_tokens, logprobs, version: int) -> None:
        """Stores a prefill's result: every admitted row's tokens are cached, and its next token
        (``next_tokens[row]``, ``logprobs[row]``) was sampled by weights ``version``."""
        for row, request, _ in admitted:
            full = request.tokens
            self.alloc.set_length(request.seq, len(full))
            self.cached[request.seq] = full
            if request.params.max_new_tokens == 0:
                self._finish(row, "prefill", version)
                continue
            request.generated.append(int(next_tokens[row]))
            request.saw_version(version)
            request.logprobs.append(float(logprobs[row]))
            request.pos = len(full)
            if any(_ends_with(request.generated, s) for s in request.params.stop):
                self._finish(row, "stop", version)
            elif request.remaining <= 0:
                self._finish(row, "length", version)

    def record_decode(self, rows: Sequence[int | None], tokens, logprobs, count, finished: Sequence[str | None],
                      version: int) -> None:
        """Stores one decode call's result: slot ``i`` (batch row ``rows[i]``) took ``count[i]``
        steps, sampling ``tokens[i, :count[i]]``, and ended with ``finished[i]`` ("stop",
        "length") or is still running (None)."""
        for i, row in enumerate(rows):
            if row is None:
                continue
            request = self.rows[row]
            n = int(count[i])
            request.generated += tokens[i, :n].tolist()
            if n:
                request.saw_version(version)
            request.logprobs += logprobs[i, :n].tolist()
            request.pos += n
            self.stats["decode_active_rows"] += 1
            self.stats["decode_tokens"] += n
            self.alloc.set_length(request.seq, request.pos)
            self.cached[request.seq] = request.tokens[: request.pos]
            if finished[i] is not None:
                self._finish(row, finished[i], version)

    def abort(self, seq: Hashable) -> bool:
        """Drops the request on ``seq`` wherever it is, with its row and pages; it is resolved as
        cancelled. Returns whether there was one."""
        with self.lock:
            request = next((r for r in self.waiting if r.seq == seq), None)
            if request is not None:
                self.waiting.remove(request)
            else:
                row = next((i for i, r in enumerate(self.rows) if r is not None and r.seq == seq), None)
                if row is None:
                    return False
                request, self.rows[row] = self.rows[row], None
            self.busy.discard(seq)
        self.idle.pop(seq, None)
        if seq in self.alloc:
            self._drop(seq)
        self._resolve(request, None)
        self.stats["aborted"] += 1
        return True

    def fork(self, src: Hashable, dst: Hashable) -> None:
        """Makes ``dst`` a cached, idle copy of ``src`` that shares its full pages."""
        if src not in self.alloc or src in self.busy:
            raise ValueError(f"cannot fork {src!r}: it is not a cached, idle sequence")
        if dst in self.alloc or dst in self.busy:
            raise ValueError(f"cannot fork into {dst!r}: that sequence already exists")
        while True:
            try:
                self._copy(self.alloc.fork(src, dst))
                break
            except PoolExhausted:
                if not self._preempt_idle(exclude=src):
                    raise
        self.cached[dst] = list(self.cached[src])
        self.idle[dst] = None

    def release(self, seq: Hashable) -> None:
        if seq in self.busy:
            raise ValueError(f"cannot release {seq!r} while a request on it is in flight")
        self.idle.pop(seq, None)
        if seq in self.alloc:
            self._drop(seq)

    # ------------------------------------------------------------------------------------------

    def _reusable(self, seq: Hashable, tokens: list[int]) -> int:
        """How many of ``tokens`` ``seq``'s cache already holds (at least the last is recomputed)."""
        cached = self.cached.get(seq) if seq in self.alloc else None
        return 0 if cached is None else min(_common_prefix(cached, tokens), len(tokens) - 1)

    def _prepare(self, seq: Hashable, tokens: list[int]) -> int | None:
        """Gets ``seq``'s cache ready to take ``tokens``; returns how many are already cached, or
        None when the pool cannot hold them now.

        At least the last token is always recomputed (its logits choose the next token).
        """
        alloc = self.alloc
        cached = self.cached.get(seq) if seq in alloc else None
        if cached is None:
            if seq in alloc:
                self._drop(seq)
            alloc.create(seq)
            self.cached[seq] = cached = []
        common = min(_common_prefix(cached, tokens), len(tokens) - 1)
        while True:
            try:
                if common < len(cached):
                    self._copy(alloc.truncate(seq, common))
                    cached = self.cached[seq] = cached[:common]
                alloc.reserve(seq, len(tokens))
                return common
            except PoolExhausted:
                if not self._preempt_idle(exclude=seq):
                    return None

    def _aligned(self, n: int) -> int:
        """Slots ``n`` new tokens of one row take in a prefill buffer (rows start at block bounds)."""
        return -(-n // self.align) * self.align

    def _finish(self, row: int, reason: str, version: int) -> None:
        with self.lock:
            request, self.rows[row] = self.rows[row], None
            self.busy.discard(request.seq)
        if request.keep:
            self.idle[request.seq] = None
            self.idle.move_to_end(request.seq)
        else:
            self._drop(request.seq)
        self._resolve(request, Completion(
            tokens=list(request.generated), logprobs=list(request.logprobs), finish_reason=reason,
            prompt_tokens=len(request.prompt), reused_tokens=max(request.reused, 0),
            policy_version=version if request.version is None else request.version))

    def _fail(self, row: int, error: Exception) -> None:
        """Ends the request in ``row`` with ``error``, freeing its row and pages."""
        with self.lock:
            request, self.rows[row] = self.rows[row], None
            self.busy.discard(request.seq)
        self.idle.pop(request.seq, None)
        self._drop(request.seq)
        self._resolve(request, error)

    def _preempt_idle(self, exclude: Hashable) -> bool:
        for seq in self.idle:
            if seq != exclude:
                del self.idle[seq]
                self._drop(seq)
                self.stats["preempted_idle"] += 1
                return True
        return False

    def _preempt_running(self, row: int) -> None:
        """Sends the request running in ``row`` back to the front of the queue; its pages go."""
        with self.lock:
            request, self.rows[row] = self.rows[row], None
            self.waiting.appendleft(request)
        self._drop(request.seq)
        self.stats["preempted_running"] += 1

    def _admission_age(self, row: int) -> int:
        request = self.rows[row]
        return -1 if request is None else request.admitted_at

    def _drop(self, seq: Hashable) -> None:
        self.alloc.release(seq)
        self.cached.pop(seq, None)

    def _copy(self, pair: tuple[int, int] | None) -> None:
        if pair is not None:
            self._copy_page(*pair)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _ends_with(tokens: list[int], stop: tuple[int, ...]) -> bool:
    return len(tokens) >= len(stop) and tuple(tokens[-len(stop):]) == stop
