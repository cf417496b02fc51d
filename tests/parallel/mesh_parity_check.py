"""Run in a subprocess with 8 fake CPU devices: sharded vs single-device loss and gradients.

Prints one JSON line: max abs differences and the specs that the mesh actually applied.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rao_jax.models import Qwen3, tiny_config
from rao_jax.parallel.sharding import batch_sharding, make_mesh, param_shardings, shard_model
from rao_jax.rl.losses import cispo_loss
from rao_jax.rl.packing import NodeSequence, pack_sequences, token_logprobs


def main(model_type: str) -> None:
    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    nodes = []
    for n in (23, 9, 40, 5, 17, 31, 12, 28):
        mask = (rng.uniform(size=n) > 0.4).astype(np.float32)
        mask[0] = 0
        logp = np.where(mask > 0, -rng.uniform(0.5, 4.0, n), 0).astype(np.float32)
        nodes.append(NodeSequence(rng.integers(0, 128, n).astype(np.int32), mask, logp, float(rng.normal())))
    batch = pack_sequences(nodes, row_len=64, num_rows=4)
    arrays = [jnp.asarray(x) for x in (batch.tokens, batch.positions, batch.segment_ids, batch.targets,
                                       batch.behaviour_logp, batch.advantage, batch.loss_mask)]

    def loss(model, tokens, positions, segments, targets, old, adv, mask):
        logp = token_logprobs(model, tokens, positions, segments, targets, chunk=16)
        return cispo_loss(logp, old, adv, mask)[0]

    step = nnx.jit(nnx.value_and_grad(loss))
    cfg = tiny_config(model_type)
    single = Qwen3(cfg, rngs=nnx.Rngs(0))
    value_1, grads_1 = step(single, *arrays)

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sharded = shard_model(Qwen3(cfg, rngs=nnx.Rngs(0)), mesh)
    placed = [jax.device_put(a, batch_sharding(mesh)) for a in arrays]
    with jax.set_mesh(mesh):
        value_8, grads_8 = step(sharded, *placed)
    grad_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(grads_1),
                                                                     jax.tree.leaves(grads_8), strict=True))
    specs = {"/".join(map(str, path)): str(s.spec) for path, s in
             nnx.to_flat_state(param_shardings(sharded, mesh))}
    devices_q = len(sharded.layers[0].self_attn.q_proj[...].sharding.device_set)
    print(json.dumps({"value_diff": abs(float(value_1) - float(value_8)), "grad_diff": grad_diff,
                      "value": float(value_1), "specs": specs, "q_proj_devices": devices_q}))


if __name__ == "__main__":
    main(sys.argv[1])
