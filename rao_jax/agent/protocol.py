"""The prompt and action protocol of a node: what the model reads and how its answer is read.

Text side (used by every policy, scripted or model-backed):

- ``system_prompt`` documents the CodeAct format, the REPL, ``finish``, the task family's tools and,
  in recursive mode only, ``launch_subagent`` with an ``asyncio.gather`` example. In flat mode the
  word ``launch_subagent`` appears nowhere in the prompt.
- ``user_prompt`` states a node's goal, the context its parent passed and its budget.
- ``parse_action`` reads ``<thought>...</thought><python>...</python>``; anything malformed becomes
  an explanation that the runtime shows as the observation (the step still counts).
- ``format_observation`` makes a cell's output compact: long text keeps its head and tail with a
  note saying how much was cut.

Token side (used by a model-backed policy): ``ChatTemplate`` (Qwen3 ``<|im_start|>`` /
``<|im_end|>``, or the role tokens of from-scratch sentencepiece models) and ``NodeTranscript``, which
grows one node's token list by appending segments, never re-tokenising what is already there, so
step k+1's prompt is a token-level extension of step k's prompt plus response.

How a model-backed policy plugs in (``rao_jax.sampling.engine.SamplingEngine``), per ``act(view)``:
keep one ``NodeTranscript`` per ``(view.tree_id, view.node_id)``; at the node's first step
``prompt = tr.start(system_prompt(episode.tool_docs(view.recursive), view.recursive), user_prompt(view))``,
later ``prompt = tr.observe(view.steps[-1].observation)``; then
``c = await engine.submit(tr.tokens, SamplingParams(max_new_tokens, temperature,
stop=action_stop_sequences(tok, template)), seq_id=(tree_id, node_id))`` (the engine prefills only
the extension of the cached sequence), ``tr.add_response(c.tokens, c.logprobs)`` and return
``PolicyAction(tok.decode(c.tokens), ActionTokens(tuple(prompt), tuple(c.tokens), tuple(c.logprobs)))``.
The runtime records the node's tokens / loss mask / log-probs from those segments; pass
``on_node_end=lambda tree, node: engine.release((tree, node))`` to ``RolloutRunner`` so a node's KV
pages are freed when it ends (a suspended parent's pages stay until then).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Protocol

from rao_jax.agent.policy import NodeView


class Tokenizer(Protocol):
    """The little a transcript needs from a tokenizer (sentencepiece or HF tokenizer.json)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text, with no BOS/EOS or other special tokens added."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids (special tokens rendered as their text)."""
        ...

    def special_id(self, token: str) -> int:
        """The id of a special token such as ``<|im_end|>``; raises KeyError if the vocab lacks it."""
        ...


# The stop string of every action: sampling ends when a cell is closed.
ACTION_STOP = "</python>"


def action_stop_sequences(tokenizer: Tokenizer, template: ChatTemplate, max_sequences: int = 4,
                          max_len: int = 8) -> tuple[tuple[int, ...], ...]:
    """Token sequences that end an action, for a sampler that stops on token sequences.

    The end-of-turn token, then the tokenisations of ``</python>`` after the text that usually
    precedes it (a BPE may merge the newline before it into the same token). Stopping is only an
    economy: ``parse_action`` reads the first closed cell whatever follows it.
    """
    seqs: list[tuple[int, ...]] = [(tokenizer.special_id(template.end_of_turn),)]
    for before in ("\n", "", ")\n", " ", "\n\n"):
        ids = tokenizer.encode(before + ACTION_STOP)
        suffix = next(tuple(ids[-k:]) for k in range(1, len(ids) + 1) if ACTION_STOP in tokenizer.decode(ids[-k:]))
        if len(suffix) <= max_len and suffix not in seqs:
            seqs.append(suffix)
    return tuple(seqs[:max_sequences])


@dataclasses.dataclass(frozen=True)
class Piece:
    """A template fragment: plain text (tokenised) or the name of one special token."""

    text: str
    special: bool = False


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """Where the turns of a chat begin and end, as pieces; ``end_of_turn`` names the special token
    that closes a turn (a sampled one ends the response, else the runtime appends it)."""

    name: str
    begin: tuple[Piece, ...]                     # once, at the start of the sequence
    turn_start: dict[str, tuple[Piece, ...]]     # per role: "system" | "user" | "assistant"
    turn_end: tuple[Piece, ...]
    end_of_turn: str
    assistant_preamble: tuple[Piece, ...] = ()   # e.g. Qwen3's empty think block in non-thinking mode


