"""Text to train a from-scratch tokenizer on: the prompts, actions and observations of oracle trees.

Both corpora run oracle trees in-process (``scripted_rollout.run_tree``, no sandbox) through one
``_Recorder``, which keeps, in the order they happen, every node's user prompt (at its first step),
every observation an action's node read next, and every action.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from rao_jax.agent.oracles import make_oracle
from rao_jax.agent.policy import NodeView
from rao_jax.agent.protocol import system_prompt, user_prompt
from rao_jax.agent.scripted_rollout import run_tree
from rao_jax.envs.base import Task
from rao_jax.envs.families import open_episode


class _Recorder:
    """Wraps a policy and records ("prompt" | "observation" | "action", text) in the order they happen."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.events: list[tuple[str, str, bool]] = []   # (kind, text, the root's)

    async def act(self, view: NodeView):
        if view.steps:
            self.events.append(("observation", view.steps[-1].observation, False))
        else:
            self.events.append(("prompt", user_prompt(view), view.parent_id is None))
        action = await self.policy.act(view)
        self.events.append(("action", action if isinstance(action, str) else getattr(action, "text", ""), False))
        return action


def corpus_texts(tasks: Iterable[Task], *, recursive_and_flat: bool = True,
                 max_trees: int | None = None) -> Iterator[str]:
    """Text to train a from-scratch tokenizer on a task family, one training sentence per item.

    Per task: the system prompt (flat and recursive modes, or recursive only), the root's user prompt,
    then for each mode one oracle tree: every action, every observation an action's node read next, and
    each child's user prompt. The observation of a node's last action is not included (no later step
    reads it). Each system prompt is repeated per task on purpose: every node reads it, so its words
    should weigh as much as they will in training.

    Args:
      tasks: tasks of any family with an oracle (``rao_jax.agent.oracles.make_oracle``).
      recursive_and_flat: False keeps the recursive mode only.
      max_trees: run at most this many oracle trees in all (None: every task, each mode); later tasks
        still give their prompts.

    Runs ``asyncio.run`` per tree, so call it outside an event loop.
    """
    modes = (False, True) if recursive_and_flat else (True,)
    trees = 0
    for task in tasks:
        episode = open_episode(task)
        for recursive in modes:
            yield system_prompt(episode.tool_docs(recursive), recursive)
        root = NodeView(0, 0, None, 0, episode.root_goal(), task.max_steps, modes[-1], (),
                        counts_in_text=episode.counts_in_text)
        yield user_prompt(root)
        for recursive in modes:
            if max_trees is not None and trees >= max_trees:
                break
            trees += 1
            recorder = _Recorder(make_oracle(task, recursive))
            run_tree(open_episode(task), recorder, task.max_steps, recursive)
            yield from (text for _, text, root in recorder.events if not root)


def oracle_corpus_texts(tasks: Iterable[Task], oracle_knobs: dict[str, Any], *,
                        brief_prompt: bool = False) -> Iterator[str]:
    """Tokenizer-corpus texts of the oracle that ``oracle_knobs`` selects (``make_oracle``): per task and
    mode the system prompt (``brief_prompt`` variant), every node's user prompt, then the tree's actions
    and observations.

    ``corpus_texts`` runs the default oracles; a warm start on another oracle's demonstrations (e.g.
    ``observable=True``) adds these so its text is tokenised as compactly. Runs ``asyncio.run`` per tree:
    call it outside an event loop.
    """
    for task in tasks:
        for recursive in (False, True):
            episode = open_episode(task)
            yield system_prompt(episode.tool_docs(recursive), recursive, brief=brief_prompt)
            recorder = _Recorder(make_oracle(task, recursive, **dict(oracle_knobs)))
            run_tree(episode, recorder, task.max_steps, recursive)
            yield from (text for kind, text, _ in recorder.events if kind == "prompt")
            yield from (text for kind, text, _ in recorder.events if kind != "prompt")
