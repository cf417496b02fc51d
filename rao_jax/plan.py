"""Per-device HBM plan, step-time and cost estimate of a trainer config on a Cloud TPU slice.

``python -m rao_jax.plan --config configs/qwen3_4b_v5p.py [--slice v5p-16]`` lays the slice out as
a run would (``rao_jax.layout.Layout`` on abstract meshes: the learner mesh and the sampler
replicas) and evaluates, with ``jax.eval_shape``, the very constructors a run allocates its
long-lived arrays with (``rao_jax.runtime.allocate``): nothing is allocated, and what the plan
counts per device is what the run holds. It prints a table, the total against the chip's HBM, and
exits 1 when the plan does not fit (the message names the largest item).

Per device (the learner mesh is ``config.mesh``, "t" its tensor size, "B" the product of its batch
axes data x fsdp x expert; a sampler replica is ``engine.replica_expert x replica_tensor`` devices
of one host):

* from the constructors (exact): the learner's parameters (``model.param_dtype``, TRAIN_RULES);
  its optimizer moments (AdamW's two, in the parameters' dtype and layout: fp32 parameters are the
  fp32 master copy; the warm start's optimizer too when ``sft.steps`` > 0); the replica's weights
  (``engine.weights_dtype``, SAMPLE_RULES: whole along the model dimension and the vocabulary,
  heads / MLP units / experts split inside the replica); the replica's KV page pool
  (``engine.num_pages`` pages, K/V heads over the replica's ``tensor``).
* from formulas: gradients (the parameters' bytes; twice when a step accumulates micro-batches:
  the running sum and the current micro-batch's); activations of one micro-batch with per-layer
  remat (``train_activation_bytes``); one prefill call's activations (``sample_activation_bytes``).

Phases: with ``rl.staleness`` 0 the replicas' weight copies exist only while sampling (the trainer
frees them for the update and resyncs after), so they count in the sampling phase; with staleness
> 0 rollouts continue during the update and they are resident. Peak = resident + max(training
phase, sampling phase). The budget is the chip's HBM less a reserve (default 10%) for XLA scratch,
fragmentation and program code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rao_jax.config import TrainConfig, config_file, from_config_dict
from rao_jax.errors import ConfigError
from rao_jax.layout import Layout, bytes_per_device, sampler_init
from rao_jax.models import ModelConfig
from rao_jax.parallel.mesh import batch_shards
from rao_jax.sampling.kv_cache import pool_init

GB = 1e9
GIB = 1024**3
TIGHT_HEADROOM = 2 * GIB   # less than this over the reserve gets a warning


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation.

    Attributes:
        hbm_bytes: HBM per chip as the Cloud TPU docs give it (v5p: 95 GiB; v6e: 32 GB = 32e9 bytes).
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
    "v5p": Chip(95 * GIB, 2, 4, 459e12, 4.20, "v2-alpha-tpuv5"),
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
    replicas: int = 1

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


def active_params(model_cfg: ModelConfig, params: nnx.State) -> tuple[int, int]:
    """(all parameters, parameters in matmuls per token): experts scaled by top-k / experts; the
    input embedding is a lookup and counts only when tied (it is then also the LM head)."""
    total = active = 0
    for variable in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        axes = variable.get_metadata()["logical_axes"]
        n = math.prod(variable.shape)
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
    """Activations of one micro-batch on one device.

    b = micro_batch_rows / B rows of T = row_len tokens. With ``model.remat`` (each decoder layer
    recomputed in the backward pass): layers x b*T*D*itemsize (saved layer inputs) + one layer's
    working set (``layer_working_bytes``); without: every layer keeps its forward half of that
    working set. Either way + b*T*D*4 (final hidden, fp32) + 3 x b*chunk*V/t*4 (one log-prob chunk:
    logits, softmax, grad).
    """
    tokens = rows_per_device * cfg.train.row_len
    t = cfg.mesh.tensor
    layer = layer_working_bytes(m, tokens, t, itemsize)
    if cfg.model.remat:
        kept = m.num_hidden_layers * tokens * m.hidden_size * itemsize + layer
    else:
        kept = m.num_hidden_layers * layer / 2 + layer
    logits = 3 * rows_per_device * cfg.train.logprob_chunk * m.vocab_size / t * 4
    return kept + tokens * m.hidden_size * 4 + logits


def sample_activation_bytes(m: ModelConfig, cfg: TrainConfig, itemsize: int) -> float:
    """One prefill call of ``engine.max_prefill_tokens`` tokens on a replica (forward only: half the
    working set, heads and MLP split over the replica's ``tensor``) + the sampled rows' fp32 logits
    (``engine.max_rows x V x 4``, twice for the softmax; the vocabulary is whole in a replica)."""
    t = cfg.engine.replica_tensor
    prefill = layer_working_bytes(m, cfg.engine.max_prefill_tokens, t, itemsize) / 2
    return prefill + 2 * cfg.engine.max_rows * m.vocab_size * 4


def layout_of_slice(cfg: TrainConfig, sl: Slice) -> Layout:
    """The run's layout on ``sl``, without devices.

    Raises:
        ValueError: the mesh does not have the slice's chip count, a tensor group or a sampler
            replica does not fit one host.
    """
    m, e = cfg.mesh, cfg.engine
    devices = m.data * m.fsdp * m.expert * m.tensor
    if devices != sl.chips:
        raise ValueError(f"mesh data={m.data} fsdp={m.fsdp} expert={m.expert} tensor={m.tensor} has {devices} "
                         f"devices; slice {sl.name} has {sl.chips} chips")
    per_host = sl.chips // sl.hosts
    replica = e.replica_expert * e.replica_tensor
    if per_host % replica:
        raise ValueError(f"a sampler replica of engine.replica_expert x replica_tensor = {replica} chips does not "
                         f"fit the {per_host} chips of one {sl.name} host")
    if sl.hosts > 1 and per_host % m.tensor:
        raise ValueError(f"mesh.tensor ({m.tensor}) must divide the {per_host} chips of one {sl.name} host")
    return Layout.abstract(data=m.data, fsdp=m.fsdp, expert=m.expert, tensor=m.tensor,
                           replica_expert=e.replica_expert, replica_tensor=e.replica_tensor)


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Bytes per device of what ``rao_jax.runtime.allocate`` builds, from its own constructors."""

    params: int
    optimizer: int
    sampler_weights: int   # 0 when the replicas read the learner's arrays
    kv_pool: int
    param_count: int
    active_param_count: int


def allocation(cfg: TrainConfig, layout: Layout) -> Allocation:
    """``jax.eval_shape`` of the learner's, the replicas' and the page pool's constructors on ``layout``."""
    from rao_jax.runtime import engine_config, learner_constructor, sampler_dtype
    from rao_jax.train import make_optimizers

    model_cfg = ModelConfig.from_json_file(_config_json(cfg.model.config_json))
    init = learner_constructor(cfg, model_cfg, layout, make_optimizers(cfg))
    model, optimizers = init.merge(jax.eval_shape(init.init))
    params = nnx.state(model, nnx.Param)
    sampler = sampler_init(model_cfg, layout, weights_dtype=sampler_dtype(cfg), compute_dtype=cfg.model.dtype,
                           learner_param_shardings=init.param_shardings, learner_dtype=cfg.model.param_dtype)
    weights = 0 if sampler.sync is None else bytes_per_device(jax.eval_shape(sampler.sync, params))
    e = engine_config(cfg)
    pool = jax.eval_shape(pool_init(model_cfg, e.num_pages, e.page_size, jnp.dtype(e.cache_dtype),
                                    layout.replica_mesh(0)))
    total, active = active_params(model_cfg, params)
    return Allocation(bytes_per_device(nnx.state(model)), bytes_per_device(nnx.state(optimizers)), weights,
                      bytes_per_device(pool), total, active)


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
    layout = layout_of_slice(cfg, sl)
    model_cfg = ModelConfig.from_json_file(_config_json(cfg.model.config_json))
    compute = jnp.dtype(cfg.model.dtype).itemsize
    shards = batch_shards(layout.learner)
    rows = cfg.train.micro_batch_rows
    if rows % shards:
        raise ValueError(f"train.micro_batch_rows ({rows}) must be a multiple of the batch axes "
                         f"data x fsdp x expert = {shards}")
    rows_per_device = rows // shards
    alloc = allocation(cfg, layout)
    if not tokens_per_step:
        tree_tokens = nodes_per_tree * cfg.engine.max_seq_len / 2
        tokens_per_step = int(cfg.rollout.tasks_per_step * cfg.rollout.group_size * tree_tokens)
    micro_steps = max(1, math.ceil(tokens_per_step / (rows * cfg.train.row_len)))
    e = cfg.engine
    kv_heads = model_cfg.num_key_value_heads
    split = e.replica_tensor if kv_heads % e.replica_tensor == 0 else 1
    replica = f"replica {e.replica_expert}x{e.replica_tensor} chips"
    optimizers = "adamw moments (2)" + (" x2 (rl + sft)" if cfg.sft.steps else "")
    items = (
        Item("parameters", "resident", alloc.params, f"{cfg.model.param_dtype}, TRAIN_RULES"),
        Item(optimizers, "resident", alloc.optimizer, f"{cfg.model.param_dtype}, laid out as the parameters"),
        Item("kv page pool", "resident", alloc.kv_pool,
             f"{e.num_pages} pages x {e.page_size} tok per replica, {2 * kv_heads // split} of {2 * kv_heads} "
             f"K/V heads"),
        Item("sampler weights", "resident" if cfg.rl.staleness else "sample", alloc.sampler_weights,
             f"{cfg.engine.weights_dtype or cfg.model.dtype}, SAMPLE_RULES, {replica}"
             + ("" if alloc.sampler_weights else " (the learner's own arrays)")),
        Item("gradients", "train", alloc.params * (2 if micro_steps > 1 else 1),
             "sum + current micro-batch" if micro_steps > 1 else "one micro-batch"),
        Item("train activations", "train", train_activation_bytes(model_cfg, cfg, rows_per_device, compute),
             f"{rows_per_device} row(s) x {cfg.train.row_len} tok" + (", remat" if cfg.model.remat else "")),
        Item("sample activations", "sample", sample_activation_bytes(model_cfg, cfg, compute),
             f"prefill {cfg.engine.max_prefill_tokens} tok"),
    )
    flops_train, flops_sample = step_flops(model_cfg, alloc.active_param_count, tokens_per_step,
                                           cfg.engine.max_seq_len)
    peak = sl.chips * sl.chip.peak_flops
    warnings = []
    if cfg.model.param_dtype == "bfloat16" and cfg.optim.learning_rate < 1e-4:
        warnings.append(f"bf16 parameters without an fp32 master copy: updates of lr {cfg.optim.learning_rate:g} "
                        "fall below bf16 resolution; use model.param_dtype='float32'")
    if e.num_pages - 1 < e.max_seq_len // e.page_size:
        warnings.append(f"each sampler replica's {e.num_pages} pages hold less than one max_seq_len sequence")
    p = Plan(sl, dict(layout.learner.shape), items, sl.chip.hbm_bytes * (1 - reserve), alloc.param_count,
             alloc.active_param_count, tokens_per_step, flops_train / (peak * mfu),
             flops_sample / (peak * sample_mfu), tuple(warnings), layout.replicas)
    if 0 <= p.budget_bytes - p.peak_bytes < TIGHT_HEADROOM:
        tight = (f"headroom {(p.budget_bytes - p.peak_bytes) / GIB:.2f} GiB is under {TIGHT_HEADROOM / GIB:.0f} GiB, "
                 "inside this estimate's error: if the first steps run out of memory, lower engine.num_pages "
                 "(its kv page pool line) or engine.max_rows")
        p = dataclasses.replace(p, warnings=p.warnings + (tight,))
    return p


def step_flops(m: ModelConfig, active: int, tokens: int, context: int) -> tuple[float, float]:
    """(training, sampling) FLOPs of one step: 6 N T and 2 N T for N active matmul parameters, plus
    causal attention at an average context of half of ``context``: 12 and 4 x L x Hq x hd x ctx / 2."""
    attn = m.num_hidden_layers * m.num_attention_heads * m.head_dim * context / 2
    return tokens * (6 * active + 12 * attn), tokens * (2 * active + 4 * attn)


def _config_json(path: str) -> str:
    return path if path.endswith(".json") else f"{path.rstrip('/')}/config.json"


def load_config(path: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """Runs ``get_config()`` of a config file, applies ``key.path=value`` overrides (values parsed
    as JSON when they parse, else strings) and validates it. As with ``--config`` of the trainer,
    ``file.py:arg`` calls ``get_config("arg")``.

    Raises:
        ValueError: an unreadable file or a malformed override; ConfigError: an invalid config.
    """
    file, colon, arg = path.partition(":")
    raw = config_file(file, arg if colon else None).to_dict()
    for override in overrides:
        key, eq, text = override.partition("=")
        if not eq:
            raise ValueError(f"--set {override!r}: expected key.path=value")
        *sections, name = key.split(".")
        target = raw
        for part in sections:
            target = target.get(part)
            if not isinstance(target, dict):
                raise ValueError(f"--set {override!r}: no config section {part!r}")
        try:
            target[name] = json.loads(text)
        except json.JSONDecodeError:
            target[name] = text
    return from_config_dict(raw)


def format_plan(p: Plan, cfg: TrainConfig) -> str:
    mesh = " ".join(f"{k}={v}" for k, v in p.mesh.items())
    e = cfg.engine
    lines = [f"slice {p.slice.name}: {p.slice.chips} chips on {p.slice.hosts} host(s), "
             f"{p.slice.chip.hbm_bytes / GIB:.1f} GiB HBM per chip; mesh {mesh}",
             f"sampler: {p.replicas} replica(s) of expert {e.replica_expert} x tensor {e.replica_tensor} chips "
             f"(inside one host), {e.num_pages} KV pages x {e.page_size} tokens each",
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
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set engine.num_pages=8192 (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except (ValueError, ConfigError) as e:
        print(f"plan: {e}", file=sys.stderr)
        return 2
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
