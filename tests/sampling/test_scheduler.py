"""The scheduling policy alone: admission, prefix reuse, preemption and page copies, with no model
and no device (the engine's own tests check the same policy end to end)."""

from __future__ import annotations

import numpy as np
import pytest

from rao_jax.sampling import EngineConfig, SamplingParams
from rao_jax.sampling.batch import decode_groups, prefill_batch
from rao_jax.sampling.scheduler import Completion, Request, Scheduler
from rao_jax.sampling.sizes import bucket


def make(num_pages: int = 64, max_rows: int = 4, max_prefill_tokens: int = 128, decode_steps: int = 4):
    cfg = EngineConfig(max_rows=max_rows, page_size=4, num_pages=num_pages, max_seq_len=min(64, 4 * (num_pages - 1)),
                       decode_steps=decode_steps,
                       max_prefill_tokens=max_prefill_tokens, min_prefill_bucket=8, prefill_block=4)
    copies: list[tuple[int, int]] = []
    outcomes: dict = {}
    scheduler = Scheduler(cfg, align=4, copy_page=lambda s, d: copies.append((s, d)),
                          resolve=lambda request, outcome: outcomes.__setitem__(request.seq, outcome))
    return scheduler, copies, outcomes


def request(seq, n: int, max_new: int = 8, keep: bool = True, first: int = 1) -> Request:
    return Request(seq, list(range(first, first + n)), SamplingParams(max_new_tokens=max_new), keep)


def step(scheduler: Scheduler, token: int = 7) -> None:
    """What the engine does once, with every sampled token ``token`` and a full chunk per row."""
    admitted = scheduler.admit()
    rows = scheduler.config.max_rows
    if admitted:
        scheduler.record_prefill(admitted, np.full(rows, token), np.zeros(rows), version=0)
    if scheduler.has_decode_work():
        running = scheduler.reserve_decode()
        live = [r for r, q in enumerate(running) if q is not None]
        steps = scheduler.config.decode_steps
        count = np.array([min(steps, running[r].remaining) if r in live else 0 for r in range(rows)])
        finished = ["length" if r in live and running[r].remaining <= count[r] else None for r in range(rows)]
        scheduler.record_decode([r if r in live else None for r in range(rows)], np.full((rows, steps), token),
                                np.zeros((rows, steps)), count, finished, version=0)
    scheduler.alloc.check()


def test_a_kept_sequence_resumes_from_its_cache():
    scheduler, _, outcomes = make()
    scheduler.enqueue(request("a", 10, max_new=3))
    step(scheduler)
    done = outcomes["a"]
    assert isinstance(done, Completion) and done.tokens == [7, 7, 7] and done.reused_tokens == 0
    assert scheduler.cached_length("a") == 12 and "a" in scheduler.idle  # the last token is not yet cached
    extended = list(range(1, 11)) + [7, 7, 7, 20, 21]
    scheduler.enqueue(Request("a", extended, SamplingParams(max_new_tokens=1), True))
    (admission,) = scheduler.admit()
    assert admission.start == 12 and admission.request.reused == 12


def test_the_prefill_budget_leaves_later_requests_waiting_without_pages():
    scheduler, _, _ = make(max_prefill_tokens=64)
    scheduler.enqueue(request("a", 60))
    scheduler.enqueue(request("b", 20))
    admitted = scheduler.admit()
    assert [a.request.seq for a in admitted] == ["a"] and [r.seq for r in scheduler.waiting] == ["b"]
    assert "b" not in scheduler.alloc


def test_a_duplicate_sequence_is_refused():
    scheduler, _, _ = make()
    scheduler.enqueue(request("a", 4))
    with pytest.raises(ValueError, match="already has a request in flight"):
        scheduler.enqueue(request("a", 4))


def test_idle_sequences_are_preempted_least_recently_used_first():
    scheduler, _, _ = make(num_pages=1 + 12)
    for seq in ("old", "new"):
        scheduler.enqueue(request(seq, 15, max_new=1))
        step(scheduler)
    assert list(scheduler.idle) == ["old", "new"]
    scheduler.enqueue(request("c", 17, max_new=1, first=100))   # 5 pages: more than the 4 free
    step(scheduler)
    assert scheduler.stats["preempted_idle"] == 1 and "old" not in scheduler.alloc and "new" in scheduler.alloc


