"""What the processes of a multi-host run agree on, and how: small collectives on host values.

Each function is a collective over every process (``jax.experimental.multihost_utils`` underneath):
every process must call it at the same point of the run, in the same order, which rao_jax does
only at step boundaries (never from inside a rollout, whose timing is each host's own). On one
process each is a no-op that returns its input.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np

T = TypeVar("T")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins a multi-controller run (``jax.distributed.initialize``): on Cloud TPU with no arguments
    (the TPU runtime says who is who); elsewhere with all three, e.g. ``rao_jax.local_pod`` on one
    machine. CPU collectives go through gloo, so a local pod of CPU processes can all-reduce."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)


def define_flags() -> None:
    """The command-line flags of a multi-host run (``rao_jax.train``, ``rao_jax.evaluate``)."""
    from absl import flags

    flags.DEFINE_bool("distributed", False, "join a multi-host run with jax.distributed.initialize() (on Cloud "
                      "TPU pods the TPU runtime names the processes; elsewhere also give the three flags below)")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator (e.g. rao_jax.local_pod)")
    flags.DEFINE_integer("num_processes", None, "processes in the run")
    flags.DEFINE_integer("process_id", None, "this process's index, 0 .. num_processes - 1")


def initialize_from_flags() -> None:
    """``initialize`` as the flags of ``define_flags`` ask (nothing without ``--distributed``)."""
    from absl import flags

    f = flags.FLAGS
    if not f.distributed:
        return
    given = [f.coordinator_address is not None, f.num_processes is not None, f.process_id is not None]
    if any(given) and not all(given):
        raise SystemExit("--coordinator_address, --num_processes and --process_id go together")
    initialize(f.coordinator_address, f.num_processes, f.process_id)


def is_primary() -> bool:
    """Process 0: it writes the run's single-writer files (metrics, reports, exports)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(value: T) -> list[T]:
    """Every process's ``value`` (any picklable object), in process order, on every process."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(value), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([data.size], np.int64))
    width = 1 << int(sizes.max() - 1).bit_length()  # powers of two: few distinct shapes to compile
    padded = np.zeros(width, np.uint8)
    padded[:data.size] = data
    rows = multihost_utils.process_allgather(padded)
    return [pickle.loads(rows[p, :int(sizes[p, 0])].tobytes()) for p in range(len(rows))]


def on_primary(work: Callable[[], T]) -> T | None:
    """Runs ``work`` on process 0 while the others wait; an exception there is raised on every
    process (the same type when it can be rebuilt from its message, else RuntimeError), so no
    process is left waiting in a collective. Returns ``work()``'s value on process 0, None elsewhere."""
    result, error = None, None
    if is_primary():
        try:
            result = work()
        except Exception as err:  # noqa: BLE001 -- re-raised below, on every process
            if jax.process_count() == 1:
                raise
            error = (type(err), str(err))
    if jax.process_count() > 1:
        error = gather(error)[0]
    if error is not None:
        kind, message = error
        try:
            raise kind(message)
        except TypeError:
            raise RuntimeError(f"process 0 failed: {kind.__name__}: {message}") from None
    return result


def agree_max(value: int) -> int:
    """The largest ``value`` over the processes."""
    return max(gather(int(value)))


def preemption_point(step: int) -> bool:
    """True on every process once a preemption notice (SIGTERM on any host) has reached all of
    them and ``step`` is the step they agreed to stop after (JAX's preemption sync point; every
    process calls this at every step with the same step numbers). False on one process without
    ``jax.distributed``: there the trainer watches SIGTERM itself."""
    if not jax.distributed.is_initialized():
        return False
    from jax.experimental import multihost_utils

    return multihost_utils.reached_preemption_sync_point(step)


def share(items: list[T], index: int | None = None, count: int | None = None) -> list[T]:
    """This process's share of ``items``: every ``count``-th item from position ``index``."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    return items[index::count]


def unshare(parts: list[list[T]]) -> list[T]:
    """Undoes ``share``: ``parts[p]`` is process p's share; returns the items in their first order."""
    out: list[Any] = []
    for i in range(max((len(p) for p in parts), default=0)):
        out += [p[i] for p in parts if i < len(p)]
    return out
