"""Learner-to-sampler weight sync on a fake 8-device CPU mesh, against two naive peers.

The learner holds fp32 parameters on the learner mesh (fsdp=2 x tensor=4, TRAIN_RULES); two sampler
replicas of 4 devices each want bf16 copies laid out by SAMPLE_RULES. Three ways, in the same run:

- sync: ``SamplerReplicas.sync`` (one jitted cast + reshard into every replica, then each replica's
  view of its devices, installed in its engine);
- device_put: per parameter, cast on the learner mesh, then ``jax.device_put`` to each replica's
  sharding (what a loop over the tree does);
- host: per parameter, fetch to the host, cast, ``device_put`` to each replica (a weight server).

Prints the median seconds of each and the ratios to ``sync``; checks the three agree bit for bit.

    python benchmarks/weight_sync.py [--model configs/models/small_qwen3.json] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from rao_jax.layout import Layout, learner_init  # noqa: E402
from rao_jax.models import ModelConfig  # noqa: E402
from rao_jax.sampling import EngineConfig  # noqa: E402
from rao_jax.sampling.replicas import SamplerReplicas  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="configs/models/small_qwen3.json")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if jax.device_count() != 8:
        raise SystemExit(f"needs 8 devices, found {jax.device_count()} (XLA_FLAGS={os.environ.get('XLA_FLAGS')})")
    cfg = ModelConfig.from_json_file(args.model)
    layout = Layout.create(fsdp=2, tensor=4, replica_tensor=4)
    init = learner_init(cfg, layout.learner, make_optimizers=lambda m: ())
    model, _ = init.merge(init.init())
    params = nnx.state(model, nnx.Param)
    count = sum(x.size for x in jax.tree.leaves(params))
    replicas = SamplerReplicas(layout, cfg, EngineConfig(max_rows=2, num_pages=80, max_seq_len=1024,
                                                         max_prefill_tokens=1024),
                               weights_dtype="bfloat16", compute_dtype="bfloat16",
                               learner_param_shardings=init.param_shardings, learner_dtype="float32")
    replica_shardings = []
    for r in range(layout.replicas):
        mesh = layout.replica_mesh(r)
        replica_shardings.append(jax.tree.map(lambda s, mesh=mesh: NamedSharding(mesh, s.spec), replicas.shardings))

    def sync():
        replicas.sync(params, version=1)
        return [replicas.weights(i) for i in range(len(replicas.engines))]

    cast = jax.jit(lambda x: x.astype(jnp.bfloat16))

    def device_put():
        return [jax.tree.map(lambda s, p: jax.device_put(cast(p[...]), s), shardings, params)
                for shardings in replica_shardings]

    def host():
        fetched = jax.tree.map(lambda p: np.asarray(p).astype(jnp.bfloat16), params)
        return [jax.tree.map(lambda s, p: jax.device_put(p[...], s), shardings, fetched)
                for shardings in replica_shardings]

    ways = {"sync": sync, "device_put": device_put, "host": host}
    results = {name: fn() for name, fn in ways.items()}   # warm-up (compilation), and the values to compare
    for name in ("device_put", "host"):
        for mine, theirs in zip(results["sync"], results[name], strict=True):
            pairs = zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True)
            assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs), f"{name} disagrees with sync"
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, fn in ways.items():   # alternating, so drift affects all alike
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.model}: "
          f"{count / 1e6:.1f}M parameters, fp32 learner on fsdp=2 x tensor=4, 2 bf16 replicas of tensor=4 "
          f"(8 fake CPU devices), {args.rounds} rounds")
    base = statistics.median(times["sync"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<11} median {median:7.3f} s  (min {min(values):.3f}, max {max(values):.3f})  "
              f"{median / base:5.2f}x sync")


if __name__ == "__main__":
    main()
