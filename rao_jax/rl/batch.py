"""From finished delegation trees to one packed training batch (RAO_SPEC sections 2-3).

The trees of one RL step come grouped by root task (G trees each). Their nodes are flattened into
per-node arrays (own success, parent index, tree index, task index, root flag), padded to a
power-of-two length so the jitted reward / advantage call compiles a bounded number of times, and
passed through ``node_rewards`` -> ``tree_advantages`` (-> ``signal_mask``) in one vectorised call.
Every node that sampled tokens then becomes a ``NodeSequence`` carrying its scalar advantage, and
the sequences are packed into rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rao_jax.agent.tree import TreeResult
from rao_jax.rl.advantages import signal_mask, tree_advantages
from rao_jax.rl.packing import NodeSequence, PackedBatch, pack_sequences
from rao_jax.rl.rewards import node_rewards


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    """The reward / advantage variants (see ``rewards.node_rewards`` and ``advantages.tree_advantages``)."""

    bonus: str = "mean"
    lam: float = 0.0
    beta: float = 0.2
    cap: float = 0.4
    baseline: str = "loo"
    normalize_std: bool = False
    drop_zero_signal: bool = True


@dataclasses.dataclass(frozen=True)
class NodeTable:
    """Flat per-node arrays of a step's trees; ``nodes[i]`` is ``(task, tree, NodeRecord)`` of row i."""

    success: np.ndarray   # f32[N]
    parent: np.ndarray    # i32[N] row of the parent, -1 for roots
    tree: np.ndarray      # i32[N] tree index within the step
    task: np.ndarray      # i32[N] task index within the step
    is_root: np.ndarray   # bool[N]
    nodes: tuple


def node_table(groups: Sequence[Sequence[TreeResult]]) -> NodeTable:
    """Flattens ``groups[task][g]`` trees into per-node arrays (roots first within each tree)."""
    success, parent, tree, task, is_root, nodes = [], [], [], [], [], []
    tree_index = 0
    for t, group in enumerate(groups):
        for result in group:
            row_of = {n.node_id: len(success) + i for i, n in enumerate(result.nodes)}
            for n in result.nodes:
                success.append(n.success)
                parent.append(-1 if n.parent_id is None else row_of[n.parent_id])
                tree.append(tree_index)
                task.append(t)
                is_root.append(n.parent_id is None)
                nodes.append((t, tree_index, n))
            tree_index += 1
    return NodeTable(np.asarray(success, np.float32), np.asarray(parent, np.int32), np.asarray(tree, np.int32),
                     np.asarray(task, np.int32), np.asarray(is_root, bool), tuple(nodes))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _rewards_and_advantages(success, parent, tree, task, is_root, valid, cfg: AdvantageConfig):
    reward = node_rewards(success, parent, bonus=cfg.bonus, lam=cfg.lam, beta=cfg.beta, cap=cfg.cap, valid=valid)
    advantage = tree_advantages(reward, tree, task, is_root, baseline=cfg.baseline,
                                normalize_std=cfg.normalize_std, valid=valid)
    keep = signal_mask(reward, task, valid) if cfg.drop_zero_signal else valid
    return reward, advantage, keep


def rewards_and_advantages(table: NodeTable, cfg: AdvantageConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(R_v, A_v, keep_v)`` per node; ``keep`` is False for nodes of zero-signal groups when dropped."""
    n = len(table.success)
    size = max(8, 1 << (n - 1).bit_length())  # power-of-two padding: few distinct compilations

    def pad(x, fill):
        return jnp.asarray(np.concatenate([x, np.full(size - n, fill, x.dtype)]))

    valid = np.arange(size) < n
    # Padding rows are their own roots of task/tree 0; ``valid`` keeps them out of every segment.
    reward, advantage, keep = _rewards_and_advantages(
        pad(table.success, 0.0), pad(table.parent, -1), pad(table.tree, 0), pad(table.task, 0),
        pad(table.is_root, True), jnp.asarray(valid), cfg)
    return np.asarray(reward)[:n], np.asarray(advantage)[:n], np.asarray(keep)[:n]


@dataclasses.dataclass(frozen=True)
class StepBatch:
    batch: PackedBatch | None   # None when no node carries signal
    stats: dict[str, float]
    sequences: tuple[NodeSequence, ...] = ()   # what ``batch`` packs (to pack again to another row count)


def build_batch(groups: Sequence[Sequence[TreeResult]], cfg: AdvantageConfig, *, row_len: int,
                row_multiple: int = 1) -> StepBatch:
    """Rewards, advantages and the packed batch of one RL step.

    Args:
        groups: ``groups[task][g]``: the G trees of each root task (model-driven, so nodes carry tokens).
        cfg: reward / advantage variants.
        row_len: tokens per packed row; a node whose episode is longer is skipped and counted.

    The row count is padded up to a multiple of ``row_multiple``: the trainer passes the rows of one
    micro-batch (a multiple of the devices the rows are split over), so every micro-batch of every
    step has one shape and the update compiles once.
    """
    table = node_table(groups)
    reward, advantage, keep = rewards_and_advantages(table, cfg)
    sequences, too_long, no_tokens = [], 0, 0
    for (_, _, node), a, k in zip(table.nodes, advantage, keep, strict=True):
        if not k:
            continue
        if node.tokens is None or not any(node.loss_mask):
            no_tokens += 1
            continue
        if len(node.tokens) > row_len:
            too_long += 1
            continue
        sequences.append(NodeSequence(np.asarray(node.tokens, np.int32), np.asarray(node.loss_mask, np.float32),
                                      np.asarray(node.logprobs, np.float32), float(a)))
    roots = table.is_root
    stats = {
        "trees": float(roots.sum()),
        "nodes": float(len(table.success)),
        "success": float(table.success[roots].mean()) if roots.any() else 0.0,
        "node_success": float(table.success.mean()) if len(table.success) else 0.0,
        "root_reward": float(reward[roots].mean()) if roots.any() else 0.0,
        "advantage_abs": float(np.abs(advantage).mean()) if len(advantage) else 0.0,
        "trained_nodes": float(len(sequences)),
        "dropped_zero_signal": float((~keep).sum()),
        "skipped_too_long": float(too_long),
        "skipped_no_tokens": float(no_tokens),
    }
    if not sequences:
        return StepBatch(None, stats)
    return StepBatch(pack_padded(sequences, row_len, row_multiple), stats, tuple(sequences))


def pack_padded(sequences: Sequence[NodeSequence], row_len: int, row_multiple: int = 1) -> PackedBatch:
    """``pack_sequences`` with the row count padded up to a multiple of ``row_multiple``."""
    needed = len(pack_sequences(sequences, row_len).tokens)
    return pack_sequences(sequences, row_len, num_rows=-(-needed // row_multiple) * row_multiple)
