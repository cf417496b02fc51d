"""Run in a subprocess with 8 fake CPU devices: expert-parallel MoE vs the single-device result.

``python expert_parity_check.py MODE`` prints one JSON line. The tiny Qwen3-MoE model has 8 experts.

* ``data2_expert4`` / ``fsdp2_expert2_tensor2``: on that mesh, the model's logits and the packed
  CISPO loss and its gradients, against one device.
* ``layer``: the MoE layer alone (forward and router stats) on both meshes and on an explicit-axes
  mesh, with a token count that needs padding; a tight capacity drops rows and counts them; E % ep != 0 is refused.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rao_jax.models import Qwen3, tiny_config
from rao_jax.models.moe import MoEBlock
from rao_jax.parallel.expert import configure_expert_parallel
from rao_jax.parallel.sharding import batch_sharding, make_mesh, shard_model
from rao_jax.rl.losses import cispo_loss
from rao_jax.rl.packing import NodeSequence, pack_sequences, token_logprobs

MESHES = {"data2_expert4": dict(data=2, expert=4), "fsdp2_expert2_tensor2": dict(fsdp=2, expert=2, tensor=2)}
CONFIG = tiny_config("qwen3_moe", num_experts=8)


def packed_batch():
    rng = np.random.default_rng(0)
    nodes = []
    for n in (23, 9, 40, 5, 17, 31, 12, 28):
        mask = (rng.uniform(size=n) > 0.4).astype(np.float32)
        mask[0] = 0
        logp = np.where(mask > 0, -rng.uniform(0.5, 4.0, n), 0).astype(np.float32)
        nodes.append(NodeSequence(rng.integers(0, 128, n).astype(np.int32), mask, logp, float(rng.normal())))
    batch = pack_sequences(nodes, row_len=64, num_rows=8)  # 8 rows: one per token shard
    return [jnp.asarray(x) for x in (batch.tokens, batch.positions, batch.segment_ids, batch.targets,
                                     batch.behaviour_logp, batch.advantage, batch.loss_mask)]


def loss(model, tokens, positions, segments, targets, old, adv, mask):
    """The packed CISPO loss, with the model's logits as the auxiliary output (one compile for both)."""
    logp = token_logprobs(model, tokens, positions, segments, targets, chunk=16)
    return cispo_loss(logp, old, adv, mask)[0], model(tokens, positions, segments)


def max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def max_rel_diff(a, b) -> float:
    """Per leaf, max |a - b| / max |a|; the worst leaf."""
    return max(float(jnp.max(jnp.abs(x - y)) / jnp.maximum(jnp.max(jnp.abs(x)), 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def model_parity(name: str) -> dict:
    arrays = packed_batch()
    step = nnx.jit(nnx.value_and_grad(loss, has_aux=True))
    (value_1, logits_1), grads_1 = step(Qwen3(CONFIG, rngs=nnx.Rngs(0)), *arrays)
    mesh = make_mesh(**MESHES[name])
    sharded = shard_model(Qwen3(CONFIG, rngs=nnx.Rngs(0)), mesh)
    placed = [jax.device_put(a, batch_sharding(mesh)) for a in arrays]
    with jax.set_mesh(mesh):
        (value_8, logits_8), grads_8 = step(sharded, *placed)
        hlo = step.lower(sharded, *placed).as_text() if hasattr(step, "lower") else ""
    experts = lambda g: [g["layers"][i]["mlp"][w] for i in range(CONFIG.num_hidden_layers)  # noqa: E731
                         for w in ("gate", "up", "down")]
    return {"value": float(value_1), "value_diff": abs(float(value_1) - float(value_8)),
            "logits_diff": max_diff(logits_1, logits_8), "grad_diff": max_diff(grads_1, grads_8),
            "grad_rel_diff": max_rel_diff(grads_1, grads_8),
            "expert_grad_min_max": min(float(jnp.abs(g[...]).max()) for g in experts(grads_1)),
            "expert_grad_rel_diff": max_rel_diff(experts(grads_1), experts(grads_8)),
            "all_to_all_in_hlo": ("all_to_all" in hlo or "all-to-all" in hlo) if hlo else None,
            "expert_weight_devices": len(sharded.layers[0].mlp.gate[...].sharding.device_set)}


def layer_parity() -> dict:
    layer_fn = nnx.jit(lambda layer, x, mask: layer(x, mask))
    layer = MoEBlock(CONFIG, param_dtype=jnp.float32, dtype=jnp.float32, rngs=nnx.Rngs(1))
    # 250 tokens: not a multiple of the 8 token shards, so the padding path is exercised too.
    x = jax.random.normal(jax.random.key(2), (2, 125, CONFIG.hidden_size), jnp.float32)
    mask = jnp.ones(x.shape[:2], jnp.float32)
    out_1, stats_1 = layer_fn(layer, x, mask)
    result = {}
    for name, shape in MESHES.items():
        with jax.set_mesh(make_mesh(**shape)):
            out_8, stats_8 = layer_fn(layer, x, mask)
            hlo = jax.jit(lambda x, m: layer(x, m)).lower(x, mask).as_text()
        result[name] = {"out_diff": max_diff(out_1, out_8), "dropped": float(stats_8.dropped),
                        "stats_rel_diff": max_diff(stats_1, stats_8) / float(stats_1.tokens),
                        "all_to_all_in_hlo": "all_to_all" in hlo or "all-to-all" in hlo}
    # A mesh with explicit axes (jax.make_mesh's default), tokens sharded by row: same result and layout.
    explicit = jax.make_mesh((2, 1, 4, 1), ("data", "fsdp", "expert", "tensor"),
                             axis_types=(jax.sharding.AxisType.Explicit,) * 4)
    with jax.set_mesh(explicit):
        x_rows = jax.sharding.reshard(x, jax.sharding.PartitionSpec("data", None, None))
        fresh = MoEBlock(CONFIG, param_dtype=jnp.float32, dtype=jnp.float32, rngs=nnx.Rngs(1))  # same weights
        out_e, _ = layer_fn(fresh, x_rows, mask)
    result["explicit"] = {"out_diff": max_diff(out_1, out_e),
                          "same_layout": str(out_e.sharding.spec) == str(x_rows.sharding.spec)}
    # A tight capacity drops rows and says so; capacity factor ep (C = rows) is exact again.
    mesh = make_mesh(data=2, expert=4)
    with jax.set_mesh(mesh):
        configure_expert_parallel(layer, capacity_factor=1.0)
        out_tight, stats_tight = layer_fn(layer, x, mask)
        configure_expert_parallel(layer, capacity_factor=4.0)
        out_full, stats_full = layer_fn(layer, x, mask)
    result["capacity"] = {"tight_dropped": float(stats_tight.dropped), "tight_diff": max_diff(out_1, out_tight),
                          "full_dropped": float(stats_full.dropped), "full_diff": max_diff(out_1, out_full)}
    bad = MoEBlock(tiny_config("qwen3_moe", num_experts=6), param_dtype=jnp.float32, dtype=jnp.float32,
                   rngs=nnx.Rngs(0))
    result["indivisible_error"] = None
    try:
        with jax.set_mesh(mesh):
            layer_fn(bad, x, mask)
    except ValueError as err:
        result["indivisible_error"] = str(err)
    return result


def main(mode: str) -> None:
    start = time.perf_counter()
    assert len(jax.devices()) == 8, jax.devices()
    result = layer_parity() if mode == "layer" else model_parity(mode)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
