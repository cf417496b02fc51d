"""Run in a subprocess with as many fake CPU devices as the pod config's slice has chips.

``python pod_twin_check.py configs/qwen3_4b_v5p.py OUT_DIR`` builds the config's scaled-down twin
(``twin_config``: the same meshes, rules, replica shape and dtypes; 2 layers, a 512-token vocabulary,
a 64-page pool), allocates it with ``rao_jax.runtime.allocate`` (what a run allocates) and prints one
JSON line: per item, the bytes each device really holds and the bytes ``python -m rao_jax.plan``
counts for the twin; the replicas' weight dtype and pool layout; and what the compiled decode and
prefill steps of replica 0 communicate.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rao_jax import plan as plan_lib
from rao_jax.config import config_file as load_config_file
from rao_jax.config import from_config_dict
from rao_jax.models import ModelConfig
from rao_jax.runtime import allocate, layout_of
from rao_jax.sampling import sampler
from rao_jax.sampling.batch import DecodeBatch, PrefillBatch, SamplingArrays
from rao_jax.train import make_optimizers


def twin_config(config_file: str, out_dir: Path):
    config = load_config_file(config_file)
    model = ModelConfig.from_json_file(config.model.config_json)
    small = dataclasses.replace(
        model, num_hidden_layers=2, vocab_size=512, hidden_size=64, intermediate_size=256,
        num_experts=16 if model.is_moe else 0, num_experts_per_tok=2 if model.is_moe else 0,
        moe_intermediate_size=64 if model.is_moe else 0)
    path = out_dir / "twin_config.json"
    path.write_text(json.dumps(small.to_hf_dict()))
    config.model.config_json = str(path)
    config.model.init_checkpoint = ""
    config.model.attn_impl = "xla"          # the Pallas training kernel needs a TPU
    config.engine.attn_impl = "reference"   # likewise the sampler's (head_dim stays 128: it could run)
    config.engine.num_pages = 64
    config.engine.max_seq_len = 1024
    config.engine.max_prefill_tokens = 1024
    config.engine.max_rows = 8
    config.rollout.max_context = 1024
    config.train.row_len = 1024
    config.workdir = str(out_dir / "run")
    return from_config_dict(config)


def per_device(tree) -> dict[int, int]:
    """Bytes each device holds of a pytree of arrays."""
    held: collections.Counter = collections.Counter()
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            held[shard.device.id] += shard.data.nbytes
    return dict(held)


def collectives(hlo: str) -> dict:
    """The collectives of a compiled program and the most devices any one of them spans (from its
    ``replica_groups`` in any of XLA's three spellings: explicit lists, iota ``[groups,size]<=[n]``,
    and mesh axes ``mesh['axis_0'=a,...] {'axis_i',...}``)."""
    ops = re.findall(r"= \S+ (all-gather|all-reduce|all-to-all|reduce-scatter|collective-permute)(?:-start)?\(", hlo)
    sizes = [len(g.split(",")) for g in re.findall(r"replica_groups=\{\{([\d,]+)\}", hlo)]
    sizes += [int(size) for size in re.findall(r"replica_groups=\[\d+,(\d+)\]<=", hlo)]
    for axes, used in re.findall(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", hlo):
        shape = dict(re.findall(r"'(\w+)'=(\d+)", axes))
        sizes.append(int(np.prod([int(shape[a]) for a in re.findall(r"'(\w+)'", used)])))
    return {"ops": sorted(collections.Counter(ops).items()), "largest_group": max(sizes, default=0)}


def decode_and_prefill_hlo(engine) -> tuple[str, str, list[int]]:
    cfg = engine.config
    rows, width = cfg.max_rows, cfg.pages_per_seq
    zeros = np.zeros(rows, np.int32)
    table = np.zeros((rows, width), np.int32)
    sampling = SamplingArrays(np.ones(rows, np.float32), zeros, np.ones(rows, np.float32))
    key = jax.random.key(0)
    decode_batch = DecodeBatch(last=zeros, pos=zeros, active=np.ones(rows, bool), remaining=zeros + 4,
                               history=np.full((rows, cfg.max_stop_len), -2, np.int32),
                               stops=np.full((rows, cfg.max_stops, cfg.max_stop_len), -1, np.int32),
                               page_table=table, sampling=sampling)
    n = 128
    prefill_batch = PrefillBatch(tokens=np.zeros(n, np.int32), pos=np.arange(n, dtype=np.int32),
                                 row=np.zeros(n, np.int32), valid=np.ones(n, bool), page_table=table,
                                 last_index=zeros + n - 1, kv_lens=zeros + n, cu_q_lens=np.zeros(rows + 1, np.int32),
                                 num_rows=np.array([rows], np.int32), sampling=sampling)
    with engine._on_mesh():
        decode = sampler.decode_reads_pages.lower(
            engine._graphdef, engine._state, engine._cache, decode_batch, key, n_steps=cfg.decode_steps,
            attn_impl=cfg.attn_impl, candidates=0).compile()
        prefill = sampler.prefill.lower(
            engine._graphdef, engine._state, engine._cache, prefill_batch, key, attn_impl=cfg.attn_impl,
            candidates=0, block=cfg.prefill_block).compile()
    devices = sorted({d.id for s in jax.tree.leaves(decode.input_shardings) for d in s.device_set})
    return decode.as_text(), prefill.as_text(), devices


def main(config_file: str, out_dir: str) -> None:
    out = Path(out_dir)
    config = twin_config(config_file, out)
    layout = layout_of(config)
    model_cfg = ModelConfig.from_json_file(config.model.config_json)
    model, optimizers, replicas = allocate(config, model_cfg, layout, make_optimizers(config))
    planned = {i.name: i.bytes for i in plan_lib.plan(config).items}
    real = {
        "parameters": per_device(nnx.state(model, nnx.Param)),
        "optimizer": per_device(nnx.state(optimizers)),
        "sampler weights": per_device([nnx.state(e.model, nnx.Param) for e in replicas.engines]),
        "kv page pool": per_device([e._cache for e in replicas.engines]),
    }
    optimizer_item = next(name for name in planned if name.startswith("adamw moments"))
    engine = replicas.engines[0]
    decode, prefill, decode_devices = decode_and_prefill_hlo(engine)
    replica0 = sorted(d.id for d in layout.replica_mesh(0).devices.flat)
    print(json.dumps({
        "devices": jax.device_count(),
        "replicas": len(replicas.engines),
        "real": real,
        "planned": {"parameters": planned["parameters"], "optimizer": planned[optimizer_item],
                    "sampler weights": planned["sampler weights"], "kv page pool": planned["kv page pool"]},
        "weights_dtypes": sorted({str(x.dtype) for x in jax.tree.leaves(nnx.state(engine.model, nnx.Param))}),
        "pool_spec": str(engine._cache[0].sharding.spec),
        "pool_dtype": str(engine._cache[0].dtype),
        "replica0_devices": replica0,
        "decode_devices": decode_devices,
        "decode": collectives(decode),
        "prefill": collectives(prefill),
        "replica_size": len(replica0),
    }))


if __name__ == "__main__":
    jnp.zeros(1)  # initialise the backend before anything else prints
    main(*sys.argv[1:])
