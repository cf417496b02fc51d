"""A language model as the policy of every node: ``Policy.act`` over the batched ``SamplingEngine``.

Per node (keyed by ``(tree_id, node_id)``) the policy keeps one ``NodeTranscript``, the node's token
sequence built only by appending (see ``protocol``):

- first step: system prompt (the family's tool docs, ``launch_subagent`` only in recursive mode) +
  user turn (goal, parent's context, budget) + assistant header;
- later steps: end of the previous turn + the last observation as a user turn + assistant header.

Each step submits the whole sequence to the engine under ``seq_id = (tree_id, node_id)``. The engine
keeps that sequence's KV pages between steps, so it prefills only the new segment (the node's
previous turns are never recomputed unless the engine had to preempt them). Sampling stops at
``</python>`` or at the end-of-turn token (``action_stop_sequences``). ``act`` returns a
``PolicyAction`` whose ``ActionTokens`` carry the appended prompt segment, the sampled tokens and
their behaviour log-probs, which the runtime concatenates into the node's record.

When a node ends, the runtime calls ``on_node_end(tree_id, node_id)``: pass ``policy.end_node``
(``RolloutRunner(policy, pool, on_node_end=policy.end_node)``) so the node's KV pages are freed and
its transcript dropped. A parent suspended on ``launch_subagent`` is not ended, so its pages stay
cached while its children run (under page pressure the engine may evict them and recompute them
at the parent's next step).

Context overflow. A node's sequence grows by a prompt segment and a response every step. Its limit
is ``context_limit = min(engine max_seq_len, model max_position_embeddings, max_context)``. Before
sampling, the policy caps the response at the room left; if fewer than ``min_new_tokens`` tokens of
room are left (with the new observation appended), it samples nothing and returns ``EndNode("context",
...)``: the runtime ends the node without charging a step, records ``end_reason == "context"`` and,
for a child, returns the explanation to the parent's ``launch_subagent``. Neither the engine nor the
tree ever sees a request that cannot fit.

Tree ids are unique only within one ``RolloutRunner``: runners sharing one engine need policies
with distinct ``name``s, which prefix their sequence ids.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable, Hashable

from rao_jax.agent.policy import ActionTokens, EndNode, NodeView, PolicyAction
from rao_jax.agent.protocol import (
    ChatTemplate,
    NodeTranscript,
    Tokenizer,
    action_stop_sequences,
    system_prompt,
    user_prompt,
)
from rao_jax.sampling import SamplingEngine, SamplingParams

log = logging.getLogger(__name__)

CONTEXT_END = "context"   # NodeRecord.end_reason of a node ended because its window was full


class ModelPolicy:
    """``Policy`` of a model served by a ``SamplingEngine`` (see the module docstring).

    Attributes:
        stats: counters over all nodes: ``steps``, ``prompt_tokens`` (segments appended),
            ``response_tokens``, ``reused_tokens`` (prompt tokens whose KV the engine already had),
            ``finish_<reason>`` per engine finish reason, ``shortened`` (steps whose response cap was
            cut to the room left), ``context_ends``, ``release_deferred``.
        in_flight: nodes currently waiting on the engine (submitted, not answered).
        max_in_flight: the most nodes that waited on the engine at once.
    """

    def __init__(self, engine: SamplingEngine, tokenizer: Tokenizer, template: ChatTemplate,
                 tool_docs: Callable[[bool], str] | None, params: SamplingParams, *, max_context: int | None = None,
                 min_new_tokens: int = 32, name: Hashable | None = None, brief_prompt: bool = False):
        """
        Args:
            engine: the sampler (a ``SamplingEngine`` or ``SamplerReplicas``); its ``max_seq_len`` and
                its model's window bound every node.
            tokenizer: the model's tokenizer (ids must be in the model's vocabulary).
            template: the model's chat layout.
            tool_docs: ``recursive -> text`` documenting the family's tools (``Episode.tool_docs``); None:
                each node's own (``NodeView.tool_docs``, which the runner fills in from its episode, so
                one policy serves trees of several families).
            params: sampling settings; ``max_new_tokens`` caps each response. If ``params.stop`` is
                empty the action stop sequences are used.
            max_context: an extra cap on a node's sequence length (tokens), below the engine's; a
                view's ``max_context`` (its family's window) caps it further.
            min_new_tokens: the fewest response tokens worth sampling; a node with less room left
                ends (clipped to ``params.max_new_tokens``).
            name: prefix of this policy's engine sequence ids (None: ``(tree_id, node_id)``).
            brief_prompt: use the few-line system prompt (``protocol.system_prompt(brief=True)``).
        """
        cfg = engine.config
        if not params.stop:
            params = dataclasses.replace(params, stop=action_stop_sequences(
                tokenizer, template, max_sequences=cfg.max_stops, max_len=cfg.max_stop_len))
        params.validate(vocab_size=engine.vocab_size, max_top_k=cfg.max_top_k, max_stops=cfg.max_stops,
                        max_stop_len=cfg.max_stop_len)
        if params.max_new_tokens < 1:
            raise ValueError(f"params.max_new_tokens must be >= 1, got {params.max_new_tokens}")
        if min_new_tokens < 1:
            raise ValueError(f"min_new_tokens must be >= 1, got {min_new_tokens}")
        limits = [cfg.max_seq_len, engine.model_cfg.max_position_embeddings]
        if max_context is not None:
            limits.append(max_context)
        self.context_limit = min(limits)
        self.engine = engine
        self.tokenizer = tokenizer
        self.template = template
        self.tool_docs = tool_docs
        self.name = name
        self.brief_prompt = brief_prompt
        self.params = params
        self.min_new_tokens = min(min_new_tokens, params.max_new_tokens)
        self._transcripts: dict[Hashable, NodeTranscript] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    def seq_id(self, tree_id: int, node_id: int) -> Hashable:
        """The engine sequence of a node."""
        return (tree_id, node_id) if self.name is None else (self.name, tree_id, node_id)

    def transcript(self, tree_id: int, node_id: int) -> NodeTranscript | None:
        """The live transcript of a node (None before its first step and after it ended)."""
        return self._transcripts.get(self.seq_id(tree_id, node_id))

    async def act(self, view: NodeView) -> PolicyAction | EndNode:
        """Extends the node's sequence with its first prompt or last observation and samples an
        action; ``EndNode`` instead when no answer of ``min_new_tokens`` would fit any more."""
        key = self.seq_id(view.tree_id, view.node_id)
        tr = self._transcripts.get(key)
        if tr is None:
            if view.steps:
                raise RuntimeError(f"node {key}: no transcript at step {len(view.steps)} (ended or never started)")
            tr = self._transcripts[key] = NodeTranscript(self.template, self.tokenizer)
            docs = view.tool_docs if self.tool_docs is None else self.tool_docs(view.recursive)
            prompt = tr.start(system_prompt(docs, view.recursive, brief=self.brief_prompt), user_prompt(view))
        else:
            prompt = tr.observe(view.steps[-1].observation)
        limit = min(self.context_limit, view.max_context or self.context_limit)
        room = limit - len(tr.tokens)
        if room < self.min_new_tokens:
            self.stats["context_ends"] += 1
            what = "its task prompt takes" if not view.steps else f"its {len(view.steps)} steps and observations take"
            return EndNode(CONTEXT_END, (
                f"its context window is full: {what} {len(tr.tokens)} tokens of the {limit} "
                f"it may hold, with fewer than {self.min_new_tokens} left for an answer. It ended after "
                f"{len(view.steps)} steps without calling finish; give it a smaller sub-task or a shorter context."))
        params = self.params
        if room < params.max_new_tokens:
            params = dataclasses.replace(params, max_new_tokens=room)
            self.stats["shortened"] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            completion = await self.engine.submit(tr.tokens, params, seq_id=key)
        finally:
            self.in_flight -= 1
        tr.add_response(completion.tokens, completion.logprobs)
        self.stats["steps"] += 1
        self.stats["prompt_tokens"] += len(prompt)
        self.stats["response_tokens"] += len(completion.tokens)
        self.stats["reused_tokens"] += completion.reused_tokens
        self.stats[f"finish_{completion.finish_reason}"] += 1
        return PolicyAction(self.tokenizer.decode(completion.tokens),
                            ActionTokens(tuple(prompt), tuple(completion.tokens), tuple(completion.logprobs),
                                         completion.policy_version))

    async def end_node(self, tree_id: int, node_id: int) -> None:
        """Frees a node's KV pages and transcript; pass as ``RolloutRunner(on_node_end=...)``."""
        key = self.seq_id(tree_id, node_id)
        self._transcripts.pop(key, None)
        try:
            await self.engine.release(key)
        except ValueError:
            # Only when the node's task was cancelled while its request was in the engine (a tree
            # torn down by an error): the pages stay as an idle cached sequence that the engine
            # evicts first under pressure.
            self.stats["release_deferred"] += 1
            log.warning("node %s ended with a request in flight; its KV pages are left to eviction", key)
