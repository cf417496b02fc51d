"""Traces of finished trees: one JSONL file per tree, a console rendering and a static HTML page.

File layout: the first line is the tree (``"kind": "tree"``: ids, budget, timings, summary figures),
then one line per node in node-id order (``"kind": "node"``: its record, steps with their timings;
token lists only with ``include_tokens``). ``render_trace`` draws the tree from those dicts, so a
saved file renders the same as a live result::

    python -m rao_jax.agent.trace runs/traces/tree_000012.jsonl [--steps] [--html tree.html]
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
from pathlib import Path
from typing import Any

from rao_jax.agent.tree import TreeResult
from rao_jax.paths import as_path


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
    """Write ``tree_<id>.jsonl`` under ``folder`` (a local folder or a URL); returns its path."""
    folder = as_path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tree_{result.tree_id:06d}.jsonl"
    path.write_text("".join(json.dumps(line, default=repr) + "\n" for line in trace_dicts(result, include_tokens)))
    return path


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """The dicts of a trace file (tree line first)."""
    lines = [json.loads(line) for line in as_path(path).read_text().splitlines() if line.strip()]
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


_CSS = ("body{font-family:sans-serif;margin:1.5em} details{margin-left:1.2em;border-left:2px solid #ccc;"
        "padding-left:.6em} summary{cursor:pointer;margin:.3em 0} .ok{color:#070} .bad{color:#b00} "
        "pre{background:#f6f6f6;padding:.4em;white-space:pre-wrap;margin:.2em 0} .step{margin:.5em 0 .5em 1em}")


def render_html(lines: list[dict[str, Any]]) -> str:
    """A static HTML page of a tree: nested collapsible nodes, each with its steps (no scripts)."""
    header, nodes = lines[0], {d["node_id"]: d for d in lines[1:]}
    title = (f"tree {header['tree_id']} ({header['task_id']}): {header['nodes']} nodes, "
             f"{header['model_calls']}/{header['root_budget']} steps, root success {header['root_success']:g}")

    def node_html(node_id: int) -> str:
        n = nodes[node_id]
        cls = "ok" if n["success"] >= 1.0 else "bad"
        fork = "" if n["fork_step"] is None else f" fork@{n['fork_step']}"
        summary = (f"<span class='{cls}'>[{node_id}] s={n['success']:g}</span>{fork} steps {n['own_steps']} "
                   f"(total {n['total_steps']}/{n['budget']}) {n['end_reason']} | {html.escape(_short(n['goal'], 80))}")
        parts = [f"<details open><summary>{summary}</summary>", f"<pre>{html.escape(n['goal'])}</pre>"]
        if n["goal_context"]:
            parts.append(f"<pre>context: {html.escape(n['goal_context'])}</pre>")
        for st in n["steps"]:
            kids = f" launched {st['children']}" if st["children"] else ""
            parts.append(f"<div class='step'>step {st['index']} (policy {st['policy_seconds']:.2f}s, cell "
                         f"{st['cell_seconds']:.2f}s){kids}<pre>{html.escape(st['action'])}</pre>"
                         f"<pre>{html.escape(st['observation'])}</pre></div>")
        if n["finish_message"] is not None:
            parts.append(f"<pre>finish: {html.escape(json.dumps(n['finish_message'], default=repr))}</pre>")
        parts += [node_html(c) for c in n["children"]]
        parts.append("</details>")
        return "\n".join(parts)

    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h3>{html.escape(title)}</h3>\n{node_html(0)}\n</body></html>\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render a delegation-tree trace (JSONL) as a console tree.")
    parser.add_argument("trace", help="a tree_<id>.jsonl file")
    parser.add_argument("--steps", action="store_true", help="show every step's action and observation")
    parser.add_argument("--html", metavar="OUT", help="also write a static HTML page of the tree to OUT")
    args = parser.parse_args(argv)
    lines = read_trace(args.trace)
    print(render_trace(lines, steps=args.steps))
    if args.html:
        Path(args.html).write_text(render_html(lines))


if __name__ == "__main__":
    main()
