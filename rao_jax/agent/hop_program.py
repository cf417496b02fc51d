"""A ChainHop demonstrator for tiny from-scratch models: fixed program cells plus the one thing only a
model can do here, reading a document to find the sentence that states a relation.

With ``rollout.goal_variables`` every node's namespace holds ``goal``: the root's ``{'chains':
[{'start': NAME, 'relations': [REL, ...]}, ...]}`` (one chain, or two for a fork), a child's
``{'entity': NAME, 'relation': REL}``. Documents are built with ``shuffle_facts`` so a fact may be any
sentence; a cell prints the document's sentences, each followed by its number (the entity's own name
left out, so a fact reads ``works for Tasvo Belsul = 3``), and the model labels each sentence with the
relation it states (``{0: '-', 1: '-', 2: 'employer', ...}``; ``-`` for none). Python takes the name
that ends the sentence labelled with the relation asked, so no cell copies a name.

- recursive, root: one cell, whatever the number of hops: ``follow`` walks a chain, launching one
  child per hop and awaiting it before the next (the hops depend on each other); the chains run
  side by side in one ``asyncio.gather`` (a fork's two chains are independent); then it finishes with
  the answer. Child: LOOK (print its entity's document, numbered), then PICK (label the sentences;
  finish with the name the relation's label points to).
- flat: START (define ``look`` and ``pick``, print the first document), then ``print(pick(labels))``
  per hop (take the name, move to the next hop or chain and print its document; after the last hop
  finish). Every document of every chain passes through the one node's context.

``mistake_rate`` makes it imperfect: with that probability a PICK swaps one fact's label with another
sentence's.
"""

from __future__ import annotations

import random
import re

from rao_jax.agent.policy import NodeView
from rao_jax.agent.protocol import format_action as action
from rao_jax.envs import chain_hop
from rao_jax.envs.base import Task

NUMBER = "e = {name}\nS = view(search(e)[0][0]).rstrip('.').split('. ')\n"
# Each sentence with its number after it, the entity's own name left out (``works for Tasvo Belsul = 3``).
SHOW = "[f'{s.removeprefix(e).strip()} = {i}' for i, s in enumerate(S)]"
LOOK = NUMBER.format(name="goal['entity']") + f"print(*{SHOW}, sep='\\n')"
# The model labels every sentence it read with the relation it states ('-': none); Python takes the
# name ending the sentence labelled with the relation asked.
TAKE = "' '.join(S[[i for i in L if L[i] == {relation}][0]].split()[-2:])"
PICK = "L = {labels}\nfinish(" + TAKE.format(relation="goal['relation']") + ")"
# The root's one cell: ``follow`` walks one chain, a launch per hop, each awaited before the next;
# the chains run side by side in one ``asyncio.gather``; then the answer.
ROOT = ("C = goal['chains']\n\nasync def follow(x):\n    n = x['start']\n    for r in x['relations']:\n"
        "        n = await launch_subagent({'entity': n, 'relation': r}, 3)\n    return n\n\n"
        "N = await asyncio.gather(*[follow(x) for x in C])\nfinish(N[0] if len(N) == 1 else list(N))")
# The flat agent's first cell defines ``look`` (a document's sentences, numbered) and ``pick`` (take
# the name the labels point to, move to the next hop or chain and look at its document; after the last
# hop of the last chain, finish with the answer).
FLAT_START = ("C = goal['chains']\nA = []\nc = h = 0\n\ndef look(n):\n    global e, S\n    "
              + NUMBER.format(name="n").strip().replace("\n", "\n    ") + "\n"
              + f"    return '\\n'.join({SHOW})\n\n"
              "def pick(L):\n    global c, h\n    n = " + TAKE.format(relation="C[c]['relations'][h]")
              + "\n    h += 1\n"
              "    if h == len(C[c]['relations']):\n        A.append(n)\n        c, h = c + 1, 0\n"
              "        if c == len(C):\n            return finish(A[0] if len(A) == 1 else A)\n"
              "        n = C[c]['start']\n"
              "    return look(n)\n\n"
              "print(look(C[0]['start']))")
FLAT_PICK = "print(pick({labels}))"
_SENTENCE = re.compile(r"^(.*) = (\d+)$", re.MULTILINE)
_PHRASES = {phrase: relation for relation, (_, _, phrase) in chain_hop.RELATIONS.items()}


def sentence_labels(observation: str) -> dict[int, str]:
    """``{number: relation stated or '-'}`` for every numbered sentence LOOK / ``look`` printed."""
    labels = {}
    for match in _SENTENCE.finditer(observation):
        stated = [rel for phrase, rel in _PHRASES.items() if f" {phrase} " in f" {match.group(1)} "]
        labels[int(match.group(2))] = stated[0] if stated else "-"
    return labels


class HopProgramOracle:
    """See the module docstring."""

    def __init__(self, task: Task, recursive: bool, mistake_rate: float = 0.0, seed: int = 0,
                 goal_variables: bool = True):
        if not goal_variables:
            raise ValueError("the ChainHop program oracle reads `goal`: it needs goal_variables")
        if not 0.0 <= mistake_rate < 1.0:
            raise ValueError(f"mistake_rate must be in [0, 1), got {mistake_rate}")
        self.recursive, self.mistake_rate = recursive, mistake_rate
        self.key = f"{seed}:{task.task_id}"

    async def act(self, view: NodeView) -> str:
        return self.action_for(view)

    def _labels(self, view: NodeView) -> dict[int, str] | None:
        """The labels of the sentences the last observation printed (None: it printed none); at
        ``mistake_rate`` one fact's label moves to another sentence."""
        labels = sentence_labels(view.steps[-1].observation)
        facts = [i for i, rel in labels.items() if rel != "-"]
        if not facts:
            return None
        draw = random.Random(f"{self.key}:{view.tree_id}:{view.node_id}:{len(view.steps)}")
        if len(labels) > 1 and draw.random() < self.mistake_rate:
            moved = draw.choice(facts)
            other = draw.choice([i for i in labels if i != moved])
            labels[moved], labels[other] = labels[other], labels[moved]
        return labels

    def action_for(self, view: NodeView) -> str:
        """The node's next action, from its goal, its past steps and a reproducible draw."""
        steps = view.steps
        if steps and ("Error" in steps[-1].observation or "Traceback" in steps[-1].observation):
            return action("Something failed.", "finish('failed')")
        if "entity" in view.goal.spec:   # a one-hop child
            if not steps:
                return action("Read the document.", LOOK)
            labels = self._labels(view) if len(steps) == 1 else None
            if labels is None:
                return action("Something failed.", "finish('failed')")
            return action("Label each sentence with the relation it states.", PICK.format(labels=labels))
        if self.recursive and view.recursive:
            if not steps:
                return action("One sub-agent per hop, the chains side by side.", ROOT)
            return action("Something failed.", "finish('failed')")
        if not steps:
            return action("Read the first document.", FLAT_START)
        labels = self._labels(view)
        if labels is not None:
            return action("Label each sentence with the relation it states.", FLAT_PICK.format(labels=labels))
        return action("Something failed.", "finish('failed')")
