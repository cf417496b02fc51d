"""ChainHop: DeepDive-style questions whose sub-tasks depend on each other (RAO_SPEC section 5).

Each task carries a generated knowledge base: people, companies, cities and countries linked by typed
relations, rendered as one short document per entity (plus filler sentences, the knob that fills the
context window). ``search(query)`` ranks documents by word overlap with the query; ``view(doc_id)``
shows one. A k-hop question starts from a named entity and follows k relations; every intermediate
entity is described by its relation, never named. Fork-and-join controls ask two independent chains
at once (answer ``[first, second]``). Scoring is exact match.

The root goal's spec holds the chains as data (``{"chains": [{"start": NAME, "relations": [REL, ...]}]}``,
no answers). A child goal ``{"entity": NAME, "relation": REL}`` asks for one hop; the environment knows
the answer, so each child is graded on its own. ``shuffle_facts`` places a document's facts at random
among its filler sentences (by default they come first, in a fixed order); ``brief_goal`` words the
root goal the same at every k, pointing to the chains in its spec (for agents that read them as
data, ``rollout.goal_variables``).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from rao_jax.envs.base import ActionError, Episode, Goal, Task, interleave, take_knob

FAMILY = "chain_hop"
TYPES = ("person", "company", "city", "country")
RELATIONS = {  # relation -> (source type, target type, phrase used in documents and questions)
    "employer": ("person", "company", "works for"),
    "birthplace": ("person", "city", "was born in"),
    "mentor": ("person", "person", "was mentored by"),
    "headquarters": ("company", "city", "is headquartered in"),
    "founder": ("company", "person", "was founded by"),
    "country": ("city", "country", "lies in"),
    "mayor": ("city", "person", "is governed by mayor"),
    "capital": ("country", "city", "has its capital in"),
}
_SYLLABLES = ("ka", "lo", "mi", "ren", "tas", "vo", "bel", "dun", "fi", "gor", "hal", "jin", "pra", "sul",
              "ter", "wen", "zor", "ny", "qua", "ex")
_FILLER = ("It is often mentioned in local newsletters.", "Records about it go back many years.",
           "Several archives keep notes on it.", "Visitors describe it in varied ways.",
           "Its history is discussed in a few essays.", "Little else is widely known about it.")
_WORD = re.compile(r"[a-z0-9_]+")


@dataclasses.dataclass(frozen=True)
class HopConfig:
    seed: int = 0
    entities_per_type: int = 30
    filler_sentences: int = 20             # per document: raises the tokens each view costs
    max_steps: int = 64
    window_tokens: int = 2048
    shuffle_facts: bool = False            # facts at random places among the filler (else first, in order)
    brief_goal: bool = False               # a root goal text that points to the chains in its spec


def _names(rng: random.Random, n: int) -> list[str]:
    names: list[str] = []
    seen = set()
    while len(names) < n:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        name += " " + "".join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize()
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def build_kb(config: HopConfig, rng: random.Random) -> dict[str, Any]:
    """Entities {name: {"type", "relations": {rel: target}}} and documents {doc_id: text}."""
    all_names = _names(rng, config.entities_per_type * len(TYPES))
    by_type = {t: all_names[i * config.entities_per_type:(i + 1) * config.entities_per_type]
               for i, t in enumerate(TYPES)}
    entities: dict[str, dict[str, Any]] = {}
    for etype, names in by_type.items():
        for name in names:
            rels = {}
            for rel, (src, dst, _) in RELATIONS.items():
                if src == etype:
                    rels[rel] = rng.choice([n for n in by_type[dst] if n != name])
            entities[name] = {"type": etype, "relations": rels}
    docs = {}
    for k, name in enumerate(sorted(entities)):
        entity = entities[name]
        facts = [f"{name} {RELATIONS[rel][2]} {target}." for rel, target in entity["relations"].items()]
        sentences = facts + [rng.choice(_FILLER) for _ in range(config.filler_sentences)]
        if config.shuffle_facts:
            rng.shuffle(sentences)
        docs[f"doc{k:04d}"] = f"{name} is a {entity['type']}. " + " ".join(sentences)
    return {"entities": entities, "docs": docs}


def _walk(entities, start: str, hops: int, rng: random.Random) -> list[tuple[str, str]]:
    """[(relation, entity reached)] for ``hops`` steps from ``start``, never revisiting an entity."""
    path, current, seen = [], start, {start}
    for _ in range(hops):
        options = [(rel, t) for rel, t in sorted(entities[current]["relations"].items()) if t not in seen]
        if not options:
            return []
        rel, current = rng.choice(options)
        seen.add(current)
        path.append((rel, current))
    return path


def chain_text(start: str, path: list[tuple[str, str]]) -> str:
    parts = [f"the {path[0][0]} of {start}"]
    for rel, _ in path[1:]:
        parts.append(f"the {rel} of that")
    return "; then ".join(parts)


def generate_task(config: HopConfig, split: str, index: int, hops: int, branches: int = 1,
                  difficulty: str | None = None) -> Task:
    if hops < 1 or branches not in (1, 2):
        raise ValueError(f"need hops >= 1 and branches in (1, 2), got {hops}, {branches}")
    rng = random.Random(f"{config.seed}/{FAMILY}/{split}/{index}")
    kb = build_kb(config, rng)
    chains = []
    names = sorted(kb["entities"])
    while len(chains) < branches:
        start = rng.choice(names)
        path = _walk(kb["entities"], start, hops, rng)
        if path and all(start != c["start"] for c in chains):
            chains.append({"start": start, "relations": [r for r, _ in path], "answer": path[-1][1]})
    gold: Any = chains[0]["answer"] if branches == 1 else [c["answer"] for c in chains]
    if config.brief_goal:   # the same few words at every k: the chains are in the goal's spec
        goal = ("Follow the chain in goal to its end. Answer with the entity's name." if branches == 1 else
                "Follow the two chains in goal to their ends. Answer as [first, second].")
    elif branches == 1:
        goal = (f"Find {chain_text(chains[0]['start'], [(r, '') for r in chains[0]['relations']])}. "
                "Answer with the entity's name.")
    else:
        goal = ("Answer two independent questions as [first, second]. First: find "
                + chain_text(chains[0]["start"], [(r, "") for r in chains[0]["relations"]]) + ". Second: find "
                + chain_text(chains[1]["start"], [(r, "") for r in chains[1]["relations"]]) + ".")
    spec = {"kb": kb, "chains": chains, "gold": gold, "window_tokens": config.window_tokens}
    return Task(task_id=f"{FAMILY}.{split}.{index}", family=FAMILY, goal=goal, max_steps=config.max_steps,
                difficulty=difficulty or f"k{hops}" + ("_fork" if branches == 2 else ""), spec=spec)


class HopEpisode(Episode):
    """Read-only documents; exact-match grading of the root and of one-hop children."""

    def __init__(self, task: Task):
        try:
            self.entities = dict(task.spec["kb"]["entities"])
            self.docs = dict(task.spec["kb"]["docs"])
            self.gold = task.spec["gold"]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"task {task.task_id}: malformed chain_hop spec ({err})") from None
        self.task = task
        self._index = {doc_id: set(_WORD.findall(text.lower())) for doc_id, text in sorted(self.docs.items())}
        self._titles = {doc_id: text.split(" is a ")[0] for doc_id, text in self.docs.items()}
        self._goals: dict[int, Goal] = {}

    def root_goal(self) -> Goal:
        # The chains as data (``goal`` in a node's namespace under ``rollout.goal_variables``); no answers.
        chains = [{"start": c["start"], "relations": list(c["relations"])} for c in self.task.spec["chains"]]
        return Goal(text=self.task.goal, spec={"chains": chains})

    def tool_docs(self, recursive: bool) -> str:
        docs = ["search(query: str) -> list of [doc_id, title] (best 5 by word overlap).",
                "view(doc_id: str) -> str: the document.", "finish(answer): the name (or [first, second])."]
        if recursive:
            docs.append("await launch_subagent({'entity': NAME, 'relation': REL}, budget) -> the name reached "
                        f"by one hop; REL one of {sorted(RELATIONS)}.")
        return "\n".join(docs)

    def open_node(self, node_id: int, parent_id: int | None, goal: Goal) -> None:
        self._goals[node_id] = goal

    def tools(self, node_id: int) -> dict[str, Callable[..., Any]]:
        return {"search": self.search, "view": self.view}

    def search(self, query: Any) -> list[list[str]]:
        if not isinstance(query, str) or not query.strip():
            raise ActionError("search takes a non-empty query string")
        words = set(_WORD.findall(query.lower()))
        title_words = {d: set(_WORD.findall(t.lower())) for d, t in self._titles.items()}
        ranked = sorted(self._index, key=lambda d: (-2 * len(words & title_words[d]) - len(words & self._index[d]), d))
        return [[d, self._titles[d]] for d in ranked[:5] if words & self._index[d]]

    def view(self, doc_id: Any) -> str:
        if not isinstance(doc_id, str) or doc_id not in self.docs:
            raise ActionError(f"view: no document {doc_id!r}")
        return self.docs[doc_id]

    def parse_child_goal(self, goal: Any, context: str) -> Goal:
        if not isinstance(goal, Mapping) or set(goal) != {"entity", "relation"}:
            raise ActionError("launch_subagent goal must be {'entity': NAME, 'relation': REL}")
        entity, relation = goal["entity"], goal["relation"]
        if entity not in self.entities:
            raise ActionError(f"goal entity {entity!r} is not in the knowledge base")
        if relation not in self.entities[entity]["relations"]:
            raise ActionError(f"{entity} has no relation {relation!r}; it has "
                              f"{sorted(self.entities[entity]['relations'])}")
        return Goal(text=f"Find the {relation} of {entity}. Answer with the name.",
                    spec={"entity": entity, "relation": relation}, context=str(context or ""))

    def node_success(self, node_id: int, finish_message: Any | None) -> float:
        goal = self._goals[node_id]
        if finish_message is None:
            return 0.0
        gold = (self.entities[goal.spec["entity"]]["relations"][goal.spec["relation"]]
                if "entity" in goal.spec else self.gold)
        if isinstance(gold, list):
            return float(isinstance(finish_message, list | tuple) and [str(x) for x in finish_message] == gold)
        return float(str(finish_message).strip() == gold)


def tasks_from_knobs(split: str, knobs: dict[str, Any]) -> Iterator[Task]:
    """The ``chain_hop`` task source: ``num_tasks`` (10) per (hops, branches) cell, ``hops`` (train 2-3,
    val 5 and 8), ``branches`` (1 and 2), and every ``HopConfig`` field; round-robin over the cells."""
    n = take_knob(knobs, "num_tasks", 10)
    hops = take_knob(knobs, "hops", [2, 3] if split == "train" else [5, 8])
    branches = take_knob(knobs, "branches", [1, 2])
    config = HopConfig(**knobs)
    cells = [(int(k), int(b)) for k in hops for b in branches for _ in range(n)]
    return interleave(generate_task(config, split, index, k, b) for index, (k, b) in enumerate(cells))
