"""What the sandbox's host and worker agree on: the limits of every cell (``SandboxLimits``), what a cell
returns (``CellResult``), the errors, the kernel isolation layers a pool must report, and the check of
every frame a worker sends (``check_frame``: a compromised worker cannot make the host act on a frame
outside the schema)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits of every cell and worker process (defaults suit small CodeAct cells)."""

    cpu_seconds: float = 10.0             # CPU per cell, summed over the tasks the cell created
    wall_seconds: float = 30.0            # running time per cell; waiting on tools / subagents not counted
    memory_bytes: int = 1 << 30           # address space of a worker process
    output_chars: int = 20_000            # printed characters kept per cell (observations are cut further)
    max_output_chars: int = 2_000_000     # printing more than this stops the cell
    file_bytes: int = 16 << 20            # largest file a cell may write in the scratch dir
    scratch_bytes: int = 64 << 20         # all files of a worker (a private tmpfs where the kernel allows)
    worker_cpu_seconds: int = 3_600       # lifetime CPU of a worker; then it is replaced
    isolate: bool = True                  # kernel isolation (namespaces, chroot, own uid)
    user_namespace: bool | None = None    # isolate inside a user namespace; None: only when not root
    python_guards: bool = True            # AST / builtins / import whitelist; off only to test the kernel layer
    require_isolation: bool = False       # fail at start unless network, files and pids are kernel-isolated
    start_timeout_seconds: float = 60.0
    watchdog_margin_seconds: float = 5.0  # the host kills a worker whose cell runs this long past wall_seconds

    def __post_init__(self):
        if self.cpu_seconds <= 0 or self.wall_seconds <= 0:
            raise ValueError("SandboxLimits: cpu_seconds and wall_seconds must be positive")
        if self.memory_bytes < 128 << 20:
            raise ValueError(f"SandboxLimits.memory_bytes={self.memory_bytes} is below the 128 MiB a worker needs")

    def worker_config(self) -> dict:
        return {"cpu_seconds": self.cpu_seconds, "wall_seconds": self.wall_seconds, "memory_bytes": self.memory_bytes,
                "output_chars": self.output_chars, "max_output_chars": self.max_output_chars,
                "file_bytes": self.file_bytes, "worker_cpu_seconds": self.worker_cpu_seconds, "isolate": self.isolate,
                "scratch_bytes": self.scratch_bytes, "user_namespace": self.user_namespace,
                "python_guards": self.python_guards}


@dataclasses.dataclass(frozen=True)
class CellResult:
    """What running one cell produced."""

    output: str                     # printed text (already capped by the worker)
    value: str | None               # repr of the last expression, if it was not None
    error: str | None               # error text: exception, violation, limit, worker death
    finished: bool                  # the cell called a tool that ends the node (finish) successfully
    notes: tuple[str, ...] = ()     # things the agent must know (e.g. its variables were lost)
    seconds: float = 0.0


class SandboxError(RuntimeError):
    """The sandbox cannot serve at all (no worker starts, isolation required but missing)."""


KERNEL_LAYERS = ("network", "files", "pids")


def missing_layers(isolation: Mapping[str, str]) -> list[str]:
    """The kernel isolation layers a worker did not get (see ``sandbox_confine``)."""
    missing = [layer for layer in ("network", "files") if "python" in isolation.get(layer, "python")]
    if isolation.get("pids") != "own PID namespace":
        missing.append("pids")
    return missing


# Frames a worker may send, with their exact fields and types; anything else is a fault of the worker.
FRAMES: dict[str, dict[str, tuple[type, ...]]] = {
    "call": {"op": (str,), "cell": (int,), "call": (int,), "name": (str,), "args": (list,), "kwargs": (dict,)},
    "done": {"op": (str,), "cell": (int,), "output": (str,), "value": (str, type(None)), "error": (str, type(None)),
             "finished": (bool,)},
}
START_FRAMES: dict[str, dict[str, tuple[type, ...]]] = {
    "pid": {"op": (str,), "pid": (int,)},
    "ready": {"op": (str,), "isolation": (dict,)},
    "fatal": {"op": (str,), "error": (str,)},
}


class WorkerFault(ValueError):
    """A worker sent something the protocol does not allow."""


def check_frame(frame: Any, schemas: Mapping[str, Mapping[str, tuple[type, ...]]]) -> dict:
    """``frame`` if it matches one of ``schemas`` exactly (no missing, extra or mistyped field)."""
    if not isinstance(frame, dict) or frame.get("op") not in schemas:
        raise WorkerFault(f"unexpected frame {str(frame)[:80]!r}")
    schema = schemas[frame["op"]]
    if set(frame) != set(schema):
        raise WorkerFault(f"{frame['op']} frame with fields {sorted(frame)}, expected {sorted(schema)}")
    for key, kinds in schema.items():
        value = frame[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise WorkerFault(f"{frame['op']} frame field {key!r} is a {type(value).__name__}")
    if frame["op"] == "call" and not all(isinstance(k, str) for k in frame["kwargs"]):
        raise WorkerFault("call frame with a non-string keyword")
    return frame


@dataclasses.dataclass
class CellRun:
    """A cell in flight, as the host tracks it: its tools, the future of its result, its calls."""

    cell_id: int
    sync_tools: Mapping[str, Callable[..., Any]]
    async_tools: Mapping[str, Callable[..., Awaitable[Any]]]
    ends_cell: frozenset[str]
    done: asyncio.Future
    calls: set[asyncio.Task] = dataclasses.field(default_factory=set)
    finished: bool = False      # a node-ending tool succeeded (decided here, not by the worker)
    active: float = 0.0         # seconds running in the worker, not waiting on the host (the watchdog's)


def bind_error(fn: Callable, name: str, args: Sequence, kwargs: Mapping) -> str | None:
    """Why ``fn(*args, **kwargs)`` would not bind (a tool called with the wrong arguments), or None."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        return f"{name}(): {e}"
    except ValueError:  # builtins without a signature: let the call itself complain
        return None
    return None
