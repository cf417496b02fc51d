"""Evaluation figures of finished delegation trees (RAO_SPEC section 6), as dicts, a text table and JSON.

``summarize(trees, tasks)`` reduces the ``TreeResult``s of one evaluation mode (recursive, flat, an
oracle...) to *buckets*: one over all trees, one per task difficulty (``Task.difficulty`` of each
tree's ``task_id``) and one per tree depth (the deepest node's depth; a tree that never delegated has
depth 0). Every bucket is a plain dict with these keys (``None`` where a figure is undefined):

- ``trees``: number of trees in the bucket.
- ``success``: mean root success s_root (the success rate where s is 0/1; the mean score where a
  family grades partially, e.g. LabeledRows).
- ``success_ci95``: ``[lo, hi]``, the Wilson 95% interval of ``success`` (on the summed root scores,
  exact for 0/1 success).
- ``mean_reward``: mean root reward R_root (``rao_jax.rl.rewards.node_rewards`` with the given bonus).
- ``depth_max`` / ``depth_mean``: max and mean over trees of the tree's depth.
- ``children_per_node``: children over all nodes (leaves included), i.e. (nodes - trees) / nodes.
- ``children_per_parent``: children over the nodes that launched at least one child (None: no launch).
- ``launches``: child nodes spawned in total (launches refused for budget spawn nothing, count nothing).
- ``parallel_fraction``: launches that ran at the same time as a sibling launched by the same parent
  step (``tree.overlaps_a_sibling``: their run times overlap, as in one ``asyncio.gather``), over all
  launches (None: no launch). Children awaited one after another inside one cell are not parallel.
- ``model_calls``: mean policy calls per tree (``TreeResult.model_calls``).
- ``critical_path``: mean ``TreeResult.critical_path()`` (longest chain of sequential calls).
- ``critical_over_total``: mean over trees of critical_path / model_calls (trees with no call skipped).
- ``wall_seconds``: mean tree wall-clock time (``end_time - start_time``).
- ``prompt_tokens`` / ``response_tokens``: mean per tree of the nodes' prompt-side (prompt,
  observations, child results) and sampled token counts; None unless every node of the bucket has
  token counts (text-driven policies record none, and a partial mean would mislead).
- ``context_overflows``: nodes that ended with ``end_reason == "context"``, in total;
  ``context_overflows_per_tree`` the same over ``trees``.
- ``end_reasons``: ``{end_reason: count}`` over the roots.

``summarize`` returns ``{"all": bucket, "by_difficulty": {difficulty: bucket}, "by_depth": {depth:
bucket}}``; ``by_difficulty`` is empty when no ``tasks`` are given; trees of several task families
key it ``family/difficulty`` and add ``"by_family"``. ``format_table({mode: summary})``
renders several modes side by side as fixed-width text (at most ~120 columns), ``to_json`` writes
them as strict JSON (NaN -> null, integer keys -> strings).

Pure Python; JAX is imported only inside ``summarize`` to compute rewards with the learner's own
``node_rewards``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rao_jax.agent.tree import TreeResult, children_by_step, overlaps_a_sibling
from rao_jax.envs.base import Task

CONTEXT_OVERFLOW = "context"
# Known difficulty names in their natural order; any other name sorts after them, digits numerically.
DIFFICULTY_ORDER = ("easy", "medium", "hard", "extreme")


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``.

    Args:
        successes: number of successes (a real-valued sum of scores in [0, 1] is accepted).
        n: number of trials, > 0.
        z: standard-normal quantile (1.96 for 95%).

    Returns:
        ``(lo, hi)`` within [0, 1].

    Raises:
        ValueError: ``n <= 0`` or ``successes`` outside [0, n].
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def difference_interval(successes_a: float, n_a: int, successes_b: float, n_b: int,
                        z: float = 1.96) -> tuple[float, float]:
    """Newcombe's hybrid score interval of a difference of proportions ``a/n_a - b/n_b``.

    Each proportion's Wilson interval is combined in quadrature with its distance from the point
    estimate (Newcombe 1998, method 10). It treats the two samples as independent: for two
    evaluations on the same tasks (positively correlated outcomes) it is wider than needed.

    Returns:
        ``(lo, hi)`` within [-1, 1].
    """
    p_a, p_b = successes_a / n_a, successes_b / n_b
    lo_a, hi_a = wilson_interval(successes_a, n_a, z)
    lo_b, hi_b = wilson_interval(successes_b, n_b, z)
    diff = p_a - p_b
    return (diff - math.sqrt((p_a - lo_a) ** 2 + (hi_b - p_b) ** 2),
            diff + math.sqrt((hi_a - p_a) ** 2 + (p_b - lo_b) ** 2))


@functools.cache
def _jitted_node_rewards() -> Callable[..., Any]:
    import jax

    from rao_jax.rl.rewards import node_rewards  # JAX only here: the rest of the module is pure Python

    return jax.jit(node_rewards, static_argnames=("bonus",))


def _root_rewards(trees: Sequence[TreeResult], bonus: str, lam: float, beta: float, cap: float) -> list[float]:
    """R_root of each tree, from one ``node_rewards`` call over the flat nodes of all trees.

    Nodes are padded to a power of two (at least 64) so that evaluations of varying size share compiles.
    """
    success, parent, roots = [], [], []
    for tree in trees:
        offset = len(success)
        index_of = {node.node_id: offset + i for i, node in enumerate(tree.nodes)}
        roots.append(index_of[tree.root.node_id])
        for node in tree.nodes:
            success.append(node.success)
            parent.append(-1 if node.parent_id is None else index_of[node.parent_id])
    num_nodes = len(success)
    padded = max(64, 1 << (num_nodes - 1).bit_length())
    valid = np.arange(padded) < num_nodes
    success_array = np.zeros(padded, np.float32)
    success_array[:num_nodes] = success
    parent_array = np.full(padded, -1, np.int32)
    parent_array[:num_nodes] = parent
    rewards = _jitted_node_rewards()(success_array, parent_array, bonus=bonus, lam=lam, beta=beta, cap=cap,
                                     valid=valid)
    rewards = np.asarray(rewards, np.float64)
    return [float(rewards[i]) for i in roots]


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _bucket(trees: Sequence[TreeResult], root_rewards: Sequence[float]) -> dict[str, Any]:
    """The figures of one bucket (see the module docstring); ``root_rewards`` aligned with ``trees``."""
    num_trees = len(trees)
    root_successes = [float(t.root.success) for t in trees]
    nodes = [node for t in trees for node in t.nodes]

    children_per_parent_node: Counter[tuple[int, int]] = Counter()
    launches = parallel_launches = 0
    for tree_index, t in enumerate(trees):  # the index, not tree_id: ids may repeat across runs
        for (parent_id, _), siblings in children_by_step(t.nodes).items():
            children_per_parent_node[(tree_index, parent_id)] += len(siblings)
            launches += len(siblings)
            parallel_launches += sum(overlaps_a_sibling(node, siblings) for node in siblings)

    calls = [t.model_calls for t in trees]
    critical = [t.critical_path() for t in trees]
    has_tokens = all(node.prompt_token_count is not None for node in nodes)
    overflows = sum(node.end_reason == CONTEXT_OVERFLOW for node in nodes)
    return {
        "trees": num_trees,
        "success": _mean(root_successes),
        "success_ci95": list(wilson_interval(min(sum(root_successes), num_trees), num_trees)),
        "mean_reward": _mean(root_rewards),
        "depth_max": max(t.max_depth for t in trees),
        "depth_mean": _mean([t.max_depth for t in trees]),
        "children_per_node": launches / len(nodes),
        "children_per_parent": (launches / len(children_per_parent_node)) if children_per_parent_node else None,
        "launches": launches,
        "parallel_fraction": parallel_launches / launches if launches else None,
        "model_calls": _mean(calls),
        "critical_path": _mean(critical),
        "critical_over_total": _mean([c / m for c, m in zip(critical, calls, strict=True) if m > 0]),
        "wall_seconds": _mean([t.end_time - t.start_time for t in trees]),
        "prompt_tokens": (sum(node.prompt_token_count for node in nodes) / num_trees) if has_tokens else None,
        "response_tokens": (sum(node.response_token_count for node in nodes) / num_trees) if has_tokens else None,
        "context_overflows": overflows,
        "context_overflows_per_tree": overflows / num_trees,
        "end_reasons": dict(sorted(Counter(t.root.end_reason for t in trees).items())),
    }


def _difficulty_sort_key(name: str) -> tuple:
    family, _, name = name.rpartition("/")   # "family/difficulty" when several families: by family first
    if name in DIFFICULTY_ORDER:
        return (family, 0, DIFFICULTY_ORDER.index(name))
    # Natural order for the rest ("k2" < "k10"); the type tag keeps digit and text parts comparable.
    return (family, 1, tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                             for part in re.split(r"(\d+)", name)))


def summarize(trees: Sequence[TreeResult], tasks: Mapping[str, Task] | None = None, *, bonus: str = "mean",
              lam: float = 0.0, beta: float = 0.2, cap: float = 0.4) -> dict[str, Any]:
    """Section 6's figures for the trees of one evaluation mode.

    Args:
        trees: finished trees (any mix of tasks and shapes).
        tasks: ``task_id -> Task``; gives each tree its difficulty bucket. None: no difficulty buckets.
        bonus, lam, beta, cap: the root reward's child bonus, as in ``rao_jax.rl.rewards.node_rewards``.

    Returns:
        ``{"all": bucket, "by_difficulty": {difficulty: bucket}, "by_depth": {depth: bucket}}``, buckets
        as described in the module docstring, difficulties in natural order, depths ascending. When
        the trees' tasks come from several families, the difficulty keys are ``family/difficulty``
        and ``"by_family": {family: bucket}`` is added.

    Raises:
        ValueError: no trees, or ``tasks`` given but a tree's ``task_id`` is not in it.
    """
    if not trees:
        raise ValueError("summarize needs at least one tree")
    rewards = _root_rewards(trees, bonus, lam, beta, cap)

    def bucket_of(indices: list[int]) -> dict[str, Any]:
        return _bucket([trees[i] for i in indices], [rewards[i] for i in indices])

    by_difficulty: dict[str, list[int]] = {}
    by_family: dict[str, list[int]] = {}
    if tasks is not None:
        for i, tree in enumerate(trees):
            if tree.task_id not in tasks:
                raise ValueError(f"tree {tree.tree_id}: task_id {tree.task_id!r} is not among the given tasks")
            by_family.setdefault(tasks[tree.task_id].family, []).append(i)
        for i, tree in enumerate(trees):
            task = tasks[tree.task_id]
            key = task.difficulty if len(by_family) < 2 else f"{task.family}/{task.difficulty}"
            by_difficulty.setdefault(key, []).append(i)
    by_depth: dict[int, list[int]] = {}
    for i, tree in enumerate(trees):
        by_depth.setdefault(tree.max_depth, []).append(i)
    summary = {
        "all": bucket_of(list(range(len(trees)))),
        "by_difficulty": {name: bucket_of(by_difficulty[name])
                          for name in sorted(by_difficulty, key=_difficulty_sort_key)},
        "by_depth": {depth: bucket_of(by_depth[depth]) for depth in sorted(by_depth)},
    }
    if len(by_family) > 1:
        summary["by_family"] = {name: bucket_of(by_family[name]) for name in sorted(by_family)}
    return summary


def _format_count(value: float) -> str:
    """Compact magnitude: 987, 12.3k, 4.56M."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.3g}k"
    return f"{value:.0f}"


