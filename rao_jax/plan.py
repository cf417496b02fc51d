"""Per-device HBM plan, step-time and cost estimate of a trainer config on a Cloud TPU slice.

``python -m rao_jax.plan --config configs/qwen3_4b_v5p.py [--slice v5p-16]`` builds the model
abstractly (``nnx.eval_shape``: no weights are allocated), places its parameters on an abstract mesh
of the config's shape with the real rules tables (``rao_jax.parallel.sharding``), and adds up what
one device holds. It prints a table, the total against the chip's HBM, and exits 1 when the plan does
not fit (the message names the largest item).

What is counted, per device (the mesh is ``config.mesh``; "t" is its tensor size, "B" the product of
its batch axes data x fsdp x expert):

* resident all run long: parameters (``model.param_dtype``, TRAIN_RULES); AdamW's two moments
  (optax.adamw keeps them in the parameters' dtype, so fp32 parameters are the fp32 master copy and
  bf16 parameters have no master copy); the KV page pool (``engine.num_pages x page_size x
  2*kv_heads x head_dim x layers``, ``engine.cache_dtype``; pages over B, the head axis over t when t
  divides kv_heads).
* training phase: gradients (parameter dtype and shardings; twice when a step accumulates more than
  one micro-batch: the running sum and the current micro-batch's); activations of one micro-batch
  with per-layer remat (formula in ``train_activation_bytes``).
* sampling phase: a copy of the weights in the compute dtype with SAMPLE_RULES (the once-per-step
  reshard of the sharding recipe; counted even where the sampler reads the training weights, so the
  plan stays valid when it does not); prefill activations (``sample_activation_bytes``).

Peak = resident + max(training phase, sampling phase). The budget is the chip's HBM less a reserve
(default 10%) for XLA scratch, fragmentation and program code.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import math
import sys
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding

from rao_jax.config import TrainConfig, from_config_dict
from rao_jax.models import ModelConfig, Qwen3
from rao_jax.parallel.sharding import BATCH_AXES, MESH_AXES, SAMPLE_RULES, TRAIN_RULES, partition_spec

GB = 1e9
GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation.

    Attributes:
        hbm_bytes: HBM per chip (Google's published figure, in GB = 1e9 bytes).
        cores_per_chip: TensorCores per chip; a slice name ``vXX-N`` counts N of them.
        chips_per_host: chips per VM host in multi-host slices.
        peak_flops: peak dense bf16 FLOP/s per chip.
        usd_per_chip_hour: on-demand list price (indicative, see PRICES_AS_OF).
        runtime_version: the TPU VM software version tpu_scripts/ creates slices with.
    """

    hbm_bytes: float
    cores_per_chip: int
    chips_per_host: int
    peak_flops: float
    usd_per_chip_hour: float
    runtime_version: str


