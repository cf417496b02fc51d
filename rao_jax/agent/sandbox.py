"""Host side of the sandboxed REPL: one worker process per delegation tree runs its model-written cells.

Model-written code never runs in the trainer process, and no two trees share a process. A
``SandboxPool`` starts ``size`` template processes of ``sandbox_worker.py`` (standard library only),
which import the cells' modules once; every ``SandboxSession`` (one tree) gets a worker forked from a
template the first time it runs a cell (``sandbox_confine``: new network, mount and PID namespaces,
a private size-capped tmpfs scratch dir, chroot, a uid of its own or a capability-less user
namespace, rlimits). What one tree's cells change (module objects, files, umask, memory, file
descriptors, signal handlers) stays in its own process; it cannot see, signal or read another
tree's worker or the trainer.

A cell talks back only through tool proxies. Sync tools (environment actions, ``finish``) run in the
host's event loop while the cell blocks; async tools (``launch_subagent``) are awaited in the cell, so
``await asyncio.gather(launch_subagent(...), ...)`` issues several host calls that run concurrently
here. Arguments and results cross as JSON: the host never unpickles anything a cell produced, checks
every frame against its schema (anything else is a fault of that worker: it is killed), and decides
itself whether a cell finished its node (a successful call of a node-ending tool it served).

Limits per cell: CPU time and running wall time (time suspended on a tool or subagent is free), in
the worker and, for a worker that stops answering, a host-side watchdog that kills it at the wall
limit plus ``SandboxLimits.watchdog_margin_seconds`` (the worker's own stop takes up to ~2.5 s);
printed output; the size of tool-call arguments. Per worker:
address space, file sizes, open files, scratch bytes, no new processes or threads. Every failure of a
cell (exception, syntax error, violation, limit, worker death or fault) comes back as
``CellResult.error`` text, never as an exception in the host; a killed worker is replaced at the
tree's next cell (its variables are gone, and the cell is told so).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rao_jax.agent.protocol import clean_text
from rao_jax.agent.sandbox_protocol import (  # noqa: F401  (the sandbox API, importable from here too)
    FRAMES,
    KERNEL_LAYERS,
    START_FRAMES,
    CellResult,
    CellRun,
    SandboxError,
    SandboxLimits,
    WorkerFault,
    bind_error,
    check_frame,
    missing_layers,
)
from rao_jax.envs.base import ActionError

log = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).with_name("sandbox_worker.py")
MAX_FRAME = 16 << 20
UID_BASE = 200_000                 # a root-run pool gives tree slot k the uid UID_BASE + k
WATCH_SECONDS = 0.25


class _Template:
    """A process that imports the cells' modules once and forks a worker per request."""

    def __init__(self, limits: SandboxLimits):
        self.limits = limits
        self.proc: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None

    async def start(self) -> None:
        host, child = socket.socketpair()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", str(WORKER_SCRIPT), json.dumps(self.limits.worker_config()),
            str(child.fileno()), pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, start_new_session=True)
        child.close()
        self._control = host

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def spawn(self, scratch: Path, uid: int) -> socket.socket:
        """Asks for a worker on ``scratch`` as ``uid``; returns the host's end of its socket."""
        host, child = socket.socketpair()
        try:
            request = json.dumps({"op": "spawn", "scratch": str(scratch), "uid": uid}).encode()
            socket.send_fds(self._control, [request], [child.fileno()])
        except OSError:
            host.close()
            raise
        finally:
            child.close()
        return host

    async def close(self) -> None:
        if self._control is not None:
            self._control.close()   # the template exits at end of file
        if self.alive:
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class _Worker:
    """One tree's worker process (see the module docstring); dead for good once it dies."""

    def __init__(self, pool: SandboxPool, slot: int, uid: int, scratch: Path):
        self.pool, self.slot, self.uid, self.scratch = pool, slot, uid, scratch
        self.pid: int | None = None
        self.isolation: dict[str, str] = {}
        self.cells: dict[int, CellRun] = {}
        self.death: str | None = None
        self._pidfd: int | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task | None = None

    async def start(self) -> None:
        limits = self.pool.limits
        try:
            sock = self.pool.template().spawn(self.scratch, self.uid)
        except OSError as e:
            raise SandboxError(f"the sandbox template cannot fork a worker: {e}") from None
        self._reader, self._writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
        try:
            first = check_frame(await asyncio.wait_for(self._read_frame(), limits.start_timeout_seconds),
                                START_FRAMES)
            if first["op"] == "pid":
                self.pid = first["pid"]
                try:
                    self._pidfd = os.pidfd_open(self.pid)
                except OSError:
                    self._pidfd = None
                first = check_frame(await asyncio.wait_for(self._read_frame(), limits.start_timeout_seconds),
                                    START_FRAMES)
        except (TimeoutError, asyncio.IncompleteReadError, WorkerFault, json.JSONDecodeError) as e:
            await self.kill(f"did not start ({type(e).__name__}: {e})")
            raise SandboxError(f"a sandbox worker did not start ({type(e).__name__}: {e})") from None
        if first["op"] != "ready":
            await self.kill("failed to start")
            raise SandboxError(f"a sandbox worker failed to start: {first.get('error', first)}")
        self.isolation = {str(k): str(v) for k, v in first["isolation"].items()}
        self._read_task = asyncio.create_task(self._read_loop())

    async def _read_frame(self) -> Any:
        header = await self._reader.readexactly(4)
        n = int.from_bytes(header, "big")
        if n > MAX_FRAME:
            raise WorkerFault(f"frame of {n} bytes exceeds {MAX_FRAME}")
        return json.loads(await self._reader.readexactly(n))

    def write(self, frame: dict) -> bool:
        """Queue a frame for the worker (whole frames: StreamWriter.write is synchronous)."""
        if self.death is not None or self._writer is None or self._writer.is_closing():
            return False
        data = json.dumps(frame).encode()
        self._writer.write(len(data).to_bytes(4, "big") + data)
        return True

    async def send(self, frame: dict) -> None:
        """Write a frame and wait until the socket has room again."""
        try:
            if self.write(frame):
                await self._writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass   # the reader sees the death and reports it

    async def _read_loop(self) -> None:
        reason = "its process ended: an exit, a crash or its CPU limit"
        try:
            while True:
                frame = check_frame(await self._read_frame(), FRAMES)
                if frame["op"] == "call":
                    self._on_call(frame)
                    continue
                run = self.cells.pop(frame["cell"], None)
                if run is None:
                    raise WorkerFault(f"a done frame for cell {frame['cell']}, which is not running")
                if not run.done.done():
                    run.done.set_result(frame)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        except (WorkerFault, ValueError, RecursionError) as e:   # ValueError: JSON that does not parse
            reason = f"it broke the protocol ({type(e).__name__}: {str(e)[:200]})"
        await self.kill(reason)

    async def kill(self, reason: str) -> None:
        """Kills the process (if it still runs) and fails its running cells with ``reason``."""
        if self.death is None:
            self.death = reason
            if self.pid is not None and reason != "closed":
                log.warning("sandbox worker %d stopped: %s", self.pid, reason)
        self._signal(signal.SIGKILL)
        if self._writer is not None:
            self._writer.close()
        dead, self.cells = self.cells, {}
        for run in dead.values():
            for task in run.calls:
                task.cancel()
            if not run.done.done():
                run.done.set_result({"died": self.death})

    def _signal(self, sig: int) -> None:
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            elif self.pid is not None:
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def _on_call(self, frame: dict) -> None:
        run = self.cells.get(frame["cell"])
        if run is None:   # a leftover task of an ended cell: answer, or a blocking call would hang the worker
            self.write({"op": "reply", "call": frame["call"], "ok": False, "kind": "ToolError",
                        "error": "this cell has already ended"})
            return
        name, args, kwargs = frame["name"], frame["args"], frame["kwargs"]
        if name in run.async_tools:
            task = asyncio.create_task(self._async_call(run, frame["call"], name, args, kwargs))
            run.calls.add(task)
            task.add_done_callback(run.calls.discard)
            return
        fn = run.sync_tools.get(name)
        if fn is None:
            reply = {"ok": False, "kind": "ToolError", "error": f"no tool named {name!r}"}
        elif (bad := bind_error(fn, name, args, kwargs)) is not None:
            reply = {"ok": False, "kind": "TypeError", "error": bad}
        else:
            try:
                reply = self._ok(name, fn(*args, **kwargs))
            except ActionError as e:
                reply = {"ok": False, "kind": "ActionError", "error": str(e)}
            except Exception as e:   # a tool bug must not take down the tree; the agent sees it
                log.exception("tool %s raised", name)
                reply = {"ok": False, "kind": "ToolError", "error": f"{name} failed: {type(e).__name__}: {e}"}
            if reply["ok"] and name in run.ends_cell:
                run.finished = True
        self.write({"op": "reply", "call": frame["call"], **reply})   # the cell is blocked on it: no task

    @staticmethod
    def _ok(name: str, value: Any) -> dict:
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            return {"ok": False, "kind": "ToolError", "error": f"{name} returned a value that is not JSON-like: {e}"}
        return {"ok": True, "value": value}

    async def _async_call(self, run: CellRun, call_id: int, name: str, args: list, kwargs: dict) -> None:
        fn = run.async_tools[name]
        if (bad := bind_error(fn, name, args, kwargs)) is not None:
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
                       ends_cell: Sequence[str]) -> tuple[dict, CellRun]:
        """Run one cell; returns the worker's done frame (or {"died": reason}) and the run."""
        run = CellRun(cell_id, sync_tools, async_tools, frozenset(ends_cell),
                       asyncio.get_running_loop().create_future())
        if self.death is not None:
            return {"died": self.death}, run
        self.cells[cell_id] = run
        await self.send({"op": "cell", "cell": cell_id, "node": node_key, "code": code,
                         "sync": sorted(sync_tools), "async": sorted(async_tools), "ends_cell": list(ends_cell)})
        return await run.done, run

    def watch(self, elapsed: float, limit: float) -> None:
        """The host's watchdog: charges ``elapsed`` seconds to each cell not waiting on the host and
        kills the worker when one has run past ``limit`` (it stopped answering its own timers)."""
        for run in self.cells.values():
            if not run.calls:
                run.active += elapsed
            if run.active > limit and self.death is None:
                asyncio.get_running_loop().create_task(self.kill(
                    f"a cell ran for more than {limit:g} s without returning, past its own time limit"))
                return

    async def drop(self, node_key: str) -> None:
        await self.send({"op": "drop", "node": node_key})

    async def close(self) -> None:
        await self.kill("closed")
        if self._read_task is not None:
            await asyncio.gather(self._read_task, return_exceptions=True)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class SandboxSession:
    """The sandbox of one tree: its own worker process (started at the first cell, replaced when it
    dies or is killed), holding its nodes' namespaces."""

    def __init__(self, pool: SandboxPool, session_id: int):
        self._pool, self._id = pool, session_id
        self._worker: _Worker | None = None
        self._generation = 0
        self._nodes: dict[int, int] = {}   # node -> worker generation holding its namespace
        self._starting: asyncio.Lock | None = None

    @property
    def worker_pid(self) -> int | None:
        """The pid of this tree's worker (None before its first cell or after it died)."""
        w = self._worker
        return w.pid if w is not None and w.death is None else None

    @property
    def scratch_dir(self) -> Path | None:
        return None if self._worker is None else self._worker.scratch

    async def _live_worker(self) -> _Worker:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._worker is None or self._worker.death is not None:
                if self._worker is not None:
                    await self._pool.retire(self._worker)
                self._worker = await self._pool.new_worker()
                self._generation += 1
        return self._worker

    async def run_cell(self, node: int, code: str, sync_tools: Mapping[str, Callable[..., Any]],
                       async_tools: Mapping[str, Callable[..., Awaitable[Any]]] = {},
                       ends_cell: Sequence[str] = ("finish",)) -> CellResult:
        """Run ``code`` in ``node``'s namespace with these tools; never raises for a cell's misdeeds."""
        t0 = time.perf_counter()
        notes = []
        worker = await self._live_worker()
        before = self._nodes.get(node)
        if before is not None and before != self._generation:
            notes.append("Note: the sandbox was restarted since your last cell; variables from earlier cells are gone.")
        frame, run = await worker.run_cell(f"{self._id}.{node}", self._pool.next_cell_id(), code, sync_tools,
                                           async_tools, ends_cell)
        seconds = time.perf_counter() - t0
        if "died" in frame:
            self._nodes.pop(node, None)
            error = (f"SandboxError: the sandbox process running this cell was stopped ({frame['died']}). A new "
                     "one takes the next cell; variables from your earlier cells are gone.")
            return CellResult("", None, clean_text(error), run.finished, tuple(notes), seconds)
        self._nodes[node] = self._generation
        value = None if frame["value"] is None else clean_text(frame["value"])
        error = None if frame["error"] is None else clean_text(frame["error"])
        return CellResult(clean_text(frame["output"]), value, error, run.finished, tuple(notes), seconds)

    async def drop(self, node: int) -> None:
        """Forget ``node``'s namespace (the node has ended)."""
        if self._nodes.pop(node, None) == self._generation and self._worker is not None:
            await self._worker.drop(f"{self._id}.{node}")

    async def close(self) -> None:
        """Ends the tree's worker (killed: nothing of the tree outlives it)."""
        self._nodes.clear()
        if self._worker is not None:
            await self._pool.retire(self._worker)
            self._worker = None


