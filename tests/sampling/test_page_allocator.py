"""Host page allocator: refcounts, forks, copy-on-write truncation, exhaustion, invariants."""

from __future__ import annotations

import random

import numpy as np
import pytest

from rao_jax.sampling.page_allocator import NULL_PAGE, PageAllocator, PoolExhausted


def test_reserve_set_length_and_page_table():
    alloc = PageAllocator(num_pages=10, page_size=4, pages_per_seq=4)
    alloc.create("a")
    alloc.reserve("a", 9)  # 3 pages
    alloc.set_length("a", 9)
    assert len(alloc.pages("a")) == 3 and NULL_PAGE not in alloc.pages("a")
    assert alloc.free_pages == 6
    table = alloc.page_table(["a", None], width=4)
    assert table.shape == (2, 4) and table[0, :3].tolist() == alloc.pages("a") and table[0, 3] == 0
    assert (table[1] == NULL_PAGE).all()
    alloc.check()


def test_fork_shares_full_pages_and_copies_the_partial_one():
    alloc = PageAllocator(num_pages=16, page_size=4, pages_per_seq=8)
    alloc.create("p")
    alloc.reserve("p", 10)
    alloc.set_length("p", 10)  # 2 full pages + 2 tokens in the third
    pair = alloc.fork("p", "c")
    shared = alloc.pages("p")[:2]
    assert alloc.pages("c")[:2] == shared and [alloc.refcount(p) for p in shared] == [2, 2]
    assert pair == (alloc.pages("p")[2], alloc.pages("c")[2]) and pair[0] != pair[1]
    assert alloc.length("c") == 10
    alloc.release("p")
    assert [alloc.refcount(p) for p in shared] == [1, 1]  # still held by the child
    alloc.check()
    alloc.release("c")
    assert alloc.free_pages == 15
    alloc.check()


def test_fork_at_a_page_boundary_copies_nothing():
    alloc = PageAllocator(num_pages=8, page_size=4, pages_per_seq=4)
    alloc.create("p")
    alloc.reserve("p", 8)
    alloc.set_length("p", 8)
    assert alloc.fork("p", "c") is None
    alloc.check()


def test_truncating_into_a_shared_page_copies_on_write():
    alloc = PageAllocator(num_pages=16, page_size=4, pages_per_seq=8)
    alloc.create("p")
    alloc.reserve("p", 8)
    alloc.set_length("p", 8)
    alloc.fork("p", "c")  # shares both full pages
    shared = alloc.pages("c")[1]
    pair = alloc.truncate("c", 6)  # the last kept page is shared and partly valid: must be copied
    assert pair is not None and pair[0] == shared and alloc.pages("c")[1] == pair[1] != shared
    assert alloc.refcount(shared) == 1 and alloc.length("c") == 6
    assert alloc.truncate("p", 4) is None  # a page boundary, nothing shared to write into
    alloc.check()


def test_exhaustion_and_limits_are_clear_errors_and_change_nothing():
    alloc = PageAllocator(num_pages=4, page_size=4, pages_per_seq=8)
    alloc.create("a")
    alloc.reserve("a", 8)
    alloc.create("b")
    with pytest.raises(PoolExhausted, match="'b' needs 2 more pages, 1 are free"):
        alloc.reserve("b", 5)
    assert alloc.pages("b") == [] and alloc.free_pages == 1
    with pytest.raises(ValueError, match="would reach 33 tokens; the page table holds at most 32"):
        alloc.reserve("b", 33)
    with pytest.raises(ValueError, match="num_pages must be at least 2"):
        PageAllocator(1, 4, 4)
    alloc.check()


def test_random_operations_keep_the_invariants():
    rng = random.Random(0)
    alloc = PageAllocator(num_pages=40, page_size=4, pages_per_seq=8)
    live: list[int] = []
    next_id = 0
    for _ in range(2000):
        op = rng.choice(["create", "grow", "fork", "truncate", "release"])
        try:
            if op == "create" or not live:
                alloc.create(next_id)
                live.append(next_id)
                next_id += 1
            elif op == "grow":
                seq = rng.choice(live)
                n = min(alloc.length(seq) + rng.randint(1, 9), 32)
                alloc.reserve(seq, n)
                alloc.set_length(seq, n)
            elif op == "fork":
                alloc.fork(rng.choice(live), next_id)
                live.append(next_id)
                next_id += 1
            elif op == "truncate":
                seq = rng.choice(live)
                alloc.truncate(seq, rng.randint(0, alloc.length(seq)))
            else:
                alloc.release(live.pop(rng.randrange(len(live))))
        except PoolExhausted:
            alloc.release(live.pop(rng.randrange(len(live))))
        alloc.check()
    assert next_id > 100
    held = np.zeros(40, bool)
    for seq in live:
        held[alloc.pages(seq)] = True
    assert alloc.free_pages == 39 - held[1:].sum()
