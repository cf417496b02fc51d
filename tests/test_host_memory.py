"""rao_jax.host_memory: with a CPU-only JAX, XLA:CPU's per-call temporary buffers are reused, not faulted in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from rao_jax import host_memory

ROOT = Path(__file__).resolve().parent.parent
glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc malloc's")

# A program whose two 64 MiB intermediates are one temporary buffer, far above the largest block glibc
# serves from a worker thread's arena without mmap; the minor page faults of each call, after a warm-up.
PROBE = """
import json, resource, statistics
from rao_jax import host_memory
host_memory.apply_default()
import jax, jax.numpy as jnp

@jax.jit
def f(x):
    a = jax.lax.optimization_barrier(jnp.sin(x))
    b = jax.lax.optimization_barrier(jnp.cos(x))
    return jnp.sum(a * b)

x = jnp.ones((64 << 20) // 4, jnp.float32)
for _ in range(40):   # the one heap grows for a while, until the blocks small allocations split are enough
    f(x).block_until_ready()
faults = []
for _ in range(11):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": host_memory.applied, "median_faults": statistics.median(faults)}))
"""
TEMP_PAGES = (128 << 20) // 4096


def run_probe(mode: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", host_memory.ENV: mode,
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_reuse_keeps_the_temporary_buffer_mapped():
    reuse, default = run_probe("reuse"), run_probe("default")
    assert reuse["applied"] and not default["applied"]
    # Reused: a call touches no new pages (the heap may still grow on a few calls, hence the median).
    assert reuse["median_faults"] <= 0.01 * TEMP_PAGES, reuse
    # glibc's defaults: the buffer is mapped afresh every call (one fault per page, or per huge page where
    # the kernel backs every mapping with huge pages).
    assert default["median_faults"] > reuse["median_faults"], (default, reuse)


def test_only_a_cpu_only_jax_gets_it(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.jax_is_cpu_only()
    for platforms in ("tpu", "cuda", "cpu,tpu"):
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        assert not host_memory.jax_is_cpu_only()
        assert host_memory.apply_default() is False
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv(host_memory.ENV, "default")
    assert host_memory.apply_default() is False


def test_a_bad_setting_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv(host_memory.ENV, "jemalloc")
    with pytest.raises(ValueError, match="RAO_HOST_MALLOC='jemalloc'"):
        host_memory.apply_default()
