"""Host side of the sandboxed REPL: a pool of worker processes that run model-written cells.

Model-written code never runs in the trainer process. ``SandboxPool`` starts ``size`` processes of
``sandbox_worker.py`` (standard library only; confinement is set up there before any cell runs, see
``sandbox_confine``: empty network namespace, private size-capped tmpfs scratch, chroot, unprivileged
user or capability-less user namespace, rlimits). A ``SandboxSession`` is pinned to one worker and
holds one delegation tree's node namespaces there; trees are spread over the workers, so a worker
that dies (a cell's C code ignored its CPU limit, a crash) costs only the trees on that worker their
variables, never the trainer or the other workers' trees.

A cell talks back only through tool proxies. Sync tools (environment actions, ``finish``) run in the
host's event loop while the cell blocks; async tools (``launch_subagent``) are awaited in the cell, so
``await asyncio.gather(launch_subagent(...), ...)`` issues several host calls that run concurrently
here. Arguments and results cross as JSON: the host never unpickles anything a cell produced.

Limits per cell: CPU time and running wall time (time suspended on a tool or subagent is free),
printed output, the size of tool-call arguments; per worker: address space, file sizes, no new
processes or threads. Every failure of a cell (exception, syntax error, violation, limit, worker
death) comes back as ``CellResult.error`` text, never as an exception in the host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rao_jax.envs.base import ActionError

log = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).with_name("sandbox_worker.py")
MAX_FRAME = 16 << 20


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
    isolate: bool = True                  # kernel isolation (network namespace, chroot, user nobody)
    user_namespace: bool | None = None    # isolate inside a user namespace; None: only when not root
    python_guards: bool = True            # AST / builtins / import whitelist; off only to test the kernel layer
    require_isolation: bool = False       # fail at start unless network and file isolation are in the kernel
    start_timeout_seconds: float = 60.0

    def __post_init__(self):
        if self.cpu_seconds <= 0 or self.wall_seconds <= 0:
            raise ValueError("SandboxLimits: cpu_seconds and wall_seconds must be positive")
        if self.memory_bytes < 128 << 20:
            raise ValueError(f"SandboxLimits.memory_bytes={self.memory_bytes} is below the 128 MiB a worker needs")


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
    """The sandbox cannot serve at all (a worker does not start); raised to the caller."""


@dataclasses.dataclass
class _CellRun:
    cell_id: int
    sync_tools: Mapping[str, Callable[..., Any]]
    async_tools: Mapping[str, Callable[..., Awaitable[Any]]]
    done: asyncio.Future
    calls: set[asyncio.Task] = dataclasses.field(default_factory=set)


def _describe_exit(rc: int | None) -> str:
    if rc is None:
        return "no exit status"
    if rc < 0:
        sig = signal.Signals(-rc)
        why = {signal.SIGXCPU: " (CPU time limit)", signal.SIGKILL: " (killed)", signal.SIGSEGV: " (crash)"}
        return f"killed by {sig.name}{why.get(sig, '')}"
    return f"exit status {rc}"


def _bind_error(fn: Callable, name: str, args: Sequence, kwargs: Mapping) -> str | None:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        return f"{name}(): {e}"
    except ValueError:  # builtins without a signature: let the call itself complain
        return None
    return None


class _Worker:
    """One worker process, restarted with a fresh generation when it dies."""

    def __init__(self, index: int, limits: SandboxLimits, scratch: Path):
        self.index = index
        self.limits = limits
        self.scratch = scratch
        self.generation = 0
        self.sessions = 0
        self.isolation: dict[str, str] = {}
        self.cells: dict[int, _CellRun] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self._restart: asyncio.Task | None = None
        self._closing = False

    def config(self) -> str:
        lim = self.limits
        return json.dumps({
            "scratch": str(self.scratch), "cpu_seconds": lim.cpu_seconds, "wall_seconds": lim.wall_seconds,
            "memory_bytes": lim.memory_bytes, "output_chars": lim.output_chars,
            "max_output_chars": lim.max_output_chars, "file_bytes": lim.file_bytes,
            "worker_cpu_seconds": lim.worker_cpu_seconds, "isolate": lim.isolate, "scratch_bytes": lim.scratch_bytes,
            "user_namespace": lim.user_namespace,
            "python_guards": lim.python_guards,
        })

    async def start(self) -> None:
        self.ready.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", str(WORKER_SCRIPT), self.config(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, start_new_session=True, limit=MAX_FRAME)
        try:
            first = await asyncio.wait_for(self._read_frame(), self.limits.start_timeout_seconds)
        except (TimeoutError, asyncio.IncompleteReadError) as e:
            await self._kill()
            raise SandboxError(f"sandbox worker {self.index} did not start ({type(e).__name__})") from None
        if first.get("op") != "ready":
            await self._kill()
            raise SandboxError(f"sandbox worker {self.index} failed to start: {first.get('error', first)}")
        self.isolation = dict(first["isolation"])
        if self.limits.require_isolation and ("python" in self.isolation["network"]
                                              or "python" in self.isolation["files"]):
            await self._kill()
            raise SandboxError(f"kernel isolation required but unavailable: {self.isolation}")
        self.generation += 1
        self._reader = asyncio.create_task(self._read_loop(self.proc, self.generation))
        self.ready.set()

    async def _read_frame(self) -> dict:
        header = await self.proc.stdout.readexactly(4)
        n = int.from_bytes(header, "big")
        if n > MAX_FRAME:
            raise ValueError(f"sandbox frame of {n} bytes exceeds {MAX_FRAME}")
        return json.loads(await self.proc.stdout.readexactly(n))

    def write(self, frame: dict) -> bool:
        """Queue a frame for the worker (whole frames: StreamWriter.write is synchronous)."""
        if self.proc is None or self.proc.stdin.is_closing():
            return False
        data = json.dumps(frame).encode()
        self.proc.stdin.write(len(data).to_bytes(4, "big") + data)
        return True

    async def send(self, frame: dict) -> None:
        """Write a frame and wait until the pipe has room again."""
        try:
            if self.write(frame):
                await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass   # the reader sees the death and reports it

    async def _read_loop(self, proc: asyncio.subprocess.Process, generation: int) -> None:
        problem = None
        try:
            while True:
                frame = await self._read_frame()
                op = frame.get("op")
                if op == "call":
                    self._on_call(frame)
                elif op == "done":
                    run = self.cells.pop(frame["cell"], None)
                    if run is not None and not run.done.done():
                        run.done.set_result(frame)
                else:
                    raise ValueError(f"unexpected frame {op!r}")
        except asyncio.IncompleteReadError:
            pass
        except (ValueError, KeyError, TypeError) as e:   # a confused or compromised worker
            problem = f"protocol error: {e}"
            proc.kill()
        rc = await proc.wait()
        if self._closing:
            return
        reason = problem or _describe_exit(rc)
        log.warning("sandbox worker %d (generation %d) died: %s", self.index, generation, reason)
        self.ready.clear()
        dead, self.cells = self.cells, {}
        for run in dead.values():
            if not run.done.done():
                run.done.set_result({"died": reason})
        self._restart = asyncio.create_task(self._restart_worker())

    async def _restart_worker(self) -> None:
        try:
            await self.start()
        except SandboxError as e:
            log.error("sandbox worker %d could not restart: %s", self.index, e)
            self.ready.set()   # waiting cells then fail with the error below instead of hanging

    def _on_call(self, frame: dict) -> None:
        run = self.cells.get(frame["cell"])
        if run is None:   # a leftover task of an ended cell: answer, or a blocking call would hang the worker
            self.write({"op": "reply", "call": frame["call"], "ok": False, "kind": "ToolError",
                        "error": "this cell has already ended"})
            return
        name, args, kwargs = frame["name"], list(frame["args"]), dict(frame["kwargs"])
        if name in run.async_tools:
            task = asyncio.create_task(self._async_call(run, frame["call"], name, args, kwargs))
            run.calls.add(task)
            task.add_done_callback(run.calls.discard)
            return
        fn = run.sync_tools.get(name)
        if fn is None:
            reply = {"ok": False, "kind": "ToolError", "error": f"no tool named {name!r}"}
        elif (bad := _bind_error(fn, name, args, kwargs)) is not None:
            reply = {"ok": False, "kind": "TypeError", "error": bad}
        else:
            try:
                reply = self._ok(name, fn(*args, **kwargs))
            except ActionError as e:
                reply = {"ok": False, "kind": "ActionError", "error": str(e)}
            except Exception as e:   # a tool bug must not take down the tree; the agent sees it
                log.exception("tool %s raised", name)
                reply = {"ok": False, "kind": "ToolError", "error": f"{name} failed: {type(e).__name__}: {e}"}
        self.write({"op": "reply", "call": frame["call"], **reply})   # the cell is blocked on it: no task

    @staticmethod
    def _ok(name: str, value: Any) -> dict:
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            return {"ok": False, "kind": "ToolError", "error": f"{name} returned a value that is not JSON-like: {e}"}
        return {"ok": True, "value": value}

    async def _async_call(self, run: _CellRun, call_id: int, name: str, args: list, kwargs: dict) -> None:
        fn = run.async_tools[name]
        if (bad := _bind_error(fn, name, args, kwargs)) is not None:
            reply = {"ok": False, "kind": "TypeError", "error": bad}
        else:
            try:
                reply = self._ok(name, await fn(*args, **kwargs))
            except ActionError as e:
                reply = {"ok": False, "kind": "ActionError", "error": str(e)}
            except Exception as e:
                log.exception("async tool %s raised", name)
                reply = {"ok": False, "kind": "ToolError", "error": f"{name} failed: {type(e).__name__}: {e}"}
        if self.cells.get(run.cell_id) is run:
            await self.send({"op": "reply", "call": call_id, **reply})

    async def run_cell(self, node_key: str, cell_id: int, code: str, sync_tools, async_tools,
                       ends_cell: Sequence[str]) -> tuple[dict, int]:
        """Run one cell; returns the worker's done frame (or {"died": reason}) and the generation."""
        await self.ready.wait()
        if self.proc is None or self.proc.returncode is not None:
            return {"died": "the sandbox worker could not be restarted"}, self.generation
        generation = self.generation
        run = _CellRun(cell_id, sync_tools, async_tools, asyncio.get_running_loop().create_future())
        self.cells[cell_id] = run
        await self.send({"op": "cell", "cell": cell_id, "node": node_key, "code": code,
                         "sync": sorted(sync_tools), "async": sorted(async_tools), "ends_cell": list(ends_cell)})
        return await run.done, generation

    async def drop(self, node_key: str) -> None:
        await self.send({"op": "drop", "node": node_key})

    async def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def close(self) -> None:
        self._closing = True
        if self._restart is not None:
            await asyncio.gather(self._restart, return_exceptions=True)
        if self.proc is not None and self.proc.returncode is None:
            await self.send({"op": "exit"})
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                await self._kill()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class SandboxSession:
    """The namespaces of one tree's nodes on one worker."""

    def __init__(self, pool: SandboxPool, worker: _Worker, session_id: int):
        self._pool, self._worker, self._id = pool, worker, session_id
        self._generation: dict[int, int] = {}   # node -> worker generation holding its namespace
        worker.sessions += 1

    async def run_cell(self, node: int, code: str, sync_tools: Mapping[str, Callable[..., Any]],
                       async_tools: Mapping[str, Callable[..., Awaitable[Any]]] = {},
                       ends_cell: Sequence[str] = ("finish",)) -> CellResult:
        """Run ``code`` in ``node``'s namespace with these tools; never raises for a cell's misdeeds."""
        t0 = time.perf_counter()
        notes = []
        before = self._generation.get(node)
        frame, generation = await self._worker.run_cell(f"{self._id}.{node}", self._pool.next_cell_id(), code,
                                                        sync_tools, async_tools, ends_cell)
        if before is not None and before != generation:
            notes.append("Note: the sandbox was restarted since your last cell; variables from earlier cells are gone.")
        seconds = time.perf_counter() - t0
        if "died" in frame:
            self._generation.pop(node, None)
            return CellResult("", None, f"SandboxError: the sandbox process running this cell died ({frame['died']}). "
                              "It was restarted; variables from your earlier cells are gone.", False,
                              tuple(notes), seconds)
        self._generation[node] = generation
        return CellResult(frame["output"], frame["value"], frame["error"], bool(frame["finished"]), tuple(notes),
                          seconds)

    async def drop(self, node: int) -> None:
        """Forget ``node``'s namespace (the node has ended)."""
        if self._generation.pop(node, None) == self._worker.generation:
            await self._worker.drop(f"{self._id}.{node}")

    async def close(self) -> None:
        for node in list(self._generation):
            await self.drop(node)
        self._worker.sessions -= 1