PRICES_AS_OF = "2025 list prices (us-central / us-east regions), indicative only: check cloud.google.com/tpu/pricing"
CHIPS: Mapping[str, Chip] = {
    "v5p": Chip(95 * GB, 2, 4, 459e12, 4.20, "v2-alpha-tpuv5"),
    "v6e": Chip(32 * GB, 1, 4, 918e12, 2.70, "v2-alpha-tpuv6e"),
}


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str
    chip_name: str
    chip: Chip
    chips: int

    @property
    def hosts(self) -> int:
        # v6e-8 and smaller are one host (v6e-8: one 8-chip VM); larger slices use 4-chip hosts.
        if self.chip_name == "v6e" and self.chips <= 8:
            return 1
        return max(1, self.chips // self.chip.chips_per_host)


def parse_slice(name: str) -> Slice:
    """``"v5p-16"`` -> 8 chips (v5p counts TensorCores, 2 per chip); ``"v6e-8"`` -> 8 chips."""
    chip_name, _, count = name.partition("-")
    if chip_name not in CHIPS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"unknown slice {name!r}: use <generation>-<cores>, generation one of {sorted(CHIPS)}")
    chip = CHIPS[chip_name]
    cores = int(count)
    if cores % chip.cores_per_chip:
        raise ValueError(f"slice {name!r}: {chip_name} counts {chip.cores_per_chip} cores per chip")
    return Slice(name, chip_name, chip, cores // chip.cores_per_chip)


@dataclasses.dataclass(frozen=True)
class Item:
    name: str
    phase: str  # "resident", "train" or "sample"
    bytes: float
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Plan:
    slice: Slice
    mesh: Mapping[str, int]
    items: tuple[Item, ...]
    budget_bytes: float
    param_count: int
    active_param_count: int
    tokens_per_step: int
    train_seconds: float
    sample_seconds: float
    warnings: tuple[str, ...] = ()

    def phase_bytes(self, phase: str) -> float:
        return sum(i.bytes for i in self.items if i.phase == phase)

    @property
    def peak_bytes(self) -> float:
        return self.phase_bytes("resident") + max(self.phase_bytes("train"), self.phase_bytes("sample"))

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget_bytes

    @property
    def largest(self) -> Item:
        return max(self.items, key=lambda i: i.bytes)

    @property
    def step_seconds(self) -> float:
        return self.train_seconds + self.sample_seconds

    @property
    def usd_per_step(self) -> float:
        return self.step_seconds / 3600 * self.slice.chips * self.slice.chip.usd_per_chip_hour


@functools.lru_cache(maxsize=8)
def abstract_model(model_cfg: ModelConfig, param_dtype) -> Qwen3:
    """The model as ShapeDtypeStructs with their logical-axis metadata (nothing allocated)."""
    return nnx.eval_shape(lambda: Qwen3(model_cfg, param_dtype=param_dtype, rngs=nnx.Rngs(0)))


def abstract_mesh(cfg: TrainConfig) -> AbstractMesh:
    sizes = tuple(getattr(cfg.mesh, a) for a in MESH_AXES)
    return AbstractMesh(sizes, MESH_AXES)


def param_leaves(model: Qwen3) -> list[tuple[str, tuple[int, ...], tuple]]:
    """(path, shape, logical axes) of every parameter."""
    state = nnx.state(model, nnx.Param)
    out = []
    for path, var in jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
        out.append((jax.tree_util.keystr(path), tuple(var.shape), var.get_metadata()["logical_axes"]))
    return out


def sharded_bytes(leaves, mesh: AbstractMesh, rules, itemsize: int) -> float:
    """Bytes one device holds of every parameter, from the shard shape of its NamedSharding."""
    total = 0
    for _, shape, axes in leaves:
        sharding = NamedSharding(mesh, partition_spec(axes, shape, mesh, rules))
        total += math.prod(sharding.shard_shape(shape)) * itemsize
    return float(total)


def active_params(model_cfg: ModelConfig, leaves) -> tuple[int, int]:
    """(all parameters, parameters in matmuls per token): experts scaled by top-k / experts; the
    input embedding is a lookup and counts only when tied (it is then also the LM head)."""
    total = active = 0
    for _, shape, axes in leaves:
        n = math.prod(shape)
        total += n
        if "exp" in axes:
            n = n * model_cfg.num_experts_per_tok // model_cfg.num_experts
        if axes == ("vocab", "embed") and not model_cfg.tie_word_embeddings:
            n = 0
        if "norm" in axes:
            n = 0
        active += n
    return total, active


def mlp_width(m: ModelConfig, tensor: int) -> float:
    """Per-token values one feed-forward block keeps on one device: gate, up and activated hidden
    (3 F / t); for MoE also the k routed copies of the token and the router logits (k D + 3 k Fm / t + E)."""
    if m.is_moe:
        k = m.num_experts_per_tok
        return k * m.hidden_size + 3 * k * m.moe_intermediate_size / tensor + m.num_experts
    return 3 * m.intermediate_size / tensor


def layer_working_bytes(m: ModelConfig, tokens: float, tensor: int, itemsize: int) -> float:
    """Live bytes of one decoder layer's forward + backward on ``tokens`` tokens.

    2 x tokens x itemsize x [(2*Hq + 2*K) * hd / t + W + 4 * D] + tokens x 4 * D * 4 (fp32 norms):
    q, k, v, attention output, the feed-forward block's W = ``mlp_width`` values, the residual
    temporaries, each with its gradient.
    Attention scores are excluded: a blockwise (flash / splash / ragged paged) kernel is assumed.
    """
    heads = (2 * m.num_attention_heads + 2 * m.num_key_value_heads) * m.head_dim / tensor
    width = heads + mlp_width(m, tensor) + 4 * m.hidden_size
    return 2 * tokens * itemsize * width + tokens * 4 * m.hidden_size * 4


def train_activation_bytes(m: ModelConfig, cfg: TrainConfig, rows_per_device: int, itemsize: int) -> float:
    """Activations of one micro-batch on one device, with every decoder layer rematerialised.

    b = micro_batch_rows / B rows of T = row_len tokens:
    layers x b*T*D*itemsize (saved layer inputs) + one layer's working set (``layer_working_bytes``)
    + b*T*D*4 (final hidden, fp32) + 3 x b*chunk*V/t*4 (one log-prob chunk: logits, softmax, grad).
    """
    tokens = rows_per_device * cfg.train.row_len
    t = cfg.mesh.tensor
    saved = m.num_hidden_layers * tokens * m.hidden_size * itemsize
    logits = 3 * rows_per_device * cfg.train.logprob_chunk * m.vocab_size / t * 4
    return saved + layer_working_bytes(m, tokens, t, itemsize) + tokens * m.hidden_size * 4 + logits


def sample_activation_bytes(m: ModelConfig, cfg: TrainConfig, itemsize: int) -> float:
    """One prefill call of ``engine.max_prefill_tokens`` tokens (forward only: half the working set)
    + the sampled rows' fp32 logits (``engine.max_rows x V / t x 4``, twice for the softmax)."""
    t = cfg.mesh.tensor
    prefill = layer_working_bytes(m, cfg.engine.max_prefill_tokens, t, itemsize) / 2
    return prefill + 2 * cfg.engine.max_rows * m.vocab_size / t * 4


def kv_pool_bytes(m: ModelConfig, cfg: TrainConfig, mesh: AbstractMesh) -> tuple[float, str]:
    """The page pool on one device: pages split over the batch axes, K/V heads over ``tensor`` when it
    divides kv_heads (the interleaved key/value pairs stay together)."""
    e = cfg.engine
    page_spec = partition_spec(("pages",), (e.num_pages,), mesh, {"pages": BATCH_AXES})
    pages = NamedSharding(mesh, page_spec).shard_shape((e.num_pages,))[0]
    t = cfg.mesh.tensor
    heads = m.num_key_value_heads // t if m.num_key_value_heads % t == 0 else m.num_key_value_heads
    per = m.num_hidden_layers * e.page_size * 2 * heads * m.head_dim * jnp.dtype(e.cache_dtype).itemsize
    note = f"{pages} of {e.num_pages} pages x {e.page_size} tok, {2 * heads} K/V heads"
    return float(pages * per), note


def plan(cfg: TrainConfig, slice_name: str = "", *, reserve: float = 0.10, mfu: float = 0.40,
         sample_mfu: float = 0.10, tokens_per_step: int = 0, nodes_per_tree: float = 4.0) -> Plan:
    """The HBM plan and the time / cost estimate of ``cfg`` on ``slice_name`` (default: ``cfg.slice``).

    Args:
        reserve: fraction of HBM kept free (XLA scratch, fragmentation, program code).
        mfu: model-FLOPs utilisation assumed for the training step.
        sample_mfu: the same for sampling (decode is memory-bound, hence lower).
        tokens_per_step: tokens trained (and sampled) per RL step; 0 estimates them as
            tasks_per_step x group_size x nodes_per_tree x (max_seq_len / 2).
    """
    sl = parse_slice(slice_name or cfg.slice)
    mesh = abstract_mesh(cfg)
    devices = math.prod(mesh.shape.values())
    if devices != sl.chips:
        raise ValueError(f"mesh {dict(mesh.shape)} has {devices} devices; slice {sl.name} has {sl.chips} chips")
    model_cfg = ModelConfig.from_json_file(_config_json(cfg.model.config_json))
    param_dtype = jnp.dtype(cfg.model.param_dtype)
    compute = jnp.dtype(cfg.model.dtype).itemsize
    leaves = param_leaves(abstract_model(model_cfg, param_dtype.name))
    batch_shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    rows = cfg.train.micro_batch_rows
    if rows % batch_shards:
        raise ValueError(f"train.micro_batch_rows ({rows}) must be a multiple of the batch axes "
                         f"data x fsdp x expert = {batch_shards}")
    rows_per_device = rows // batch_shards
    n_params, n_active = active_params(model_cfg, leaves)
    params = sharded_bytes(leaves, mesh, TRAIN_RULES, param_dtype.itemsize)
    kv, kv_note = kv_pool_bytes(model_cfg, cfg, mesh)
    if not tokens_per_step:
        tree_tokens = nodes_per_tree * cfg.engine.max_seq_len / 2
        tokens_per_step = int(cfg.rollout.tasks_per_step * cfg.rollout.group_size * tree_tokens)
    micro_steps = max(1, math.ceil(tokens_per_step / (rows * cfg.train.row_len)))
    grads = params * (2 if micro_steps > 1 else 1)
    items = (
        Item("parameters", "resident", params, f"{cfg.model.param_dtype}, TRAIN_RULES"),
        Item("adamw moments (2)", "resident", 2 * params, f"{cfg.model.param_dtype} (optax.adamw default)"),
        Item("kv page pool", "resident", kv, kv_note),
        Item("gradients", "train", grads, "sum + current micro-batch" if micro_steps > 1 else "one micro-batch"),
        Item("train activations", "train", train_activation_bytes(model_cfg, cfg, rows_per_device, compute),
             f"{rows_per_device} row(s) x {cfg.train.row_len} tok, remat"),
        Item("sampling weights", "sample", sharded_bytes(leaves, mesh, SAMPLE_RULES, compute),
             f"{cfg.model.dtype}, SAMPLE_RULES"),
        Item("sample activations", "sample", sample_activation_bytes(model_cfg, cfg, compute),
             f"prefill {cfg.engine.max_prefill_tokens} tok"),
    )
    flops_train, flops_sample = step_flops(model_cfg, n_active, tokens_per_step, cfg.engine.max_seq_len)
    peak = sl.chips * sl.chip.peak_flops
    warnings = []
    if cfg.model.param_dtype == "bfloat16" and cfg.optim.learning_rate < 1e-4:
        warnings.append(f"bf16 parameters without an fp32 master copy: updates of lr {cfg.optim.learning_rate:g} "
                        "fall below bf16 resolution; use model.param_dtype='float32'")
    page_share = cfg.engine.num_pages // batch_shards
    if page_share - 1 < cfg.engine.max_seq_len // cfg.engine.page_size:
        warnings.append(f"each sampler replica's {page_share} pages hold less than one max_seq_len sequence")
    return Plan(sl, dict(mesh.shape), items, sl.chip.hbm_bytes * (1 - reserve), n_params, n_active,
                tokens_per_step, flops_train / (peak * mfu), flops_sample / (peak * sample_mfu), tuple(warnings))


def step_flops(m: ModelConfig, active: int, tokens: int, context: int) -> tuple[float, float]:
    """(training, sampling) FLOPs of one step: 6 N T and 2 N T for N active matmul parameters, plus
    causal attention at an average context of half of ``context``: 12 and 4 x L x Hq x hd x ctx / 2."""
    attn = m.num_hidden_layers * m.num_attention_heads * m.head_dim * context / 2
    return tokens * (6 * active + 12 * attn), tokens * (2 * active + 4 * attn)


def _config_json(path: str) -> str:
    return path if path.endswith(".json") else f"{path.rstrip('/')}/config.json"


def load_config(path: str) -> TrainConfig:
    """Runs ``get_config()`` of a config file and validates it."""
    spec = importlib.util.spec_from_file_location("_rao_plan_config", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return from_config_dict(module.get_config())


def format_plan(p: Plan, cfg: TrainConfig) -> str:
    mesh = " ".join(f"{k}={v}" for k, v in p.mesh.items())
    lines = [f"slice {p.slice.name}: {p.slice.chips} chips on {p.slice.hosts} host(s), "
             f"{p.slice.chip.hbm_bytes / GIB:.1f} GiB HBM per chip; mesh {mesh}",
             f"model {cfg.model.config_json}: {p.param_count / 1e9:.2f}B params, "
             f"{p.active_param_count / 1e9:.2f}B active in matmuls per token",
             "", f"{'per device':<20} {'phase':<9} {'GiB':>8}  note", "-" * 78]
    for i in p.items:
        lines.append(f"{i.name:<20} {i.phase:<9} {i.bytes / GIB:>8.2f}  {i.note}")
    lines += ["-" * 78,
              f"{'resident':<30} {p.phase_bytes('resident') / GIB:>8.2f}",
              f"{'+ max(train, sample)':<30} {max(p.phase_bytes('train'), p.phase_bytes('sample')) / GIB:>8.2f}",
              f"{'peak':<30} {p.peak_bytes / GIB:>8.2f}",
              f"{'budget (HBM less reserve)':<30} {p.budget_bytes / GIB:>8.2f}",
              f"{'headroom':<30} {(p.budget_bytes - p.peak_bytes) / GIB:>8.2f}  "
              f"({'FITS' if p.fits else 'OVER BUDGET'})", ""]
    lines += [f"step estimate: {p.tokens_per_step / 1e6:.2f}M tokens trained and sampled per step; "
              f"train {p.train_seconds:.0f} s + sample {p.sample_seconds:.0f} s = {p.step_seconds:.0f} s",
              f"cost: ${p.usd_per_step:.2f} per step, ${p.usd_per_step * 3600 / max(p.step_seconds, 1e-9):.0f} "
              f"per hour ({p.slice.chips} chips x ${p.slice.chip.usd_per_chip_hour:.2f}/chip-hour on demand; "
              f"{PRICES_AS_OF})"]
    lines += [f"warning: {w}" for w in p.warnings]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rao_jax.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a config file, configs/<name>.py")
    parser.add_argument("--slice", default="", help="e.g. v5p-16, v6e-8 (default: the config's `slice`)")
    parser.add_argument("--reserve", type=float, default=0.10, help="fraction of HBM kept free (default 0.10)")
    parser.add_argument("--mfu", type=float, default=0.40, help="training MFU assumed (default 0.40)")
    parser.add_argument("--sample-mfu", type=float, default=0.10, help="sampling MFU assumed (default 0.10)")
    parser.add_argument("--tokens-per-step", type=int, default=0, help="tokens per RL step (default: estimated)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    try:
        p = plan(cfg, args.slice, reserve=args.reserve, mfu=args.mfu, sample_mfu=args.sample_mfu,
                 tokens_per_step=args.tokens_per_step)
    except ValueError as e:
        print(f"plan: {e}", file=sys.stderr)
        return 2
    print(format_plan(p, cfg))
    if not p.fits:
        big = p.largest
        print(f"plan: OVER BUDGET on {p.slice.name}: peak {p.peak_bytes / GIB:.2f} GiB > budget "
              f"{p.budget_bytes / GIB:.2f} GiB per device; largest item: {big.name} ({big.bytes / GIB:.2f} GiB, "
              f"{big.note})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
