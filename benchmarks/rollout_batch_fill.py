"""Sampler batch fill with hundreds of model-driven delegation-tree nodes live at once.

The whole inference path of a rollout: ``RolloutRunner`` (asyncio, one task per node) + sandbox
pool + ``ModelPolicy`` + ``SamplingEngine`` (continuous batching over paged KV), with a tiny random
Qwen3 on CPU. The question is whether the scheduler keeps the sampler's batch full while nodes
want it: the engine has ``--max-rows`` batch rows, far fewer than the live nodes, so a full batch
is possible almost all the time, and any gap is the runtime's fault (nodes not resubmitting fast
enough, admission stalls), not a lack of work.

Structures (say which one a result used):

- ``fanout`` (default): ``--trees`` scripted roots each launch ``--leaves`` children in one
  ``asyncio.gather``; the children (recursive-mode prompt) are the model. All leaves are live
  together; the roots wait suspended, as parents do.
- ``flat``: ``--trees x --leaves`` flat-mode trees whose roots are the model.

A random model never writes a valid action, so every model step's text fails to parse and its
observation is the parser's explanation: the leaves exercise sampling, prompt extension, KV reuse
and the scheduler, not the sandbox (its per-cell cost is ``sandbox_overhead.py``'s business). A
random model also almost never samples a stop sequence, so to get the spread of lengths real nodes
have, model nodes are dealt round-robin a response cap from ``--max-new-tokens`` (one
``ModelPolicy`` per cap, all on the one engine) and a budget of 1 .. 2 x ``--steps`` - 1 steps
(mean ``--steps``; every step after the first extends the node's kept sequence).

Figures (all ratios): batch fill = engine ``decode_active_rows / decode_row_slots`` over the run;
the same restricted to decode calls made while at least ``max_rows`` nodes were waiting on the
sampler (runnable), and fill against what was attainable (``sum active / sum min(runnable,
max_rows)``); decode-step efficiency (generated tokens / row-steps issued); prefill tokens per
prompt token appended (KV reuse); peak live model nodes; the share of node time spent waiting on
the sampler. "Runnable" is read from ``ModelPolicy.in_flight`` at each decode call (a wrapper of
``engine.stats`` logs it when the engine counts the call), so it can count a request that arrived
during the call: the restricted figures are close approximations, the overall fill is exact.

    python benchmarks/rollout_batch_fill.py [--structure fanout] [--trees 8] [--leaves 64]
        [--max-rows 64] [--steps 2] [--max-new-tokens 16,24,32,48]

Uses the test helpers ``tests/agent/local_tokenizer.py`` (a byte-level BPE trained in-process) and
``tests/agent/toy.py`` (BagWorld): nothing is downloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from rao_jax.agent.model_policy import ModelPolicy  # noqa: E402
from rao_jax.agent.protocol import qwen3_template, system_prompt  # noqa: E402
from rao_jax.agent.rollout import RolloutConfig, RolloutRunner  # noqa: E402
from rao_jax.agent.sandbox import SandboxLimits, SandboxPool  # noqa: E402
from rao_jax.models.config import ModelConfig, tiny_config  # noqa: E402
from rao_jax.models.qwen3 import Qwen3  # noqa: E402
from rao_jax.sampling import EngineConfig, SamplingEngine, SamplingParams  # noqa: E402
from tests.agent.local_tokenizer import LocalTokenizer  # noqa: E402
from tests.agent.toy import BagWorld  # noqa: E402


class DecodeProbe(collections.Counter):
    """``engine.stats`` that also logs, per decode call, (active rows, nodes waiting on the sampler)."""

    def __init__(self, base: collections.Counter, mix: Mix):
        self.mix = mix
        self._calls: list[list[int]] = []   # [active rows, nodes waiting] per decode chunk
        super().__init__(base)

    def __setitem__(self, key, value):
        # The engine counts a chunk, then each of its active rows one by one: a chunk's rows are the
        # active-row increments up to the next chunk.
        if key == "decode_chunks":
            self._calls.append([0, self.mix.in_flight])
        elif key == "decode_active_rows" and self._calls:
            self._calls[-1][0] += value - self.get(key, 0)
        super().__setitem__(key, value)

    @property
    def calls(self) -> list[tuple[int, int]]:
        return [(active, waiting) for active, waiting in self._calls]


class Mix:
    """Model nodes dealt round-robin to ModelPolicies that differ only in their response cap."""

    def __init__(self, policies: list[ModelPolicy]):
        self.policies = policies

    def of(self, tree_id: int, node_id: int) -> ModelPolicy:
        return self.policies[(tree_id + node_id) % len(self.policies)]

    async def act(self, view):
        return await self.of(view.tree_id, view.node_id).act(view)

    async def end_node(self, tree_id: int, node_id: int) -> None:
        await self.of(tree_id, node_id).end_node(tree_id, node_id)

    @property
    def in_flight(self) -> int:
        return sum(p.in_flight for p in self.policies)

    def stats(self) -> collections.Counter:
        return sum((p.stats for p in self.policies), collections.Counter())

    def reset(self) -> None:
        for p in self.policies:
            p.stats.clear()


def budgets(n: int, mean_steps: int) -> list[int]:
    """Budgets 1 .. 2 * mean_steps - 1, round-robin."""
    return [1 + i % (2 * mean_steps - 1) for i in range(n)]


class FanoutRoot:
    """Scripted root: launches its leaves (one-unit goals) in one gather, then finishes."""

    def __init__(self, leaf_budgets: list[int]):
        self.leaf_budgets = leaf_budgets

    async def act(self, view) -> str:
        if not view.steps:
            code = (f"r = await asyncio.gather(*(launch_subagent({{'x%d' % i: 1}}, b) "
                    f"for i, b in enumerate({self.leaf_budgets})))\nprint(len(r))")
        else:
            code = "finish(f'{len(r)} leaves ended')"
        return f"<thought>fan out</thought>\n<python>\n{code}\n</python>"


class ModelBelowRoot:
    def __init__(self, root, model):
        self.root, self.model = root, model

    async def act(self, view):
        return await (self.model if view.depth >= 1 else self.root).act(view)


def peak_live(trees, model_only: bool) -> int:
    events = sorted([(n.start_time, 1) for t in trees for n in t.nodes if n.tokens is not None or not model_only] +
                    [(n.end_time, -1) for t in trees for n in t.nodes if n.tokens is not None or not model_only])
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    return peak


def build(args):
    docs = BagWorld({}).tool_docs
    tok = LocalTokenizer(1000, [system_prompt(docs(True), True)] * 20 + [system_prompt(docs(False), False)] * 20)
    if args.model == "tiny":
        cfg = tiny_config(vocab_size=tok.vocab_size)
    else:
        cfg = ModelConfig.from_json_file(args.model)
        if cfg.vocab_size < tok.vocab_size:
            cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
    model = Qwen3(cfg, rngs=nnx.Rngs(0))
    caps = [int(x) for x in args.max_new_tokens.split(",")]
    # prompt + (response + observation turn) per step of the longest node
    node_len = 512 + (2 * args.steps - 1) * (max(caps) + 80)
    max_seq_len = 1 << (node_len - 1).bit_length()
    nodes = args.trees * args.leaves
    engine = SamplingEngine(model, EngineConfig(
        max_rows=args.max_rows, page_size=16, num_pages=nodes * (node_len // 16 + 2) + 1, max_seq_len=max_seq_len,
        decode_steps=args.decode_steps, max_prefill_tokens=args.max_prefill_tokens, min_prefill_bucket=256,
        max_top_k=8))
    mix = Mix([ModelPolicy(engine, tok, qwen3_template(), docs, SamplingParams(cap, 1.0)) for cap in caps])
    return tok, cfg, engine, mix


async def roll(args, mix: Mix):
    fanout = args.structure == "fanout"
    structure = ModelBelowRoot(FanoutRoot(budgets(args.leaves, args.steps)), mix) if fanout else mix
    limits = SandboxLimits(cpu_seconds=5.0, wall_seconds=60.0, memory_bytes=512 << 20)
    async with SandboxPool(args.workers, limits) as pool:
        runner = RolloutRunner(structure, pool, RolloutConfig(recursive=fanout), on_node_end=mix.end_node)
        if fanout:
            budget = sum(b + 1 for b in budgets(args.leaves, args.steps)) + 2
            jobs = [runner.run_tree(BagWorld({"x0": 1}), budget) for _ in range(args.trees)]
        else:
            jobs = [runner.run_tree(BagWorld({"x0": 1}), b) for b in budgets(args.trees * args.leaves, args.steps)]
        return await asyncio.gather(*jobs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--structure", choices=("fanout", "flat"), default="fanout")
    ap.add_argument("--trees", type=int, default=8)
    ap.add_argument("--leaves", type=int, default=64, help="model nodes per tree (flat: trees x leaves flat trees)")
    ap.add_argument("--steps", type=int, default=2, help="mean steps (model calls) per model node")
    ap.add_argument("--max-rows", type=int, default=64)
    ap.add_argument("--max-new-tokens", default="16,24,32,48", help="response caps dealt round-robin")
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--max-prefill-tokens", type=int, default=32768,
                    help="new tokens one prefill call may take: 32768 admits a whole batch of fresh prompts")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="tiny", help="'tiny' (tiny_config) or a config.json such as "
                    "configs/models/tiny_qwen3.json")
    args = ap.parse_args()

    tok, cfg, engine, mix = build(args)
    # Warm-up outside the measured run: the same structure with one batch worth of model nodes, so
    # most shapes are compiled (the fill figures do not depend on it; the throughput line does).
    warm = argparse.Namespace(**{**vars(args), "trees": 1, "leaves": args.max_rows})
    asyncio.run(roll(warm, mix))
    probe = engine.stats = DecodeProbe(collections.Counter(), mix)
    mix.reset()

    start = time.perf_counter()
    trees = asyncio.run(roll(args, mix))
    wall = time.perf_counter() - start

    s, p, rows = engine.stats, mix.stats(), args.max_rows
    model_nodes = [n for t in trees for n in t.nodes if n.tokens is not None]
    steps = [st for n in model_nodes for st in n.steps]
    full = [(a, w) for a, w in probe.calls if w >= rows]
    attainable = sum(min(w, rows) for _, w in probe.calls)
    waited = sum(st.policy_seconds for st in steps)
    print(f"# rollout batch fill: structure={args.structure}, {len(model_nodes)} model nodes "
          f"({args.trees} trees x {args.leaves}), 1..{2 * args.steps - 1} steps each (mean {args.steps}), "
          f"engine max_rows={rows}, "
          f"decode_steps={args.decode_steps}, max_new_tokens={args.max_new_tokens}")
    print(f"# model: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}; "
          f"jax {jax.__version__} on {jax.default_backend()}; {os.cpu_count()} cores, {platform.python_version()}")
    print(f"peak live model nodes:                         {peak_live(trees, True)} "
          f"(all nodes: {peak_live(trees, False)}); peak waiting on the sampler: {max(w for _, w in probe.calls)}")
    print(f"batch fill, whole run (active / row slots):    {s['decode_active_rows'] / s['decode_row_slots']:.3f} "
          f"over {s['decode_calls']} decode calls")
    if full:
        print(f"batch fill, calls with >= {rows} nodes runnable:   {sum(a for a, _ in full) / (rows * len(full)):.3f} "
              f"over {len(full)} calls ({len(full) / len(probe.calls):.0%} of the calls)")
    print(f"fill against attainable (min(runnable, rows)): {s['decode_active_rows'] / attainable:.3f}")
    print(f"decode-step efficiency (tokens / row-steps):   "
          f"{s['decode_tokens'] / (s['decode_active_rows'] * args.decode_steps):.3f} of active rows, "
          f"{s['decode_tokens'] / (s['decode_row_slots'] * args.decode_steps):.3f} of all rows")
    print(f"prefill tokens / prompt tokens appended:       {s['prefill_tokens'] / p['prompt_tokens']:.3f} "
          f"(KV reuse; {p['reused_tokens']} prompt tokens reused), preempted: idle {s['preempted_idle']}, "
          f"running {s['preempted_running']}")
    print(f"prefill calls per decode call:                 {s['prefill_calls'] / s['decode_calls']:.3f}")
    print(f"model steps: {p['steps']}, nodes ended by a full context: {p['context_ends']}, "
          f"responses ended by stop: {p['finish_stop'] / p['steps']:.3f}, "
          f"by length: {p['finish_length'] / p['steps']:.3f}; cells run: "
          f"{sum(st.parsed for st in steps) / len(steps):.3f} of model steps")
    lifetime = sum(n.end_time - n.start_time for n in model_nodes)
    print(f"node time waiting on the sampler:              {waited / lifetime:.3f} of model-node lifetime")
    print(f"throughput: {p['steps'] / wall:.1f} model steps/s, {s['decode_tokens'] / wall:.0f} tokens/s "
          f"(wall {wall:.1f} s, CPU, tiny random model: only the ratios above carry over)")


if __name__ == "__main__":
    main()