class SandboxPool:
    """``size`` worker processes; use ``async with SandboxPool(...) as pool`` and ``pool.session()``."""

    def __init__(self, size: int = 2, limits: SandboxLimits = SandboxLimits(), scratch_root: str | None = None):
        if size < 1:
            raise ValueError(f"SandboxPool size must be >= 1, got {size}")
        self.limits = limits
        self._root = Path(tempfile.mkdtemp(prefix="rao_sandbox_", dir=scratch_root))
        self._root.chmod(0o711)   # workers that drop to another user must reach their own dir
        self._workers = [_Worker(i, limits, self._root / f"w{i}") for i in range(size)]
        self._cell_ids = 0
        self._session_ids = 0

    def next_cell_id(self) -> int:
        self._cell_ids += 1
        return self._cell_ids

    @property
    def isolation(self) -> dict[str, str]:
        """What isolation the workers achieved (network, files, user)."""
        return dict(self._workers[0].isolation)

    def scratch_dir(self, worker: int) -> Path:
        return self._workers[worker].scratch

    def worker_pids(self) -> list[int | None]:
        return [w.proc.pid if w.proc is not None else None for w in self._workers]

    async def start(self) -> SandboxPool:
        for w in self._workers:
            w.scratch.mkdir()
        await asyncio.gather(*(w.start() for w in self._workers))
        return self

    def session(self) -> SandboxSession:
        """A session on the least-loaded worker."""
        worker = min(self._workers, key=lambda w: w.sessions)
        self._session_ids += 1
        return SandboxSession(self, worker, self._session_ids)

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self._workers))
        shutil.rmtree(self._root, ignore_errors=True)

    async def __aenter__(self) -> SandboxPool:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc) -> None:
        await self.close()