def qwen3_template(empty_think: bool = False) -> ChatTemplate:
    """Qwen3 chat layout; ``empty_think`` adds the empty ``<think>`` block of hybrid-thinking models run
    without thinking (Instruct-2507 models do not use it)."""
    roles = ("system", "user", "assistant")
    return ChatTemplate(
        name="qwen3",
        begin=(),
        turn_start={r: (Piece("<|im_start|>", True), Piece(f"{r}\n")) for r in roles},
        turn_end=(Piece("<|im_end|>", True), Piece("\n")),
        end_of_turn="<|im_end|>",
        assistant_preamble=(Piece("<think>\n\n</think>\n\n"),) if empty_think else (),
    )




def sentencepiece_template() -> ChatTemplate:
    """Chat layout of from-scratch models: BOS once, one role token per turn, ``<|end|>`` closes it."""
    return ChatTemplate(
        name="sentencepiece",
        begin=(Piece("<s>", True),),
        turn_start={r: (Piece(f"<|{r}|>", True),) for r in ("system", "user", "assistant")},
        turn_end=(Piece("<|end|>", True),),
        end_of_turn="<|end|>",
    )


class NodeTranscript:
    """One node's token sequence, built only by appending.

    Use: ``start(system, user)`` before the first sampling, ``add_response`` after each one and
    ``observe(text)`` before each later sampling. Each call returns the tokens it appended (the
    ``ActionTokens.prompt`` segment of the step); ``tokens`` is always the exact sequence the engine
    saw plus what it sampled, and ``loss_mask`` / ``logprobs`` align with it.
    """

    def __init__(self, template: ChatTemplate, tokenizer: Tokenizer):
        self.template = template
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.loss_mask: list[int] = []
        self.logprobs: list[float] = []
        self._end_id = tokenizer.special_id(template.end_of_turn)
        self._specials = self._special_names()
        self._special_ids = {tokenizer.special_id(n) for n in self._specials}
        self._awaiting = "start"   # next allowed call: "start" | "response" | "observe"

    def _special_names(self) -> set[str]:
        t = self.template
        pieces = [*t.begin, *t.turn_end, *t.assistant_preamble, *(p for ps in t.turn_start.values() for p in ps)]
        return {p.text for p in pieces if p.special} | {t.end_of_turn}

    def _encode_text(self, text: str) -> list[int]:
        text = clean_text(text)   # a cell's output, a parent's context: any str a tokenizer may choke on
        ids = self.tokenizer.encode(text)
        if not self._special_ids.isdisjoint(ids):
            # Text (an observation, a goal) spelled a special token: break the spelling with a zero-width
            # space so printed text can never forge a turn boundary.
            for name in self._specials:
                text = text.replace(name, name[:1] + "\u200b" + name[1:])
            ids = self.tokenizer.encode(text)
        return ids

    def _encode(self, pieces: Sequence[Piece]) -> list[int]:
        out: list[int] = []
        for p in pieces:
            out.extend([self.tokenizer.special_id(p.text)] if p.special else self._encode_text(p.text))
        return out

    def _turn(self, role: str, text: str) -> list[Piece]:
        return [*self.template.turn_start[role], Piece(text), *self.template.turn_end]

    def _append_prompt(self, ids: list[int]) -> list[int]:
        self.tokens.extend(ids)
        self.loss_mask.extend([0] * len(ids))
        self.logprobs.extend([0.0] * len(ids))
        return ids

    def _expect(self, call: str) -> None:
        if self._awaiting != call:
            raise RuntimeError(f"NodeTranscript: {call} called when {self._awaiting} was expected")

    def start(self, system: str, user: str) -> list[int]:
        """Begin the sequence: system turn, user turn, assistant header."""
        self._expect("start")
        pieces = [*self.template.begin, *self._turn("system", system), *self._turn("user", user),
                  *self.template.turn_start["assistant"], *self.template.assistant_preamble]
        self._awaiting = "response"
        return self._append_prompt(self._encode(pieces))

    def add_response(self, tokens: Sequence[int], logprobs: Sequence[float]) -> None:
        """Append sampled tokens (trained on: loss mask 1)."""
        self._expect("response")
        if len(tokens) != len(logprobs):
            raise ValueError(f"{len(tokens)} tokens but {len(logprobs)} logprobs")
        self.tokens.extend(tokens)
        self.loss_mask.extend([1] * len(tokens))
        self.logprobs.extend(float(x) for x in logprobs)
        self._awaiting = "observe"

    def observe(self, observation: str) -> list[int]:
        """Close the assistant turn (unless the model closed it), add the observation as a user turn
        and open the next assistant turn."""
        self._expect("observe")
        pieces: list[Piece] = []
        if not self.tokens or self.tokens[-1] != self._end_id:
            pieces.extend(self.template.turn_end)
        else:
            pieces.extend(self.template.turn_end[1:])  # the model sampled the end token itself
        pieces += [*self._turn("user", observation), *self.template.turn_start["assistant"],
                   *self.template.assistant_preamble]
        self._awaiting = "response"
        return self._append_prompt(self._encode(pieces))


