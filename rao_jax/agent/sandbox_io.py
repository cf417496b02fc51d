"""What a sandbox worker says and shows: its frames to the host, a cell's output, its errors.

Loaded by ``sandbox_worker.py`` from its own directory, like ``sandbox_confine`` (standard library
only; never imports rao_jax). The host side of the frames is ``sandbox_protocol``.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import os
import select
import signal
import traceback
import types

MAX_FRAME = 16 << 20
MAX_CALL_CHARS = 1 << 20     # JSON of one tool call's arguments (the host refuses frames over MAX_FRAME)
TRACEBACK_FRAMES = 6


class CellTimeout(BaseException):
    """Raised inside a cell that ran out of CPU or wall time (BaseException: ``except Exception``
    in the cell cannot swallow it)."""


class OutputLimitExceeded(BaseException):
    """Raised inside a cell that printed more than the hard output limit."""


class CellFinished(BaseException):
    """Raised after ``finish`` succeeded, to end the cell."""


class CellExit(Exception):
    """What SystemExit / KeyboardInterrupt raised in a cell becomes."""


class ActionError(Exception):
    """An environment action was wrong; the message comes from the environment."""


class ToolError(Exception):
    """A tool call failed for another reason (bad arguments, unserialisable values)."""


# Cells see these names bare, as Python shows a script's own names: a traceback ends in
# "ActionError: ...", not "sandbox_io.ActionError: ...".
for _cls in (CellTimeout, OutputLimitExceeded, CellFinished, CellExit, ActionError, ToolError):
    _cls.__module__ = "__main__"


# ---- frames ------------------------------------------------------------------------------------


class Channel:
    """Length-prefixed JSON frames over two file descriptors, blocking writes."""

    def __init__(self, fd_in: int, fd_out: int):
        self.fd_in, self.fd_out = fd_in, fd_out
        os.set_blocking(fd_in, False)
        self.buffer = b""

    def send(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        frame = len(data).to_bytes(4, "big") + data
        # A timer signal must not interrupt a half-written frame: hold it until the frame is out.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGPROF})
        try:
            view = memoryview(frame)
            while view:
                view = view[os.write(self.fd_out, view):]
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def frames(self) -> list[dict]:
        out = []
        while len(self.buffer) >= 4:
            n = int.from_bytes(self.buffer[:4], "big")
            if n > MAX_FRAME:
                raise RuntimeError(f"host frame of {n} bytes")
            if len(self.buffer) < 4 + n:
                break
            out.append(json.loads(self.buffer[4:4 + n]))
            self.buffer = self.buffer[4 + n:]
        return out

    def read_some(self, block: bool) -> bool:
        """Read what is available; False at end of file. The fd is non-blocking because the event
        loop may call us after a blocking tool call already drained the pipe; ``block`` waits."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGPROF})
        try:
            if block:
                select.select([self.fd_in], [], [])
            try:
                data = os.read(self.fd_in, 1 << 16)
            except BlockingIOError:
                return True
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.buffer += data
        return bool(data)


# ---- output ------------------------------------------------------------------------------------


class CellOutput:
    """What one cell printed: the first ``keep`` characters, a count of the rest, a hard stop."""

    def __init__(self, keep: int, hard: int):
        self.keep, self.hard = keep, hard
        self.parts: list[str] = []
        self.kept = 0
        self.total = 0

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.total += len(s)
        if self.kept < self.keep:
            piece = s[: self.keep - self.kept]
            self.parts.append(piece)
            self.kept += len(piece)
        if self.total > self.hard:
            raise OutputLimitExceeded(f"the cell printed more than {self.hard} characters and was stopped")
        return len(s)

    def text(self) -> str:
        text = "".join(self.parts)
        if self.total > self.kept:
            text += f"\n[... {self.total - self.kept} more characters of output not kept ...]"
        return text


class OutputRouter(io.TextIOBase):
    """sys.stdout / sys.stderr of the worker: sends writes to the cell that is running
    (``worker.running``, a cell with an ``output``), and drops them between cells."""

    def __init__(self, worker):
        self.worker = worker

    def write(self, s):
        cell = self.worker.running
        return cell.output.write(s) if cell is not None else len(s)

    def writable(self):
        return True


# ---- cells ----------------------------------------------------------------------------------------

VALUE_NAME = "__cell_value__"


def compile_cell(tree: ast.Module, filename: str) -> types.CodeType:
    """A parsed cell compiled with top-level await; its last expression, if it ends with one, is
    stored in ``VALUE_NAME`` (a notebook shows it)."""
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        tree.body[-1] = ast.copy_location(
            ast.Assign(targets=[ast.Name(VALUE_NAME, ast.Store())], value=last.value), last)
        ast.fix_missing_locations(tree)
    return compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


async def run_compiled(compiled: types.CodeType, ns: dict, max_chars: int) -> str | None:
    """Runs a ``compile_cell`` result in ``ns``, awaiting it if the cell awaits; returns the repr of
    its last expression's value (at most ``max_chars``), or None."""
    result = eval(compiled, ns)  # noqa: S307 - the cell's own code, confined by the caller
    if result is not None and compiled.co_flags & inspect.CO_COROUTINE:  # the cell awaits
        await result
    value = ns.pop(VALUE_NAME, None)
    return None if value is None else repr(value)[:max_chars]


# ---- errors ------------------------------------------------------------------------------------


def format_error(exc: BaseException, max_chars: int) -> str:
    """The error text of a failed cell, at most about ``max_chars`` long."""
    text = _error_text(exc)
    if len(text) > max_chars:
        text = text[: max_chars // 2] + f"\n[... {len(text) - max_chars} characters cut ...]\n" + text[-max_chars // 2:]
    return text


def _error_text(exc: BaseException) -> str:
    """Frames of cell code only, the exception, a hint for limits."""
    if isinstance(exc, CellTimeout):
        return f"TimeoutError: {exc} and was stopped (variables set before that are kept)"
    if isinstance(exc, OutputLimitExceeded):
        return f"OutputLimitExceeded: {exc}"
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<cell ")]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    if len(frames) > TRACEBACK_FRAMES:
        lines.append(f"  [... {len(frames) - TRACEBACK_FRAMES} earlier frames omitted ...]\n")
        frames = frames[-TRACEBACK_FRAMES:]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    text = "".join(lines).rstrip()
    if isinstance(exc, MemoryError):
        text += "\n(the sandbox memory limit was reached)"
    return text
