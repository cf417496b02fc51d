"""The sandbox worker processes: each runs the model-written cells of ONE delegation tree.

Started by ``rao_jax.agent.sandbox`` as ``python -I -S sandbox_worker.py CONFIG_JSON CONTROL_FD``:
the template. Standard library only (it must not import rao_jax, jax or anything installed). The
template imports the modules cells may use once, then waits on its control socket for spawn
requests, each carrying (as SCM_RIGHTS) the worker's end of a fresh socket to the host. Per request
it forks a process that enters new namespaces (``sandbox_confine.enter_namespaces``) and forks the
namespace's init (PID 1), which forks the worker; the middle process tells the host the init's pid
(killing it ends the namespace), waits for it and exits with it. The worker confines itself
(``sandbox_confine.confine``: tmpfs scratch, chroot, its own uid or no capabilities, rlimits) and
serves frames (4-byte big-endian length + UTF-8 JSON) on its socket. Module state is the
template's copy, so nothing one tree changes (a rebound ``math.sqrt``, a patched
``json.JSONEncoder``) reaches another tree.

Cells are compiled with top-level await and run as asyncio tasks of the worker's event loop, so a
cell awaiting ``launch_subagent`` (an async proxy to the host) lets the other cells of this worker
run. Every task a cell creates (``asyncio.gather`` children included) is metered against the cell:
CPU time (SIGPROF) and running wall time (SIGALRM) raise ``CellTimeout`` inside the cell, and a
per-segment ``RLIMIT_CPU`` kills the whole process if C code ignores the signal. A cell that ignores
all of it is the host's watchdog's (``SandboxLimits.watchdog_margin_seconds``).

The Python-level guards (``python_guards``, in ``sandbox_confine``) are defence in depth, not the
boundary.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import json
import linecache
import os
import resource
import signal
import socket
import sys
import time
import types

# -I leaves the script's directory off sys.path; append it (after the standard library, so nothing
# here can shadow a standard module) to load the sibling modules.
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from sandbox_confine import check_source, confine, enter_namespaces, import_views, make_builtins, set_rlimits  # noqa: E402
from sandbox_io import (  # noqa: E402
    MAX_CALL_CHARS,
    ActionError,
    CellExit,
    CellFinished,
    CellOutput,
    CellTimeout,
    Channel,
    OutputRouter,
    ToolError,
    compile_cell,
    format_error,
    run_compiled,
)

WATCH_SECONDS = 0.25
ABANDON_SECONDS = 2.0        # a cell still alive this long after its timeout is reported and abandoned


# ---- cells -----------------------------------------------------------------------------------


class Cell:
    """One running cell: its node, limits left, output and the tasks it created."""

    def __init__(self, cell_id: int, node: str, cfg: dict):
        self.cell_id, self.node = cell_id, node
        self.cpu_left = float(cfg["cpu_seconds"])
        self.wall_left = float(cfg["wall_seconds"])
        self.output = CellOutput(cfg["output_chars"], cfg["max_output_chars"])
        self.tasks: set[asyncio.Task] = set()
        self.calls: set[int] = set()
        self.timeout_reason = ""
        self.timeout_at = 0.0
        self.abandoned = False
        self.ended = False   # its result went to the host: none of its tasks may run again


class Metered:
    """Awaitable wrapper that runs a coroutine's segments under the owning cell's timers."""

    def __init__(self, worker: Worker, cell: Cell, coro):
        self.worker, self.cell, self.coro = worker, cell, coro

    def __await__(self):
        value, error = None, None
        while True:
            if self.cell.ended:   # a task its cell left behind (it swallowed the cancellation): end it here
                with contextlib.suppress(RuntimeError):   # it ignored GeneratorExit too: dropped all the same
                    self.coro.close()
                raise CellTimeout("the cell that started this task has ended")
            if self.cell.timeout_reason and not isinstance(error, CellTimeout):
                error = CellTimeout(self.cell.timeout_reason)
            self.worker.arm(self.cell)
            try:
                yielded = self.coro.throw(error) if error is not None else self.coro.send(value)
            except StopIteration as stop:
                self.worker.disarm()
                return stop.value
            except (SystemExit, KeyboardInterrupt) as e:
                # asyncio re-raises these out of the event loop: they would stop the worker.
                self.worker.disarm()
                raise CellExit(f"{type(e).__name__}({e}) cannot exit the sandbox; the cell was stopped") from None
            except BaseException:
                self.worker.disarm()
                raise
            self.worker.disarm()
            try:
                value, error = (yield yielded), None
            except BaseException as e:  # cancellation and thrown-in errors go to the cell's code
                value, error = None, e


async def metered(worker: Worker, cell: Cell, coro):
    return await Metered(worker, cell, coro)


class Worker:
    """The worker's state: config, channel, namespaces, running cells, timers."""

    def __init__(self, cfg: dict, channel: Channel, views: dict[str, types.ModuleType], open_root: str):
        self.cfg, self.channel, self.views, self.open_root = cfg, channel, views, open_root
        self.namespaces: dict[str, dict] = {}
        self.cells: dict[int, Cell] = {}
        self.cell_counts: dict[str, int] = {}   # cells run per node: a traceback names the node's own cell number
        self.futures: dict[int, asyncio.Future] = {}
        self.next_call = 0
        self.running: Cell | None = None
        self.armed = False
        self.segment_start = (0.0, 0.0)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.backlog: list[dict] = []

    # timers -------------------------------------------------------------------------------------
    def arm(self, cell: Cell) -> None:
        self.running = cell
        cpu_now = time.process_time()
        self.segment_start = (cpu_now, time.monotonic())
        cpu = max(cell.cpu_left, 0.001)
        wall = max(cell.wall_left, 0.001)
        # The kernel backstop for C code that never returns to the interpreter: exceed the cell's CPU
        # allowance by 2 s and the process is killed (the host reports it and starts a new worker).
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        resource.setrlimit(resource.RLIMIT_CPU, (min(int(cpu_now + cpu) + 2, hard), hard))
        self.armed = True
        signal.setitimer(signal.ITIMER_PROF, cpu)
        signal.setitimer(signal.ITIMER_REAL, wall)

    def disarm(self) -> None:
        self.armed = False
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        cell = self.running
        self.running = None
        if cell is not None:
            cell.cpu_left -= time.process_time() - self.segment_start[0]
            cell.wall_left -= time.monotonic() - self.segment_start[1]
        lifetime = resource.getrlimit(resource.RLIMIT_CPU)[1]
        resource.setrlimit(resource.RLIMIT_CPU, (lifetime - 5, lifetime))

    def on_timer(self, signum, frame) -> None:
        cell = self.running
        if cell is None or not self.armed:
            return
        self.armed = False
        cell.timeout_at = time.monotonic()
        if signum == signal.SIGPROF:
            cell.timeout_reason = f"the cell used more than {self.cfg['cpu_seconds']:g} s of CPU time"
        else:
            cell.timeout_reason = f"the cell ran for more than {self.cfg['wall_seconds']:g} s"
        raise CellTimeout(cell.timeout_reason)

    # host calls -----------------------------------------------------------------------------------
    def _call_frame(self, name: str, args: tuple, kwargs: dict) -> tuple[int, dict]:
        cell = self.running
        if cell is None:
            raise ToolError(f"{name}() can only be called while a cell runs")
        try:
            payload = {"args": list(args), "kwargs": kwargs}
            size = len(json.dumps(payload))
        except (TypeError, ValueError) as e:
            raise ToolError(f"arguments of {name}() must be JSON-like values (str, int, float, bool, None, "
                            f"lists, dicts with str keys): {e}") from None
        if size > MAX_CALL_CHARS:
            raise ToolError(f"arguments of {name}() are {size} characters of JSON; the limit is {MAX_CALL_CHARS}")
        self.next_call += 1
        cell.calls.add(self.next_call)
        return self.next_call, {"op": "call", "cell": cell.cell_id, "call": self.next_call, "name": name, **payload}

    @staticmethod
    def _reply_value(reply: dict):
        if reply["ok"]:
            return reply["value"]
        kind = {"ActionError": ActionError, "TypeError": TypeError}.get(reply.get("kind"), ToolError)
        raise kind(reply["error"])

    def sync_proxy(self, name: str, ends_cell: bool):
        def proxy(*args, **kwargs):
            cell = self.running
            call_id, frame = self._call_frame(name, args, kwargs)
            self.disarm()   # time waiting for the host is not the cell's
            try:
                self.channel.send(frame)
                reply = self._wait_reply(call_id)
            finally:
                self.arm(cell)
            cell.calls.discard(call_id)
            value = self._reply_value(reply)
            if ends_cell:
                raise CellFinished()
            return value
        proxy.__name__ = proxy.__qualname__ = name
        return proxy

    def async_proxy(self, name: str):
        async def proxy(*args, **kwargs):
            call_id, frame = self._call_frame(name, args, kwargs)
            future = self.loop.create_future()
            self.futures[call_id] = future
            self.channel.send(frame)
            return self._reply_value(await future)
        proxy.__name__ = proxy.__qualname__ = name
        return proxy

    def _wait_reply(self, call_id: int) -> dict:
        while True:
            for i, frame in enumerate(self.backlog):
                if frame["op"] == "reply" and frame["call"] == call_id:
                    return self.backlog.pop(i)
            if not self.channel.read_some(block=True):
                os._exit(0)   # the host is gone: nothing to report to
            self.backlog.extend(self.channel.frames())
            if self.backlog:
                self.loop.call_soon(self.process_backlog)

    # frames from the host -------------------------------------------------------------------------
    def on_readable(self) -> None:
        if not self.channel.read_some(block=False):
            self.loop.stop()
            return
        self.backlog.extend(self.channel.frames())
        self.process_backlog()

    def process_backlog(self) -> None:
        while self.backlog:
            frame = self.backlog.pop(0)
            op = frame["op"]
            if op == "cell":
                self.start_cell(frame)
            elif op == "reply":
                future = self.futures.pop(frame["call"], None)
                if future is not None and not future.done():
                    future.set_result(frame)
            elif op == "drop":
                self.namespaces.pop(frame["node"], None)
                self.cell_counts.pop(frame["node"], None)
                for key in [k for k in linecache.cache if k.startswith(f"<cell {frame['node']}/")]:
                    del linecache.cache[key]
            elif op == "exit":
                self.loop.stop()
                return

    def namespace(self, node: str) -> dict:
        ns = self.namespaces.get(node)
        if ns is None:
            builtins_table = (make_builtins(self.views, self.open_root) if self.cfg["python_guards"]
                              else dict(vars(builtins)))
            # asyncio comes pre-imported: every node may need gather, and forgetting the import should
            # not cost a step.
            ns = {"__builtins__": builtins_table, "__name__": "__main__", "ActionError": ActionError,
                  "ToolError": ToolError, "asyncio": self.views["asyncio"] if self.cfg["python_guards"] else asyncio}
            self.namespaces[node] = ns
        return ns

    def start_cell(self, frame: dict) -> None:
        cell = Cell(frame["cell"], frame["node"], self.cfg)
        self.cells[cell.cell_id] = cell
        ns = self.namespace(cell.node)
        for name in frame["sync"]:
            ns[name] = self.sync_proxy(name, name in frame["ends_cell"])
        for name in frame["async"]:
            ns[name] = self.async_proxy(name)
        task = self.loop.create_task(metered(self, cell, self.run_code(cell, frame["code"], ns)))
        cell.tasks.add(task)
        task.add_done_callback(lambda t: self.end_cell(cell, t))

    async def run_code(self, cell: Cell, code: str, ns: dict):
        # The node's own cell number, not the pool-wide cell id: what a traceback shows the model must not
        # depend on how other trees' cells interleaved.
        count = self.cell_counts[cell.node] = self.cell_counts.get(cell.node, 0) + 1
        filename = f"<cell {cell.node}/{count}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        tree = ast.parse(code, filename)
        if self.cfg["python_guards"]:
            check_source(tree)
        return await run_compiled(compile_cell(tree, filename), ns, self.cfg["output_chars"])

    def end_cell(self, cell: Cell, task: asyncio.Task) -> None:
        if cell.abandoned:
            return
        cell.ended = True
        for other in cell.tasks:
            other.cancel()   # tasks the cell created and did not await die with it
        for call_id in cell.calls:
            self.futures.pop(call_id, None)
        self.cells.pop(cell.cell_id, None)
        value, error, finished = None, None, False
        if task.cancelled():
            error = "CancelledError: the cell was cancelled"
        else:
            exc = task.exception()
            if exc is None:
                value = task.result()
            elif isinstance(exc, CellFinished):
                finished = True
            else:
                error = format_error(exc, self.cfg["output_chars"])
        self.channel.send({"op": "done", "cell": cell.cell_id, "output": cell.output.text(), "value": value,
                           "error": error, "finished": finished})

    def watch_waiting_cells(self, last: float) -> None:
        """Charge wall time to cells suspended on something other than the host (``asyncio.sleep``,
        an event nobody sets): time spent awaiting tools or subagents is free, anything else counts."""
        now = time.monotonic()
        for cell in list(self.cells.values()):
            if cell.timeout_reason:
                if now - cell.timeout_at > ABANDON_SECONDS:
                    self.abandon(cell)
                continue
            if any(c in self.futures for c in cell.calls):
                continue
            cell.wall_left -= now - last
            if cell.wall_left <= 0:
                cell.timeout_reason = f"the cell ran for more than {self.cfg['wall_seconds']:g} s"
                cell.timeout_at = now
                for task in cell.tasks:
                    task.cancel()   # Metered turns the cancellation into CellTimeout inside the cell
        self.loop.call_later(WATCH_SECONDS, self.watch_waiting_cells, now)

    def abandon(self, cell: Cell) -> None:
        """Report a cell that swallowed its CellTimeout as timed out; its tasks stay cancelled."""
        for task in cell.tasks:
            task.cancel()
        self.cells.pop(cell.cell_id, None)
        cell.abandoned = cell.ended = True
        self.channel.send({"op": "done", "cell": cell.cell_id, "output": cell.output.text(), "value": None,
                           "error": f"TimeoutError: {cell.timeout_reason}; the cell ignored the stop and was "
                                    "abandoned", "finished": False})

    def task_factory(self, loop, coro, **kwargs):
        cell = self.running
        if cell is None:
            return asyncio.Task(coro, loop=loop, **kwargs)
        task = asyncio.Task(metered(self, cell, coro), loop=loop, **kwargs)
        cell.tasks.add(task)
        return task