# ---- text protocol -----------------------------------------------------------------------------


def format_action(thought: str, code: str) -> str:
    """One step's CodeAct text: ``<thought>...</thought>`` and a ``<python>`` cell."""
    return f"<thought>{thought}</thought>\n<python>\n{code}\n</python>"


_FORMAT = ("<thought>what you will do next and why</thought>\n"
           "<python>\n# one Python cell\n</python>")


def system_prompt(tool_docs: str, recursive: bool, brief: bool = False) -> str:
    """The system prompt of every node of a tree (the same for root and children).

    ``brief`` gives a few-line variant for tiny from-scratch models, which learn the protocol from
    demonstrations rather than from the prompt and pay for every prompt token at every node: the
    action format and each tool's signature only (``launch_subagent`` still only in recursive mode).
    """
    if brief:
        return brief_system_prompt(tool_docs, recursive)
    parts = [
        "You are an agent that solves a task by writing Python. Each turn, answer with a short thought "
        "and exactly one Python cell, in this format:\n\n" + _FORMAT,
        "The cell runs in a Python REPL that is private to you and persists across your turns: variables, "
        "functions and imports stay defined. What the cell prints, the value of its last expression, or "
        "its error becomes your next observation; long outputs are cut, so print what you need. "
        "Top-level `await` works and `asyncio` is already imported. Only safe standard modules can be "
        "imported (math, re, json, itertools, collections, functools, heapq, random, ...); there is no "
        "network and no file access "
        "outside the current directory; attribute names starting with an underscore are not accessible; "
        "cells have time, memory and output limits.",
        "Every turn costs one step of your budget. When you are done, call `finish(answer)`: it ends your "
        "episode and reports `answer` (a string or a JSON-like value such as a dict).",
        "## Tools\n\n" + tool_docs.strip(),
    ]
    if recursive:
        parts.append(
            "## Subagents\n\n"
            "`await launch_subagent(goal, budget, context=\"\")` starts a fresh copy of you on a sub-task "
            "and returns what it passed to `finish` (or an explanation if it did not finish). The subagent "
            "starts with an empty REPL and sees only its goal, its budget and the context you give it; it "
            "has the same tools, acts on the same environment, and may launch subagents itself. Launching "
            "with budget n reserves n + 1 of your steps until it ends; then its actual usage is charged to "
            "you and the rest comes back. A launch that does not fit your budget is refused with an "
            "explanation. Run independent sub-tasks in parallel with asyncio.gather:\n\n"
            "<python>\nfirst, second = await asyncio.gather(\n"
            "    launch_subagent(goal_a, budget=10),\n"
            "    launch_subagent(goal_b, budget=10, context=\"what it needs to know\"),\n)\n"
            "print(first, second)\n</python>")
    return "\n\n".join(parts)


# A tool line's signature: ``name(args) -> type`` up to the colon that starts its description.
_SIGNATURE = re.compile(r"^((?:await )?[A-Za-z_]\w*\(.*?\)(?: -> [\w\[\].]+)?)(?::|$)")


def brief_system_prompt(tool_docs: str, recursive: bool) -> str:
    """The ``brief`` system prompt: the format, then one signature per tool line of ``tool_docs``."""
    tools = []
    for line in tool_docs.strip().splitlines():
        m = _SIGNATURE.match(line.strip())
        if m and (recursive or "launch_subagent" not in m.group(1)):
            # Parameter names only: annotations and return types cost tokens a tiny model never reads.
            signature = re.sub(r" -> .*$", "", m.group(1).strip())
            tools.append(re.sub(r":\s*(\([^)]*\)|[^,)=]+)", "", signature))
    if recursive and not any("launch_subagent" in t for t in tools):
        tools.append("await launch_subagent(goal, budget, context='')")
    return "Answer: <thought>...</thought> then one <python> cell; finish(answer) ends you.\nTools: " + ", ".join(tools)


