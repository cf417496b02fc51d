"""What the trainer writes besides checkpoints: ``metrics.jsonl`` and TensorBoard (``MetricsLog``), the
step statistics of every process merged into one (``merge_stats``), per-tree statistics, the example
trees of each evaluation, the final Hugging Face export and the run's report."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from rao_jax.checkpoint.hf import save_pretrained
from rao_jax.parallel import multihost
from rao_jax.paths import LineLog, as_path, copy_tree, is_remote, local_copy, tensorboard_writer

log = logging.getLogger("rao_jax.train")

class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line) and TensorBoard scalars, written by process 0
    (the other processes' logs drop every record)."""

    def __init__(self, workdir, resume_step: int | None):
        self.enabled = multihost.is_primary()
        if not self.enabled:
            return

        def keep(line: str) -> bool:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return False  # a line cut by a kill
            return resume_step is not None and record.get("step", 0) <= resume_step

        self._lines = LineLog(workdir / "metrics.jsonl", keep)
        self._tb = tensorboard_writer(workdir / "tb")
        if self._tb is None:
            log.warning("tensorboardX is not installed: metrics go to metrics.jsonl only")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._lines.write(json.dumps(record, default=_json_default))
        self._lines.flush()
        if self._tb is not None:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._lines.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _json_default(value):
    if isinstance(value, np.generic | jax.Array):
        return np.asarray(value).item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def scalars(out: dict) -> dict[str, float]:
    return {k: float(v) for k, v in out.items()}


_WEIGHTED = {"success": "trees", "root_reward": "trees", "depth_mean": "trees", "nodes_per_tree": "trees",
             "model_calls": "trees", "node_success": "nodes", "advantage_abs": "nodes", "policy_lag_mean": "nodes"}
_MAXIMA = ("policy_lag",)


def merge_stats(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """One step's statistics over every process from each process's own (see ``_WEIGHTED``)."""
    out: dict[str, float] = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        weight_key = _WEIGHTED.get(key) or (f"trees_{key[8:]}" if key.startswith("success_") else None)
        if key in _MAXIMA:
            out[key] = max(values)
        elif weight_key in parts[0]:
            weights = [p[weight_key] for p in parts]
            out[key] = float(np.average(values, weights=weights)) if sum(weights) else 0.0
        else:
            out[key] = float(sum(values))
    return out


def family_stats(groups, family_of: Mapping[str, str], names: Sequence[str]) -> dict[str, float]:
    """Per family of a several-family run: ``trees_<family>`` and its mean root success
    ``success_<family>`` (0 with no tree), for every family of the run, so each process has the same keys."""
    out = {}
    for name in names:
        scores = [t.root.success for g in groups for t in g if family_of[t.task_id] == name]
        out[f"trees_{name}"] = float(len(scores))
        out[f"success_{name}"] = float(np.mean(scores)) if scores else 0.0
    return out


def tree_stats(groups) -> dict[str, float]:
    trees = [t for g in groups for t in g]
    return {"depth_mean": float(np.mean([t.max_depth for t in trees])),
            "nodes_per_tree": float(np.mean([len(t.nodes) for t in trees])),
            "model_calls": float(np.mean([t.model_calls for t in trees])),
            "response_tokens": float(sum(n.response_token_count or 0 for t in trees for n in t.nodes))}


def write_example_trees(folder, step: int, trees: dict[str, Sequence]) -> None:
    """Keeps one solved tree per mode (the deepest) as a JSONL trace next to the eval results."""
    from rao_jax.agent.trace import write_trace

    for mode, results in trees.items():
        solved = [t for t in results if t.root.success >= 1.0]
        if solved:
            best = max(solved, key=lambda t: (t.max_depth, len(t.nodes)))
            write_trace(best, folder / f"trees_step{step}_{mode}")


def export_policy(workdir, config, model, runtime) -> None:
    """The final policy as a Hugging Face folder ``<workdir>/hf`` with the run's tokenizer and chat
    template. Every process takes part (a tensor split over several hosts is gathered tensor by
    tensor); process 0 writes."""
    tokenizer = workdir / "tokenizer.model"
    with tempfile.TemporaryDirectory(prefix="rao_export_") as scratch:
        tok_dir = None
        if config.tokenizer.path:   # a Hugging Face tokenizer (a Qwen3 checkpoint's folder)
            tok_dir = local_copy(as_path(config.tokenizer.path))
            tok_dir = tok_dir if tok_dir.is_dir() else tok_dir.parent
        elif tokenizer.exists():
            tok_dir = Path(scratch) / "tokenizer"
            tok_dir.mkdir()
            tokenizer.copy(as_path(tok_dir / "tokenizer.model"))
        local = not is_remote(workdir) and jax.process_count() == 1
        target = Path(workdir / "hf") if local else Path(scratch) / "hf"
        save_pretrained(model, runtime.model_cfg, target, dtype="float32", tokenizer_dir=tok_dir,
                        chat_template=runtime.template, overwrite=True)
        if multihost.is_primary():
            if not local:
                copy_tree(target, workdir / "hf")
            print(f"exported the policy to {workdir / 'hf'}", file=sys.stderr)
    multihost.barrier("export")


def write_final_report(workdir, step: int) -> None:
    """Plots and a results table of the run (``rao_jax.report``) and its deepest solved held-out tree."""
    from rao_jax import report
    from rao_jax.agent.trace import read_trace, render_html, render_trace

    folder = report.write_run_report(workdir)
    print(f"wrote the run's plots and results table to {folder}", file=sys.stderr)
    traces = sorted((workdir / "eval").glob(f"trees_step{step}_*/*.jsonl"))
    if traces:
        lines = max((read_trace(p) for p in traces), key=lambda t: (t[0].get("max_depth", 0), len(t)))
        (folder / "solved_tree.html").write_text(render_html(lines))
        text = render_trace(lines)
        (folder / "solved_tree.txt").write_text(text + "\n")
        tqdm.write(f"the deepest solved held-out tree (also {folder / 'solved_tree.html'}):\n{text}")