def _table_cells(bucket: Mapping[str, Any]) -> list[str]:
    def fixed(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lo, hi = bucket["success_ci95"]
    tokens = ("-" if bucket["prompt_tokens"] is None
              else f"{_format_count(bucket['prompt_tokens'])}/{_format_count(bucket['response_tokens'])}")
    return [
        str(bucket["trees"]),
        f"{bucket['success']:.3f} [{lo:.2f},{hi:.2f}]",
        fixed(bucket["mean_reward"], 3),
        f"{bucket['depth_max']}/{bucket['depth_mean']:.2f}",
        f"{bucket['children_per_node']:.2f}/{fixed(bucket['children_per_parent'], 2)}",
        fixed(bucket["parallel_fraction"], 2),
        fixed(bucket["model_calls"], 1),
        f"{fixed(bucket['critical_path'], 1)} ({fixed(bucket['critical_over_total'], 2)})",
        tokens,
        fixed(bucket["wall_seconds"], 1),
        str(bucket["context_overflows"]),
    ]


_TABLE_HEADER = ["mode", "bucket", "trees", "success [95% CI]", "reward", "depth", "ch/node", "par", "calls",
                 "crit path", "tokens p/r", "wall s", "ovfl"]
_TABLE_LEGEND = (
    "depth: max/mean tree depth; ch/node: children per node / per node with children; par: share of launches\n"
    "running alongside a sibling; calls, crit path (its share of calls), tokens (prompt/response) and\n"
    "wall s: means per tree; ovfl: nodes that hit the context window, in total; -: undefined.")


def format_table(results: Mapping[str, Mapping[str, Any]], by: str = "difficulty") -> str:
    """A fixed-width text table of several modes' summaries.

    Args:
        results: ``mode -> summarize(...)`` (e.g. ``"recursive"``, ``"flat"``, ``"oracle"``).
        by: ``"difficulty"`` or ``"depth"``: the buckets listed under each mode's ``all`` row (with
            ``"difficulty"``, a summary with ``by_family`` lists each family's row first).

    Returns:
        The table (header, one row per mode and bucket, a legend), lines of about 120 columns at most.
    """
    if by not in ("difficulty", "depth"):
        raise ValueError(f"by must be 'difficulty' or 'depth', got {by!r}")
    rows = []
    for mode, summary in results.items():
        rows.append([mode, "all", *_table_cells(summary["all"])])
        if by == "difficulty":
            families = summary.get("by_family", {})
            rows.extend(["", f"{name}/*", *_table_cells(bucket)] for name, bucket in families.items())
        for name, bucket in summary[f"by_{by}"].items():
            label = f"depth {name}" if by == "depth" else str(name)
            rows.append(["", label, *_table_cells(bucket)])
    widths = [max(len(row[col]) for row in [_TABLE_HEADER, *rows]) for col in range(len(_TABLE_HEADER))]

    def line(cells: list[str]) -> str:
        # Text columns left-aligned, figures right-aligned.
        return " ".join(cell.ljust(w) if col < 2 else cell.rjust(w)
                        for col, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    header = line(_TABLE_HEADER)
    return "\n".join([header, "-" * len(header), *(line(row) for row in rows), "", _TABLE_LEGEND])


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def to_json(results: Mapping[str, Any], indent: int | None = 2) -> str:
    """Strict JSON of ``summarize`` output (or a ``mode -> summary`` mapping of them).

    numpy scalars become Python numbers, NaN / inf become null, dict keys (depths) become strings.
    """
    return json.dumps(_json_safe(results), indent=indent, allow_nan=False)
