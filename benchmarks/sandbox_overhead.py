"""Sandbox overhead per cell, against running the same cell in-process (the unsafe peer).

Both sides run the same cells with the same tools, in the same asyncio program, in the same run:

- peer: ``compile(..., PyCF_ALLOW_TOP_LEVEL_AWAIT)`` and ``eval`` in a dict namespace of this
  process, tools called directly (what a runtime without a sandbox would do);
- sandbox: ``SandboxSession.run_cell`` (a worker process, JSON frames over pipes, guards, timers,
  tools proxied to the host).

Cells: an assignment, a small computation, one tool call, ten tool calls, and a gather of four
async launches (each answered by the host at once). Also a concurrent run: many nodes at once over
the pool, to show the cost when cells of many trees overlap. Prints per-cell latency (median, p90),
throughput and the sandbox / peer ratios.

    python benchmarks/sandbox_overhead.py [--cells 300] [--workers 2] [--nodes 32]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import platform
import statistics
import time

from rao_jax.agent.sandbox import SandboxLimits, SandboxPool

CELLS = {
    "assign": "x = 1",
    "compute": "sum(i * i for i in range(1000))",
    "1 tool call": "pick('a')",
    "10 tool calls": "for _ in range(10):\n    pick('a')",
    "gather 4 launches": ("import asyncio\n"
                          "await asyncio.gather(*[launch_subagent({'a': 1}, 2) for _ in range(4)])"),
}


def make_tools():
    bag = {}

    def pick(item):
        bag[item] = bag.get(item, 0) + 1
        return bag[item]

    async def launch_subagent(goal, budget, context=""):
        return {"goal": goal, "budget": budget}

    return {"pick": pick}, {"launch_subagent": launch_subagent}


async def run_in_process(code: str, ns: dict) -> None:
    compiled = compile(code, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, ns)
    if result is not None:
        await result


async def time_peer(code: str, n: int) -> list[float]:
    sync, asyn = make_tools()
    ns = {"__builtins__": __builtins__, **sync, **asyn}
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await run_in_process(code, ns)
        out.append(time.perf_counter() - t0)
    return out


async def time_sandbox(session, code: str, n: int) -> list[float]:
    sync, asyn = make_tools()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await session.run_cell(0, code, sync, asyn)
        out.append(time.perf_counter() - t0)
        if r.error:
            raise RuntimeError(f"benchmark cell failed in the sandbox: {r.error}")
    return out


async def concurrent(run_one, nodes: int, per_node: int) -> float:
    """Cells per second with ``nodes`` nodes each running ``per_node`` cells back to back."""
    t0 = time.perf_counter()
    await asyncio.gather(*(run_one(i) for i in range(nodes)))
    return nodes * per_node / (time.perf_counter() - t0)


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f}"


async def main(args) -> None:
    limits = SandboxLimits()
    async with SandboxPool(args.workers, limits) as pool:
        print(f"python {platform.python_version()}, {platform.machine()}, workers={args.workers}, "
              f"isolation={pool.isolation}")
        session = pool.session()
        await time_sandbox(session, "x = 0", 20)            # warm up both sides
        await time_peer("x = 0", 20)
        print(f"{'cell':<20} {'peer med us':>11} {'sandbox med us':>14} {'peer p90':>9} {'sandbox p90':>11} "
              f"{'ratio med':>9} {'overhead us':>11}")
        for name, code in CELLS.items():
            peer = await time_peer(code, args.cells)
            sand = await time_sandbox(session, code, args.cells)
            pm, sm = statistics.median(peer), statistics.median(sand)
            p90 = statistics.quantiles(peer, n=10)[-1]
            s90 = statistics.quantiles(sand, n=10)[-1]
            print(f"{name:<20} {fmt_us(pm):>11} {fmt_us(sm):>14} {fmt_us(p90):>9} {fmt_us(s90):>11} "
                  f"{sm / pm:9.1f} {fmt_us(sm - pm):>11}")

        per_node = max(args.cells // args.nodes, 5)
        code = CELLS["1 tool call"]
        sessions = [pool.session() for _ in range(args.nodes)]
        # Each session is one tree; its first cell starts the tree's sandbox (a process of its own with
        # per-tree workers): timed apart, as a tree pays it once.
        t0 = time.perf_counter()
        await asyncio.gather(*(sessions[i].run_cell(i, "x = 0", {}, {}) for i in range(args.nodes)))
        print(f"\nfirst cell of {args.nodes} new trees at once: {(time.perf_counter() - t0) * 1e3:.0f} ms in all")

        async def sandbox_node(i):
            sync, asyn = make_tools()
            for _ in range(per_node):
                await sessions[i].run_cell(i, code, sync, asyn)

        async def peer_node(i):
            sync, asyn = make_tools()
            ns = {"__builtins__": __builtins__, **sync, **asyn}
            for _ in range(per_node):
                await run_in_process(code, ns)
                await asyncio.sleep(0)   # interleave like the scheduler does

        s_rate = await concurrent(sandbox_node, args.nodes, per_node)
        p_rate = await concurrent(peer_node, args.nodes, per_node)
        print(f"concurrent: {args.nodes} nodes of as many trees x {per_node} cells ('1 tool call'): "
              f"peer {p_rate:,.0f} cells/s, sandbox {s_rate:,.0f} cells/s, ratio {p_rate / s_rate:.1f}x")
        for s in sessions:
            await s.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=300, help="cells per measurement")
    parser.add_argument("--workers", type=int, default=2, help="SandboxPool size (template processes; worker "
                        "processes in rao_jax before per-tree workers)")
    parser.add_argument("--nodes", type=int, default=32, help="concurrent nodes in the concurrent run")
    asyncio.run(main(parser.parse_args()))
