"""The streaming safetensors reader / writer against the reference `safetensors` library."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from rao_jax.checkpoint.safetensors_io import SafetensorsError, SafetensorsReader, TensorPlan, write_file

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, np.int64, np.int32, np.int8, np.uint8, np.bool_]


def _tensors():
    rng = np.random.default_rng(0)
    out = {f"t.{np.dtype(d).name}": (rng.standard_normal((3, 5)) * 10).astype(d) for d in DTYPES}
    out["scalar"] = np.array(2.5, np.float32)
    out["empty"] = np.zeros((0, 4), np.float32)
    return out


def test_written_files_read_back_in_reference_library(tmp_path):
    import torch
    from safetensors import safe_open

    tensors = _tensors()
    plans = [TensorPlan(k, v.dtype, v.shape, lambda v=v: v) for k, v in tensors.items()]
    write_file(tmp_path / "a.safetensors", plans, {"format": "pt"})
    with safe_open(tmp_path / "a.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        for key, value in tensors.items():
            got = f.get_tensor(key)
            if value.dtype == ml_dtypes.bfloat16:
                got = got.to(torch.float32).numpy().astype(ml_dtypes.bfloat16)
            else:
                got = got.numpy()
            np.testing.assert_array_equal(got, value, err_msg=key)


def test_reader_reads_reference_library_files(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"bf": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "f": torch.ones(4)},
              tmp_path / "b.safetensors", metadata={"k": "v"})
    with SafetensorsReader(tmp_path / "b.safetensors") as reader:
        assert reader.metadata == {"k": "v"}
        assert reader.read("bf").dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(reader.read("bf").astype(np.float32), np.arange(6).reshape(2, 3))
        np.testing.assert_array_equal(reader.read("f"), np.ones(4, np.float32))
        with pytest.raises(SafetensorsError, match="holds no tensor 'zz'"):
            reader.read("zz")


def test_writer_rejects_a_value_that_differs_from_its_plan(tmp_path):
    plan = TensorPlan("w", np.dtype(np.float32), (2, 2), lambda: np.zeros((2, 3), np.float32))
    with pytest.raises(SafetensorsError, match=r"'w' was planned as \(2, 2\) float32 but produced \(2, 3\)"):
        write_file(tmp_path / "c.safetensors", [plan])


def test_header_lying_about_sizes_is_rejected(tmp_path):
    import json
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    (tmp_path / "d.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 10)
    with pytest.raises(SafetensorsError, match=r"tensor 'w' declares \(4, 4\) F32 .* inside a"):
        SafetensorsReader(tmp_path / "d.safetensors")
