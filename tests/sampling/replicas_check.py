"""Run in a subprocess with 4 fake CPU devices: two sampler replicas of 2 devices (tensor=2) under a
4-device learner, as one process of a pod drives them. Prints one JSON line of what it observed."""

from __future__ import annotations

import asyncio
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rao_jax.layout import Layout, learner_init
from rao_jax.models import tiny_config
from rao_jax.sampling import EngineConfig, SamplingEngine, SamplingParams
from rao_jax.sampling.replicas import SamplerReplicas

CONFIG = EngineConfig(max_rows=4, page_size=16, num_pages=64, max_seq_len=256, decode_steps=4,
                      max_prefill_tokens=256, min_prefill_bucket=64)


def main() -> None:
    cfg = tiny_config("qwen3", num_attention_heads=4, num_key_value_heads=2)
    layout = Layout.create(fsdp=2, tensor=2, replica_tensor=2)
    init = learner_init(cfg, layout.learner, make_optimizers=lambda m: ())
    model, _ = init.merge(init.init())
    replicas = SamplerReplicas(layout, cfg, CONFIG, weights_dtype="bfloat16", compute_dtype="float32",
                               learner_param_shardings=init.param_shardings, learner_dtype="float32")
    sync_s = replicas.sync(nnx.state(model, nnx.Param), version=0)
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    prompts = {tree: [(7 * tree + i) % cfg.vocab_size for i in range(5 + tree)] for tree in range(4)}

    async def roll():
        # two nodes per tree, as a policy names them: (name, tree_id, node_id)
        calls = [replicas.submit(prompts[tree], greedy, seq_id=("step1", tree, node))
                 for tree in range(4) for node in range(2)]
        out = await asyncio.gather(*calls)
        placed = {f"{tree}/{node}": replicas._seq_engine[("step1", tree, node)] for tree in range(4)
                  for node in range(2)}
        for tree in range(4):
            for node in range(2):
                await replicas.release(("step1", tree, node))
        return out, placed, len(replicas._seq_engine) + len(replicas._tree_engine)

    out, placed, left = asyncio.run(roll())
    # The same greedy continuations from one engine on one device, with the same bf16 weights.
    params = jax.tree.map(lambda x: np.asarray(x), replicas.weights(0))
    single = nnx.merge(replicas._graphdef, jax.tree.map(jnp.asarray, params))
    reference = SamplingEngine(single, CONFIG).generate([prompts[t] for t in range(4)], 6, 0.0)
    # A new version: the learner's parameters change, the replicas see them only after sync.
    nnx.update(model, jax.tree.map(lambda x: x * 2, nnx.state(model, nnx.Param)))
    before = float(jnp.abs(replicas.weights(1)["embed"][...].astype(jnp.float32)).sum())
    replicas.sync(nnx.state(model, nnx.Param), version=1)
    after = float(jnp.abs(replicas.weights(1)["embed"][...].astype(jnp.float32)).sum())
    tagged = asyncio.run(replicas.submit(prompts[0], greedy, seq_id=("step2", 9, 0)))
    print(json.dumps({
        "replicas": len(replicas.engines),
        "replica_devices": [sorted(d.id for d in e.mesh.devices.flat) for e in replicas.engines],
        "placed": placed, "left": left,
        "tokens": [c.tokens for c in out[::2]], "reference": [c.tokens for c in reference],
        "versions": [c.policy_version for c in out] + [tagged.policy_version],
        "embed_ratio": after / before, "sync_seconds": sync_s,
        "weights_spec": str(replicas.weights(0)["layers"][0]["self_attn"]["q_proj"][...].sharding.spec),
    }))


if __name__ == "__main__":
    main()
