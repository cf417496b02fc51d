"""Host memory for JAX on a CPU: glibc malloc keeps freed blocks for reuse instead of unmapping them.

XLA:CPU allocates every program's temporary buffer with ``malloc`` on one of its worker threads
and frees it when the program ends: 1.2 GB for a learner step of 8 x 1,024 tokens on
``configs/models/tiny_qwen3.json``, 0.4 GB at 16 x 256. With glibc's defaults a block that large is
always its own ``mmap`` (a worker thread's arena heaps hold at most 64 MiB), unmapped again by
``free``, so each call faults its whole temporary buffer back in, page by page: about 305,000 minor
faults per 8 x 1,024 step, a third of its CPU time spent in the kernel; the learner step is ~1.45x
faster without them on 2 cores (``benchmarks/train_step_throughput.py``, BENCHMARKS.md).

``keep_freed_memory`` sets three ``mallopt`` parameters: one arena for every thread (the main
one, grown with ``brk``), no ``mmap`` for large blocks, no trimming of the heap's top. A program
then reuses the memory its previous call freed. The cost is resident memory: freed memory never
goes back to the system, and blocks freed and allocated across threads and calls fragment the one
heap (a learner loop at 8 x 1,024 held 4.2 GB instead of 1.9 GB at its peak; the CPU demo peaks at
3.7-4.9 GB instead of 2.7-2.8 GB), and compiling is about 10% slower (every compiler thread takes the one
arena's lock). That is the right trade where JAX runs on the CPU and the same programs run again
and again, not where compiling dominates: the test suite, many small programs each run a few times,
leaves glibc's defaults (588 s against 658 s with this set). The entry points
(``python -m rao_jax.train`` and ``rao_jax.evaluate``, the benchmarks) call ``apply_default``
first: it sets this when this process's JAX can
only run on the CPU (``JAX_PLATFORMS`` names only ``cpu``, or no TPU / GPU plugin is installed),
unless ``RAO_HOST_MALLOC=default``. Call it (or ``keep_freed_memory``) before JAX starts its
backend, i.e. before the first array or device query: a thread that has already allocated keeps
its own arena, and its large blocks stay ``mmap``-ed.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform

ENV = "RAO_HOST_MALLOC"          # "reuse" (default) or "default" (glibc's own settings)
ENV_CHOICES = ("reuse", "default")

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_ACCELERATOR_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin")

applied = False   # whether this process's malloc was set by ``keep_freed_memory``


def jax_is_cpu_only() -> bool:
    """Whether JAX in this process can only use the CPU, decided without starting JAX's backends."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return {p.strip() for p in platforms.split(",") if p.strip()} == {"cpu"}
    if any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_MODULES):
        return False
    return not importlib.metadata.entry_points(group="jax_plugins")


def keep_freed_memory() -> bool:
    """Sets glibc malloc to reuse freed memory (see the module docstring); True if it was set.

    A no-op returning False where the C library is not glibc (macOS, musl).
    """
    global applied
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # -1 for M_TRIM_THRESHOLD turns trimming off (mallopt(3)).
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    applied = all(mallopt(param, value) == 1 for param, value in settings)
    return applied


def apply_default() -> bool:
    """What the entry points do: ``keep_freed_memory`` when JAX is CPU-only, unless ``RAO_HOST_MALLOC=default``.

    Raises:
        ValueError: ``RAO_HOST_MALLOC`` is neither ``reuse`` nor ``default``.
    """
    choice = os.environ.get(ENV, "reuse").strip().lower() or "reuse"
    if choice not in ENV_CHOICES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of {ENV_CHOICES}")
    if choice == "default" or not jax_is_cpu_only():
        return False
    return keep_freed_memory()