def test_running_requests_are_preempted_newest_first_and_resume_where_they_were():
    scheduler, _, outcomes = make(num_pages=1 + 7, max_rows=2, decode_steps=4)
    scheduler.enqueue(request("a", 8, max_new=16, keep=False))
    scheduler.enqueue(request("b", 8, max_new=16, keep=False, first=50))
    admitted = scheduler.admit()
    assert [a.request.seq for a in admitted] == ["a", "b"]
    scheduler.record_prefill(admitted, np.full(2, 7), np.zeros(2), version=0)
    running = scheduler.reserve_decode()   # 3 pages each for 12 tokens: 6 of 7
    assert [q.seq for q in running] == ["a", "b"]
    scheduler.record_decode([0, 1], np.full((2, 4), 7), np.zeros((2, 4)), np.array([4, 4]), [None, None], 0)
    running = scheduler.reserve_decode()   # 4 pages each for 16 tokens: b, the newer, goes back to the queue
    assert running[0].seq == "a" and running[1] is None and scheduler.waiting[0].seq == "b"
    assert scheduler.stats["preempted_running"] == 1 and "b" not in scheduler.alloc
    b = scheduler.waiting[0]
    assert len(b.generated) == 5 and not outcomes   # its tokens so far stay with it
    for _ in range(8):
        step(scheduler)
    assert outcomes["a"].tokens == [7] * 16 and outcomes["b"].tokens == [7] * 16
    assert outcomes["b"].reused_tokens == 0 and scheduler.alloc.free_pages == 7


def test_fork_and_divergence_copy_the_shared_partial_page():
    scheduler, copies, _ = make()
    scheduler.enqueue(request("task", 10, max_new=0))
    step(scheduler)
    assert scheduler.cached_length("task") == 10
    scheduler.fork("task", "tree")
    assert copies == [(scheduler.alloc.pages("task")[2], scheduler.alloc.pages("tree")[2])]   # the partial page
    assert scheduler.alloc.pages("task")[:2] == scheduler.alloc.pages("tree")[:2]
    with pytest.raises(ValueError, match="already exists"):
        scheduler.fork("task", "tree")


def test_abort_and_fail_all_resolve_every_request_and_free_its_pages():
    scheduler, _, outcomes = make()
    scheduler.enqueue(request("a", 10, max_new=50))
    scheduler.enqueue(request("b", 10, max_new=50))
    scheduler.admit()
    scheduler.enqueue(request("c", 10))
    assert scheduler.abort("a") and outcomes["a"] is None and not scheduler.abort("missing")
    error = RuntimeError("device lost")
    scheduler.fail_all(error)
    assert outcomes["b"] is error and outcomes["c"] is error
    assert scheduler.alloc.free_pages == 63 and not scheduler.busy and not scheduler.has_work()


def test_the_batch_builders_pack_the_scheduled_rows():
    scheduler, _, _ = make()
    scheduler.enqueue(request("a", 5, max_new=4))
    scheduler.enqueue(request("b", 3, max_new=4, first=40))
    admitted = scheduler.admit()
    batch, candidates = prefill_batch(admitted, scheduler.config, scheduler.alloc, align=4, vocab_size=100)
    assert candidates == 0 and batch.tokens.shape == (12,)   # 8 + 4 aligned slots: a bucket already
    assert batch.tokens[:8].tolist() == [1, 2, 3, 4, 5, 0, 0, 0] and batch.tokens[8:11].tolist() == [40, 41, 42]
    assert batch.valid[:12].tolist() == [True] * 5 + [False] * 3 + [True] * 3 + [False]
    assert batch.last_index[:2].tolist() == [4, 10] and batch.cu_q_lens[:3].tolist() == [0, 5, 8]
    scheduler.record_prefill(admitted, np.full(4, 7), np.zeros(4), version=0)
    (group,) = decode_groups(scheduler.reserve_decode(), scheduler.config, scheduler.alloc, vocab_size=100)
    assert group.rows == [0, 1, None, None] and group.batch.pos[:2].tolist() == [5, 3]
    assert group.batch.active.tolist() == [True, True, False, False]
    page, offset = group.destinations(np.array([2, 1, 0, 0]), 4, 4)
    table = group.batch.page_table
    assert page.reshape(4, 4)[0].tolist() == [table[0, 1], table[0, 1], 0, 0] and offset[:2].tolist() == [1, 2]


def test_prefill_buckets_per_octave():
    sizes = {k: sorted({bucket(n, k) for n in range(1, 65)}) for k in (1, 2, 4)}
    assert sizes[1] == [1, 2, 4, 8, 16, 32, 64]
    assert sizes[2] == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert sizes[4] == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64]
    assert all(bucket(n, k) >= n for k in (1, 2, 4) for n in range(1, 5000))
    assert bucket(8700, 2) == 12288 and bucket(8700, 4) == 10240
