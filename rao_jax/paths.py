"""The path layer: a run's outputs go to a local folder or to a URL such as ``gs://bucket/run``.

Every file a run writes or reads back goes through ``etils.epath`` (which Orbax uses too): local
paths and ``gs://`` / ``s3://`` / ``az://`` URLs alike (``gs://`` needs the ``[tpu]`` extra's
``gcsfs`` and ``google-cloud-storage``). Three kinds of writer cannot take a URL, and this module
bridges them:

* writers of local files only (tfds' array_record writer, matplotlib, sentencepiece's loader):
  ``staged(dst)`` hands out a local scratch folder and uploads it to ``dst`` on exit; readers of
  local files only get a per-host copy from ``local_copy``;
* appends: object stores cannot append (gcsfs silently turns ``"a"`` into ``"w"``), so ``LineLog``
  keeps a remote file's lines and rewrites it whole on every flush;
* TensorBoard event files (tensorboardX): ``tensorboard_writer`` registers a writer for URL
  log dirs that goes through epath the same way.

A local path stays a plain local path everywhere (no scheme is invented for it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path as LocalPath

from etils import epath

REMOTE_SCHEMES = ("gs://", "s3://", "az://")


def as_path(path: str | os.PathLike) -> epath.Path:
    """An ``epath.Path`` for a local path (``~`` expanded) or a URL."""
    text = os.fspath(path)
    if not is_remote(text):
        text = os.path.expanduser(text)
    return epath.Path(text)


def is_remote(path: str | os.PathLike) -> bool:
    return os.fspath(path).startswith(REMOTE_SCHEMES)


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies a folder between any two places (local or URL), file by file."""
    src, dst = as_path(src), as_path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        if child.is_dir():
            copy_tree(child, dst / child.name)
        else:
            child.copy(dst / child.name, overwrite=True)


@contextlib.contextmanager
def staged(dst: str | os.PathLike) -> Iterator[LocalPath]:
    """A local folder whose contents end up in ``dst``: ``dst`` itself when it is local, else a
    scratch folder uploaded into ``dst`` when the block ends without an error."""
    if not is_remote(dst):
        local = LocalPath(as_path(dst))
        local.mkdir(parents=True, exist_ok=True)
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="rao_stage_") as scratch:
        yield LocalPath(scratch)
        copy_tree(scratch, dst)


def local_copy(src: str | os.PathLike) -> LocalPath:
    """A local path holding ``src`` (a file or folder): ``src`` itself when it is local, else a
    copy in this host's cache, made once (atomically, so processes sharing the host may race)."""
    if not is_remote(src):
        return LocalPath(as_path(src))
    src = as_path(src)
    cache = LocalPath(tempfile.gettempdir()) / "rao_jax_cache"
    dst = cache / hashlib.sha256(os.fspath(src).encode()).hexdigest()[:16] / src.name
    if dst.exists():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.{uuid.uuid4().hex[:8]}"
    if src.is_dir():
        copy_tree(src, tmp)
    else:
        src.copy(as_path(tmp))
    try:
        os.replace(tmp, dst)
    except OSError:   # another process of this host finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


class LineLog:
    """A text file that grows by lines (``metrics.jsonl``). Locally lines are appended; on an
    object store the file is rewritten whole at every ``flush``.

    Args:
        path: the file.
        keep: on opening, only the existing lines for which ``keep(line)`` is true survive (a
            resumed run cuts its history back to the restored step).
    """

    def __init__(self, path: str | os.PathLike, keep: Callable[[str], bool] | None = None):
        self.path = as_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        if keep is not None:
            lines = [line for line in lines if keep(line)]
        self._remote = is_remote(self.path)
        self._lines = [line + "\n" for line in lines]
        self.path.write_text("".join(self._lines))
        self._file = None if self._remote else open(LocalPath(self.path), "a")  # noqa: SIM115 (closed by close())

    def write(self, line: str) -> None:
        if self._remote:
            self._lines.append(line + "\n")
        else:
            self._file.write(line + "\n")

    def flush(self) -> None:
        if self._remote:
            self.path.write_text("".join(self._lines))
        else:
            self._file.flush()

    def close(self) -> None:
        """Flushes and closes (a second call does nothing)."""
        if self._file is not None and self._file.closed:
            return
        self.flush()
        if self._file is not None:
            self._file.close()


class _EventFile:
    """A tensorboardX record writer for a URL: the event file, rewritten whole on each flush."""

    def __init__(self, path: str):
        self._path = as_path(path)
        self._data = io.BytesIO()

    def write(self, data: bytes) -> None:
        self._data.write(data)

    def flush(self) -> None:
        self._path.write_bytes(self._data.getvalue())

    def close(self) -> None:
        self.flush()


class _EventFiles:
    def open(self, path: str) -> _EventFile:
        return _EventFile(path)

    def directory_check(self, path: str) -> None:
        as_path(path).mkdir(parents=True, exist_ok=True)


def tensorboard_writer(logdir: str | os.PathLike):
    """A ``tensorboardX.SummaryWriter`` on ``logdir`` (a URL goes through epath), or None when
    tensorboardX is not installed."""
    try:
        from tensorboardX import SummaryWriter, record_writer
    except ImportError:
        return None
    for scheme in REMOTE_SCHEMES:
        record_writer.register_writer_factory(scheme[:-3], _EventFiles())
    return SummaryWriter(os.fspath(logdir))
