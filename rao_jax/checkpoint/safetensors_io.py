"""Streaming reader and writer for the safetensors format, one tensor in host memory at a time.

The format: an 8-byte little-endian header length, a JSON header mapping each tensor name to
``{"dtype", "shape", "data_offsets"}`` (offsets relative to the end of the header) plus an optional
``"__metadata__"`` string map, then the raw little-endian tensor bytes back to back. Because every
tensor's shape and dtype is known before any value is computed, the header is written first and the
values are streamed after it, so exporting a 30B model needs one tensor of host RAM, not two models.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read, or a tensor that does not match its declaration."""


def dtype_name(dtype: np.dtype | type) -> str:
    try:
        return _NAMES[np.dtype(dtype)]
    except KeyError:
        raise SafetensorsError(f"dtype {np.dtype(dtype)} cannot be stored in safetensors") from None


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsReader:
    """Memory-maps one file and returns tensors as numpy arrays (copies), validating the header."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as e:
            raise SafetensorsError(f"cannot open {self.path}: {e.strerror}") from None
        try:
            self.metadata, self.tensors = self._read_header()
            size = os.fstat(self._file.fileno()).st_size
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except Exception:
            self._file.close()
            raise

    def _read_header(self) -> tuple[dict[str, str], dict[str, TensorInfo]]:
        size = os.fstat(self._file.fileno()).st_size
        prefix = self._file.read(8)
        if len(prefix) < 8:
            raise SafetensorsError(f"{self.path} is not a safetensors file (shorter than 8 bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise SafetensorsError(f"{self.path} is not a safetensors file (header length "
                                   f"{header_len} does not fit in a {size}-byte file)")
        try:
            header = json.loads(self._file.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{self.path} has a corrupt safetensors header: {e}") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path} has a corrupt safetensors header (not an object)")
        metadata = header.pop("__metadata__", None) or {}
        data_start = 8 + header_len
        tensors = {}
        for name, entry in header.items():
            try:
                dtype = _DTYPES[entry["dtype"]]
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise SafetensorsError(f"{self.path}: bad header entry for tensor {name!r}: {e!r}") from None
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if end - begin != expected or begin < 0 or data_start + end > size:
                raise SafetensorsError(
                    f"{self.path}: tensor {name!r} declares {shape} {entry['dtype']} at bytes "
                    f"[{begin}, {end}) but that needs {expected} bytes inside a {size}-byte file")
            tensors[name] = TensorInfo(name, dtype, shape, data_start + begin, data_start + end)
        return metadata, tensors

    def read(self, name: str) -> np.ndarray:
        info = self.tensors.get(name)
        if info is None:
            raise SafetensorsError(f"{self.path} holds no tensor {name!r}")
        if info.nbytes == 0:
            return np.zeros(info.shape, info.dtype)
        view = np.frombuffer(self._map, dtype=info.dtype, count=info.nbytes // info.dtype.itemsize,
                             offset=info.begin)
        return view.reshape(info.shape).copy()

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class TensorPlan:
    """A tensor to be written: its name, dtype and shape now, its value later from ``produce``."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def write_file(path: str | os.PathLike, plans: Iterable[TensorPlan],
               metadata: Mapping[str, str] | None = None) -> int:
    """Writes ``plans`` to ``path`` calling each ``produce`` once, in order; returns data bytes."""
    plans = list(plans)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for plan in plans:
        if plan.name in header:
            raise SafetensorsError(f"tensor {plan.name!r} is planned twice for {os.fspath(path)}")
        header[plan.name] = {"dtype": dtype_name(plan.dtype), "shape": list(plan.shape),
                             "data_offsets": [offset, offset + plan.nbytes]}
        offset += plan.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-(8 + len(encoded)) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for plan in plans:
            value = np.asarray(plan.produce())
            if value.shape != plan.shape or value.dtype != plan.dtype:
                raise SafetensorsError(
                    f"tensor {plan.name!r} was planned as {plan.shape} {np.dtype(plan.dtype)} but "
                    f"produced {value.shape} {value.dtype}")
            f.write(value.tobytes(order="C"))  # little-endian on every platform JAX supports
        f.flush()
        os.fsync(f.fileno())
    return offset
