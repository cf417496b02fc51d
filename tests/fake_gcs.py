"""A ``gs://`` bucket without a network, for tests: Google Cloud Storage stood in by a local folder.

``with fake_gcs(root):`` makes ``gs://bucket/key`` mean ``root/bucket/key`` for everything a run
reaches GCS through: ``etils.epath`` (through fsspec's ``gcs`` protocol, as gcsfs provides it) and
Orbax's array writer (tensorstore, whose GCS key-value store Orbax picks in
``gcs_utils.get_kvstore_for_gcs``; it gets tensorstore's ``file`` store on the same folder). The
stand-in behaves like GCS where it matters to a writer: an object opened for append is rewritten
from empty (gcsfs turns ``"a"`` into ``"w"``), and there are no real directories to rename.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import fsspec
from etils.epath import backend as epath_backend
from fsspec.implementations.local import LocalFileSystem

PROTOCOLS = ("gs", "gcs")


def _filesystem(root: str) -> type[LocalFileSystem]:
    class LocalBucket(LocalFileSystem):
        protocol = PROTOCOLS

        def __init__(self, *args, finalize_on_close=None, **kwargs):
            super().__init__(*args, auto_mkdir=True, **kwargs)

        @classmethod
        def _strip_protocol(cls, path):
            path = fsspec.utils.stringify_path(path)
            for prefix in ("gs://", "gcs://"):
                path = path.removeprefix(prefix)
            if path.startswith(root):
                return path.rstrip("/")
            return os.path.join(root, path.lstrip("/")).rstrip("/")

        def unstrip_protocol(self, name):
            return "gs://" + os.path.relpath(name, root)

        def glob(self, path, **kwargs):   # gcsfs answers bucket-relative names, without the scheme
            return [os.path.relpath(p, root) for p in super().glob(path, **kwargs)]

        def _open(self, path, mode="rb", **kwargs):
            return super()._open(path, mode.replace("a", "w"), **kwargs)

    return LocalBucket


@contextlib.contextmanager
def fake_gcs(root: str | os.PathLike) -> Iterator[None]:
    from orbax.checkpoint._src.path import gcs_utils

    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    registered = sys.modules["fsspec.registry"]._registry   # the mutable registry behind fsspec.registry
    saved = {name: registered.get(name) for name in PROTOCOLS}
    orbax = (gcs_utils.get_kvstore_for_gcs, gcs_utils.is_hierarchical_namespace_enabled)

    def kvstore(path: str) -> dict:
        bucket, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
        return {"driver": "file", "path": os.path.join(root, bucket, key)}

    for name in PROTOCOLS:
        fsspec.register_implementation(name, _filesystem(root), clobber=True)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    gcs_utils.get_kvstore_for_gcs = kvstore
    gcs_utils.is_hierarchical_namespace_enabled = lambda path: False
    try:
        yield
    finally:
        gcs_utils.get_kvstore_for_gcs, gcs_utils.is_hierarchical_namespace_enabled = orbax
        for name, cls in saved.items():
            if cls is None:
                registered.pop(name, None)
            else:
                registered[name] = cls
        epath_backend.fsspec_backend._get_filesystem.cache_clear()