def user_prompt(view: NodeView) -> str:
    """The first user turn of a node: its goal, its parent's context and its budget (unless the env
    keeps counts out of the text: ``view.counts_in_text``)."""
    text = view.goal.text.strip()
    if view.goal.context.strip():
        text += "\n\nContext from the agent that launched you:\n" + view.goal.context.strip()
    return text + f"\n\nYou have {view.budget_left} steps." if view.counts_in_text else text


def subagent_note(child_id: int, budget: int, used: int, how: str, counts: bool = True) -> str:
    """The note a parent's next observation carries about a child that ended (``how``: "finished",
    "ran out of budget without calling finish", ...); ``counts=False``: without its id and steps."""
    if not counts:
        return f"[a subagent {how}]"
    return f"[subagent {child_id} {how}; it used {used} of its {budget} steps]"


def subagent_unfinished(child_id: int, budget: int, message: str | None = None, counts: bool = True) -> str:
    """What ``launch_subagent`` returns for a child that did not call ``finish`` (``message``: the
    policy's own reason when it ended the node early); ``counts=False``: without its id and steps."""
    who = f"Subagent {child_id}" if counts else "The subagent"
    if message is not None:
        return f"{who} did not finish: {message}"
    steps = f"all {budget} of its steps" if counts else "all of its steps"
    return f"{who} did not finish: it used {steps} without calling finish."


@dataclasses.dataclass(frozen=True)
class ParsedAction:
    """An action split into its parts; ``code`` is None when nothing can run and ``error`` says why."""

    thought: str
    code: str | None
    error: str | None = None
    note: str | None = None   # something to tell the agent although the cell ran


_THOUGHT = re.compile(r"<thought>(.*?)(?:</thought>|(?=<python>)|\Z)", re.DOTALL)
_PYTHON_OPEN = "<python>"
_FENCE = re.compile(r"^\s*```(?:python|py)?[ \t]*\n(.*?)\n?```\s*$", re.DOTALL)


def parse_action(text: str) -> ParsedAction:
    """Read an action; never raises (a malformed action becomes an explanation)."""
    m = _THOUGHT.search(text)
    thought = m.group(1).strip() if m else ""
    start = text.find(_PYTHON_OPEN)
    if start < 0:
        return ParsedAction(thought, None, "Your answer had no <python> cell, so nothing ran. Answer with "
                            "exactly this format:\n" + _FORMAT)
    body_start = start + len(_PYTHON_OPEN)
    end = text.find(ACTION_STOP, body_start)
    if end < 0:
        return ParsedAction(thought, None, "Your <python> cell was not closed with </python> (the answer was "
                            "probably cut off at the length limit), so nothing ran. Keep cells short.")
    code = text[body_start:end]
    fenced = _FENCE.match(code)
    if fenced:
        code = fenced.group(1)
    code = code.strip("\n")
    note = None
    if text.find(_PYTHON_OPEN, end) >= 0:
        note = "Only the first <python> cell of your answer was run; write one cell per turn."
    if not code.strip():
        return ParsedAction(thought, None, "Your <python> cell was empty, so nothing ran.")
    return ParsedAction(thought, code, None, note)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """``text`` as every tokenizer can take it: lone surrogates (``chr(0xD800)``, which UTF-8 cannot
    encode) become U+FFFD, control characters other than tab, newline and carriage return go."""
    return _CONTROL.sub("", _LONE_SURROGATE.sub("\ufffd", text))


def truncate_middle(text: str, max_chars: int) -> str:
    """``text`` cut to about ``max_chars``, keeping its head and tail around a note of what was cut."""
    if len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[len(text) - tail:]}"


def format_observation(output: str, value: str | None, error: str | None, notes: Sequence[str] = (),
                       max_chars: int = 4000) -> str:
    """The observation of one step: printed output, last-expression value, error, runtime notes."""
    parts = []
    if output:
        parts.append(output.rstrip("\n"))
    if value is not None:
        parts.append(value)
    if error:
        parts.append(error.rstrip("\n"))
    body = truncate_middle("\n".join(parts), max_chars) if parts else "(the cell ran and printed nothing)"
    return clean_text("\n".join([body, *notes]))