class SandboxPool:
    """Templates of tree workers; use ``async with SandboxPool(...) as pool`` and ``pool.session()``.

    Args:
        size: template processes forking the workers (one is plenty; more only spread the forks).
        limits: every cell's and worker's limits.
        scratch_root: where the workers' scratch dirs are made (default: the system temp dir).
    """

    def __init__(self, size: int = 1, limits: SandboxLimits | None = None, scratch_root: str | None = None):
        if size < 1:
            raise ValueError(f"SandboxPool size must be >= 1, got {size}")
        self.limits = limits = limits if limits is not None else SandboxLimits()
        self._root = Path(tempfile.mkdtemp(prefix="rao_sandbox_", dir=scratch_root))
        self._root.chmod(0o711)   # workers that drop to their own uid must reach their own dir
        self._templates = [_Template(limits) for _ in range(size)]
        self._next_template = 0
        self._workers: set[_Worker] = set()
        self._free_slots: list[int] = []
        self._slots = 0
        self._spawned = 0
        self._cell_ids = 0
        self._session_ids = 0
        self._watchdog: asyncio.Task | None = None
        self.isolation: dict[str, str] = {}   # what the workers achieved (network, files, pids, user)

    def next_cell_id(self) -> int:
        self._cell_ids += 1
        return self._cell_ids

    def template(self) -> _Template:
        live = [t for t in self._templates if t.alive]
        if not live:
            raise OSError("every sandbox template process has died")
        self._next_template += 1
        return live[self._next_template % len(live)]

    def live_worker_pids(self) -> list[int]:
        return sorted(w.pid for w in self._workers if w.pid is not None and w.death is None)

    async def new_worker(self) -> _Worker:
        """A fresh worker process with its own slot (uid) and scratch dir."""
        if not any(t.alive for t in self._templates):
            await asyncio.gather(*(t.start() for t in self._templates if not t.alive))
        slot = self._free_slots.pop() if self._free_slots else self._slots
        self._slots = max(self._slots, slot + 1)
        root = os.geteuid() == 0
        uid = UID_BASE + slot if root else os.getuid()
        self._spawned += 1
        scratch = self._root / f"w{self._spawned}"
        scratch.mkdir(mode=0o700)
        if root and self.limits.isolate:
            os.chown(scratch, uid, uid)
        worker = _Worker(self, slot, uid, scratch)
        try:
            await worker.start()
        except BaseException:
            await self.retire(worker)
            raise
        self._workers.add(worker)
        return worker

    async def retire(self, worker: _Worker) -> None:
        """Kills a worker, frees its slot and removes its scratch dir."""
        await worker.close()
        self._workers.discard(worker)
        if worker.slot not in self._free_slots:
            self._free_slots.append(worker.slot)
        shutil.rmtree(worker.scratch, ignore_errors=True)

    async def start(self) -> SandboxPool:
        await asyncio.gather(*(t.start() for t in self._templates))
        probe = await self.new_worker()   # what isolation this machine gives a worker
        self.isolation = dict(probe.isolation)
        await self.retire(probe)
        missing = missing_layers(self.isolation)
        if missing and self.limits.require_isolation:
            raise SandboxError(f"kernel isolation required but missing for {', '.join(missing)} on this machine "
                               f"({self.isolation}); run where unprivileged user namespaces are allowed, or turn "
                               "the requirement off (rollout.require_isolation=False) to rely on the Python "
                               "guards alone")
        if missing:
            log.warning("SANDBOX NOT ISOLATED by the kernel for %s (%s): model-written code is held by the Python "
                        "guards alone, which a determined policy can get around", ", ".join(missing), self.isolation)
        self._watchdog = asyncio.create_task(self._watch())
        return self

    async def _watch(self) -> None:
        limit = self.limits.wall_seconds + self.limits.watchdog_margin_seconds
        last = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            now = time.monotonic()
            for worker in list(self._workers):
                worker.watch(now - last, limit)
            last = now

    def session(self) -> SandboxSession:
        """A new tree's sandbox (its worker starts with its first cell)."""
        self._session_ids += 1
        return SandboxSession(self, self._session_ids)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        await asyncio.gather(*(self.retire(w) for w in list(self._workers)))
        await asyncio.gather(*(t.close() for t in self._templates))
        shutil.rmtree(self._root, ignore_errors=True)

    async def __aenter__(self) -> SandboxPool:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc) -> None:
        await self.close()
