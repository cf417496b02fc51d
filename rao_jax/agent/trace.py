"""Traces of finished trees: one JSONL file per tree, and a readable console rendering.

File layout: the first line is the tree (``"kind": "tree"``: ids, budget, timings, summary figures),
then one line per node in node-id order (``"kind": "node"``: its record, steps with their timings;
token lists only with ``include_tokens``). ``render_trace`` draws the tree from those dicts, so a
saved file renders the same as a live result::

    python -m rao_jax.agent.trace runs/traces/tree_000012.jsonl [--steps]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from rao_jax.agent.tree import TreeResult


def trace_dicts(result: TreeResult, include_tokens: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a tree's trace: the tree line, then one per node."""
    root = result.root
    header = {
        "kind": "tree", "tree_id": result.tree_id, "task_id": result.task_id, "recursive": result.recursive,
        "root_budget": result.root_budget, "start_time": result.start_time, "end_time": result.end_time,
        "seconds": result.end_time - result.start_time, "nodes": len(result.nodes),
        "model_calls": result.model_calls, "critical_path": result.critical_path(), "max_depth": result.max_depth,
        "root_success": root.success,
    }
    lines = [header]
    for n in result.nodes:
        d = {
            "kind": "node", "tree_id": n.tree_id, "node_id": n.node_id, "parent_id": n.parent_id, "depth": n.depth,
            "fork_step": n.fork_step, "goal": n.goal.text, "goal_context": n.goal.context,
            "goal_spec": dict(n.goal.spec), "budget": n.budget, "own_steps": n.own_steps,
            "total_steps": n.total_steps, "start_time": n.start_time, "end_time": n.end_time,
            "end_reason": n.end_reason, "finish_message": n.finish_message, "success": n.success,
            "children": list(n.children), "prompt_tokens": n.prompt_token_count,
            "response_tokens": n.response_token_count,
            "steps": [dataclasses.asdict(s) for s in n.steps],
        }
        if include_tokens and n.tokens is not None:
            d.update(tokens=list(n.tokens), loss_mask=list(n.loss_mask), logprobs=list(n.logprobs))
        lines.append(d)
    return lines


def write_trace(result: TreeResult, folder: str | Path, include_tokens: bool = False) -> Path:
    """Write ``tree_<id>.jsonl`` under ``folder``; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tree_{result.tree_id:06d}.jsonl"
    with path.open("w") as f:
        for line in trace_dicts(result, include_tokens):
            f.write(json.dumps(line, default=repr) + "\n")
    return path


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """The dicts of a trace file (tree line first)."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines or lines[0].get("kind") != "tree":
        raise ValueError(f"{path}: not a tree trace (first line must have kind 'tree')")
    return lines


def _short(text: Any, width: int) -> str:
    s = text if isinstance(text, str) else json.dumps(text, default=repr)
    s = " ".join(s.split())
    return s if len(s) <= width else s[: width - 3] + "..."


def render_trace(lines: list[dict[str, Any]], steps: bool = False, width: int = 100) -> str:
    """A console drawing of a tree: one line per node (indented by depth), optionally its steps."""
    header, nodes = lines[0], {d["node_id"]: d for d in lines[1:]}
    out = [f"tree {header['tree_id']} task={header['task_id']} {'recursive' if header['recursive'] else 'flat'}: "
           f"{header['nodes']} nodes, {header['model_calls']}/{header['root_budget']} steps, "
           f"critical path {header['critical_path']}, depth {header['max_depth']}, "
           f"root success {header['root_success']:g}, {header['seconds']:.2f} s"]

    def draw(node_id: int, prefix: str, last: bool) -> None:
        n = nodes[node_id]
        branch = "" if n["parent_id"] is None else ("└─ " if last else "├─ ")
        fork = "" if n["fork_step"] is None else f" fork@{n['fork_step']}"
        msg = "" if n["finish_message"] is None else f" -> {_short(n['finish_message'], 40)}"
        out.append(f"{prefix}{branch}[{node_id}]{fork} s={n['success']:g} steps {n['own_steps']} "
                   f"(total {n['total_steps']}/{n['budget']}) {n['end_reason']}{msg}  "
                   f"{n['end_time'] - n['start_time']:.2f}s | {_short(n['goal'], 50)}")
        inner = prefix + ("" if n["parent_id"] is None else ("   " if last else "│  "))
        if steps:
            for s in n["steps"]:
                kids = f" children {s['children']}" if s["children"] else ""
                out.append(f"{inner}  · step {s['index']} policy {s['policy_seconds']:.2f}s cell "
                           f"{s['cell_seconds']:.2f}s{kids}: {_short(s['action'], width // 2)}")
                out.append(f"{inner}      => {_short(s['observation'], width // 2)}")
        kids = n["children"]
        for i, c in enumerate(kids):
            draw(c, inner, i == len(kids) - 1)

    draw(0, "", True)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render a delegation-tree trace (JSONL) as a console tree.")
    parser.add_argument("trace", help="a tree_<id>.jsonl file")
    parser.add_argument("--steps", action="store_true", help="show every step's action and observation")
    args = parser.parse_args(argv)
    print(render_trace(read_trace(args.trace), steps=args.steps))


if __name__ == "__main__":
    main()
