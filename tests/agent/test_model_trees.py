"""A tiny model, warm-started on program-style demonstrations, grows deep parallel trees itself.

The scripted-policy tests (test_rollout.py) cover the runtime's records with any tree shape; this one
checks that the same runtime, driven by the sampler and a trained tiny Qwen3, produces trees of depth
>= 3 with sub-agents launched together in one ``asyncio.gather``, with consistent records.
"""

from __future__ import annotations

import asyncio

import pytest

from rao_jax.config import from_config_dict
from rao_jax.evaluate import _restore_policy, evaluate
from rao_jax.runtime import Runtime
from rao_jax.train import train
from tests.agent.test_rollout import check_consistent
from tests.test_train import _config


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_warm_started_tiny_model_grows_depth_three_trees_with_parallel_children(tmp_path):
    workdir = tmp_path / "run"
    knobs = {"preset": "tiny", "per_difficulty": 4, "difficulties": [["t4", 4, 4]], "max_steps": 200,
             "inventory_buffer": 1.0}
    config = from_config_dict(_config(**{
        "workdir": str(workdir), "data.knobs": knobs, "tokenizer.corpus_tasks": 4,
        "rollout.root_budget": 0, "rollout.brief_prompt": True, "rollout.goal_variables": True,
        "rollout.max_new_tokens": 128,
        "engine.max_rows": 16, "engine.num_pages": 512,
        "sft.steps": 80, "sft.num_tasks": 4, "sft.rows": 4, "sft.learning_rate": 3e-3,
        "sft.difficulties": ["t4"], "sft.oracle_knobs": {"style": "program", "goal_variables": True},
        "train.steps": 0, "train.eval_every": 0, "eval.num_tasks": 1}))
    train(config, progress=False)

    runtime = Runtime.create(config)
    _restore_policy(runtime, str(workdir / "checkpoints"), None)
    tasks = runtime.tasks.tasks("train", 4)

    async def roll():
        async with runtime.sandboxes():
            return await evaluate(runtime, tasks, ("recursive",), temperature=0.0, tag="deep")

    summaries, trees = asyncio.run(roll())
    trees = trees["recursive"]
    for tree in trees:
        check_consistent(tree)
    deep = [t for t in trees if t.max_depth >= 3 and t.root.success == 1.0]
    assert deep, [(t.max_depth, t.root.success) for t in trees]
    # Parallel children: some node forked two or more sub-agents in one step (one asyncio.gather).
    assert any(len(step.children) >= 2 for t in deep for n in t.nodes for step in n.steps)
    assert all(n.tokens and n.response_token_count for t in deep for n in t.nodes)   # model-driven nodes
