"""Host-side bookkeeping of the paged KV cache: which pages hold which sequence's keys and values.

Invariants (checked by ``check``):

- Page 0 is the null page. It is never allocated; padding entries of page tables and idle batch
  rows point at it, and whatever is written there is never read unmasked.
- Every other page is either on the free list (refcount 0) or owned by at least one sequence
  (refcount = number of sequences whose page list contains it).
- A sequence of ``n`` cached tokens owns exactly ``ceil(n / page_size)`` pages, plus any pages
  reserved ahead of time for tokens about to be written.
- Pages shared by several sequences (after ``fork``) are full and therefore never written again;
  a fork copies the source's partly filled last page so each sequence writes only to pages it
  alone owns.

The device only ever sees small int32 page tables built by ``page_table``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import numpy as np

NULL_PAGE = 0


class PoolExhausted(RuntimeError):
    """Not enough free pages right now (the engine preempts or waits, then retries)."""


@dataclasses.dataclass
class _Seq:
    pages: list[int]
    length: int  # tokens whose K/V are in the cache


class PageAllocator:
    """A fixed pool of ``num_pages`` KV pages of ``page_size`` tokens shared by many sequences.

    Args:
        num_pages: pages in the pool, including the null page 0.
        page_size: tokens per page.
        pages_per_seq: the most pages one sequence may own (its page-table width).
    """

    def __init__(self, num_pages: int, page_size: int, pages_per_seq: int):
        if num_pages < 2:
            raise ValueError(f"num_pages must be at least 2 (page 0 is reserved), got {num_pages}")
        if page_size < 1 or pages_per_seq < 1:
            raise ValueError(f"page_size and pages_per_seq must be positive, got {page_size}, {pages_per_seq}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.pages_per_seq = pages_per_seq
        self._free = list(range(num_pages - 1, 0, -1))  # a stack: pop() hands out low pages first
        self._refcount = np.zeros(num_pages, np.int32)
        self._seqs: dict[Hashable, _Seq] = {}

    @property
    def max_seq_len(self) -> int:
        return self.pages_per_seq * self.page_size

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def __contains__(self, seq: Hashable) -> bool:
        return seq in self._seqs

    def length(self, seq: Hashable) -> int:
        return self._seqs[seq].length

    def pages(self, seq: Hashable) -> list[int]:
        return list(self._seqs[seq].pages)

    def refcount(self, page: int) -> int:
        return int(self._refcount[page])

    def pages_needed(self, seq: Hashable | None, new_length: int) -> int:
        """Extra pages ``seq`` (None: a new sequence) needs to hold ``new_length`` tokens."""
        have = len(self._seqs[seq].pages) if seq is not None and seq in self._seqs else 0
        return max(0, -(-new_length // self.page_size) - have)

    def create(self, seq: Hashable) -> None:
        if seq in self._seqs:
            raise KeyError(f"sequence {seq!r} already exists")
        self._seqs[seq] = _Seq(pages=[], length=0)

    def reserve(self, seq: Hashable, new_length: int) -> None:
        """Makes sure ``seq`` owns pages for ``new_length`` tokens (all or nothing)."""
        if new_length > self.max_seq_len:
            raise ValueError(f"sequence {seq!r} would reach {new_length} tokens; the page table holds "
                             f"at most {self.max_seq_len} ({self.pages_per_seq} pages of {self.page_size})")
        need = self.pages_needed(seq, new_length)
        if need > len(self._free):
            raise PoolExhausted(f"sequence {seq!r} needs {need} more pages, {len(self._free)} are free")
        entry = self._seqs[seq]
        for _ in range(need):
            page = self._free.pop()
            self._refcount[page] = 1
            entry.pages.append(page)

    def set_length(self, seq: Hashable, length: int) -> None:
        """Records that the cache now holds ``length`` tokens of ``seq`` (pages must be reserved)."""
        entry = self._seqs[seq]
        if length > len(entry.pages) * self.page_size:
            raise ValueError(f"sequence {seq!r}: length {length} exceeds its {len(entry.pages)} reserved pages")
        entry.length = length

    def truncate(self, seq: Hashable, length: int) -> tuple[int, int] | None:
        """Forgets tokens past ``length`` and returns pages no longer needed to the pool.

        If the new last page is partly filled and shared with another sequence, ``seq`` gets a
        private copy (copy-on-write), returned as ``(shared_page, own_page)`` for the caller to copy
        on the device; else None.
        """
        entry = self._seqs[seq]
        if length > entry.length:
            raise ValueError(f"cannot truncate {seq!r} from {entry.length} up to {length} tokens")
        keep = -(-length // self.page_size)
        copy = length % self.page_size != 0 and self._refcount[entry.pages[keep - 1]] > 1
        if copy and not self._free:
            raise PoolExhausted(f"truncating {seq!r} into a shared page needs 1 free page, none is free")
        for page in entry.pages[keep:]:
            self._unref(page)
        del entry.pages[keep:]
        entry.length = length
        if not copy:
            return None
        shared = entry.pages[-1]
        own = self._free.pop()
        self._refcount[own] = 1
        self._unref(shared)
        entry.pages[-1] = own
        return shared, own

    def fork(self, src: Hashable, dst: Hashable) -> tuple[int, int] | None:
        """Creates ``dst`` holding the same tokens as ``src``, sharing its full pages.

        Returns ``(src_page, dst_page)`` when the partly filled last page had to be copied (the
        caller copies it on the device), else None.
        """
        source = self._seqs[src]
        full = source.length // self.page_size
        partial = source.length % self.page_size != 0
        if partial and not self._free:
            raise PoolExhausted(f"fork of {src!r} needs 1 free page, none is free")
        self.create(dst)
        entry = self._seqs[dst]
        for page in source.pages[:full]:
            self._refcount[page] += 1
            entry.pages.append(page)
        entry.length = source.length
        if not partial:
            return None
        page = self._free.pop()
        self._refcount[page] = 1
        entry.pages.append(page)
        return source.pages[full], page

    def release(self, seq: Hashable) -> None:
        """Drops ``seq``; pages nobody else holds go back to the pool."""
        for page in self._seqs.pop(seq).pages:
            self._unref(page)

    def page_table(self, rows: Sequence[Hashable | None], width: int | None = None) -> np.ndarray:
        """``i32[len(rows), width]`` page indices, one row per sequence (None: an idle row), 0-padded."""
        width = width or self.pages_per_seq
        table = np.full((len(rows), width), NULL_PAGE, np.int32)
        for r, seq in enumerate(rows):
            if seq is not None:
                pages = self._seqs[seq].pages[:width]
                table[r, : len(pages)] = pages
        return table

    def check(self) -> None:
        """Asserts the invariants of the module docstring (for tests and debugging)."""
        counts = np.zeros(self.num_pages, np.int32)
        for seq, entry in self._seqs.items():
            assert len(entry.pages) >= -(-entry.length // self.page_size), seq
            for page in entry.pages:
                counts[page] += 1
        assert counts[NULL_PAGE] == 0 and NULL_PAGE not in self._free
        assert np.array_equal(counts, self._refcount), "refcounts disagree with page lists"
        assert sorted(self._free) == [p for p in range(1, self.num_pages) if counts[p] == 0]

    def _unref(self, page: int) -> None:
        self._refcount[page] -= 1
        if self._refcount[page] == 0:
            self._free.append(page)