def serve(cfg: dict, fd: int, views: dict[str, types.ModuleType], report: dict, spawn: dict) -> None:
    """The worker: confine, then serve cells on the socket ``fd`` until the host goes away."""
    channel = Channel(fd, fd)
    try:
        report = confine(spawn["scratch"], cfg["scratch_bytes"], spawn["uid"], report)
        open_root = os.path.realpath(os.getcwd())
        set_rlimits(cfg)
    except Exception as e:
        channel.send({"op": "fatal", "error": f"{type(e).__name__}: {e}"})
        os._exit(1)
    worker = Worker(cfg, channel, views, open_root)
    sys.stdout = sys.stderr = OutputRouter(worker)
    signal.signal(signal.SIGPROF, worker.on_timer)
    signal.signal(signal.SIGALRM, worker.on_timer)
    loop = asyncio.new_event_loop()
    worker.loop = loop
    loop.set_task_factory(worker.task_factory)
    loop.add_reader(channel.fd_in, worker.on_readable)
    loop.call_later(WATCH_SECONDS, worker.watch_waiting_cells, time.monotonic())
    channel.send({"op": "ready", "isolation": report})
    loop.run_forever()
    os._exit(0)


def spawn(cfg: dict, request: dict, fd: int, views: dict[str, types.ModuleType]) -> None:
    """In the template's child: enter namespaces, start the worker, report the pid to kill, wait.

    With a PID namespace the first child is the namespace's init (PID 1), which only starts the
    worker and reaps: the kernel would not deliver the worker's own CPU-limit signals to a PID 1,
    and killing the init (the pid the host gets) takes the whole namespace down with it."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)   # the template ignores it; this process waits
    channel = Channel(fd, fd)
    try:
        report = enter_namespaces(cfg["isolate"], cfg["user_namespace"], request["uid"])
        ready_r, ready_w = os.pipe()
        child = os.fork()
    except Exception as e:
        channel.send({"op": "fatal", "error": f"{type(e).__name__}: {e}"})
        os._exit(1)
    if child == 0:
        os.close(ready_w)
        os.read(ready_r, 1)   # the pid goes to the host first
        os.close(ready_r)
        if report["pids"] == "own PID namespace":
            worker = os.fork()
            if worker != 0:   # the namespace's init
                os.close(fd)
                while True:
                    pid, status = os.wait()
                    if pid == worker:
                        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        os.closerange(3, fd)
        os.closerange(fd + 1, 1 << 16)
        serve(cfg, fd, views, report, request)
    os.close(ready_r)
    channel.send({"op": "pid", "pid": child})
    os.write(ready_w, b"x")
    os.close(ready_w)
    os.close(fd)
    _, status = os.waitpid(child, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def template(cfg: dict, control_fd: int) -> None:
    """Pre-imports the cells' modules, then forks one worker per spawn request."""
    views = import_views()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # children are reaped by the kernel
    control = socket.socket(fileno=control_fd)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 16, 1)
        except InterruptedError:
            continue
        if not message:
            os._exit(0)   # the host is gone
        request = json.loads(message)
        if request.get("op") == "exit" or not fds:
            os._exit(0)
        if os.fork() == 0:
            control.close()
            spawn(cfg, request, fds[0], views)
        os.close(fds[0])


def main() -> None:
    template(json.loads(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    main()
