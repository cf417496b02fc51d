"""Token records for a scripted policy's actions, laid out exactly as a model-backed policy's.

``DemoPolicy(inner, ...)`` asks a text policy (an oracle) for each action and returns it with the
``ActionTokens`` that ``ModelPolicy`` would have produced had the model sampled that text: the same
``NodeTranscript`` segments (system + user prompt, then observation turns) and the action's tokens
as the response. The runtime records them into each node's ``tokens`` / ``loss_mask``, so oracle
trees become supervised warm-start demonstrations packed and trained by the same code as RL
batches. Behaviour log-probs are zeros (no sampler was involved).
"""

from __future__ import annotations

from collections.abc import Callable

from rao_jax.agent.policy import ActionTokens, EndNode, NodeView, Policy, PolicyAction
from rao_jax.agent.protocol import ACTION_STOP, ChatTemplate, NodeTranscript, Tokenizer, system_prompt, user_prompt


class DemoPolicy:
    """Wraps a text ``Policy`` and records each action's tokens (see the module docstring).

    Args:
        inner: the scripted policy choosing the actions.
        tokenizer / template: the model's tokenizer and chat layout.
        tool_docs: ``recursive -> text`` of the family's tools (``Episode.tool_docs``); None: each
            node's own (``NodeView.tool_docs``), as ``ModelPolicy`` does.
        context_limit: a node whose sequence would exceed this many tokens ends (``EndNode``) as it
            would under a model with this window, so no demonstration is longer than training rows (a
            view's ``max_context``, its family's window, caps it further).
        brief_prompt: use the few-line system prompt, as ``ModelPolicy(brief_prompt=True)`` does.
    """

    def __init__(self, inner: Policy, tokenizer: Tokenizer, template: ChatTemplate,
                 tool_docs: Callable[[bool], str] | None, context_limit: int, brief_prompt: bool = False):
        self.inner = inner
        self.tokenizer = tokenizer
        self.template = template
        self.tool_docs = tool_docs
        self.context_limit = context_limit
        self.brief_prompt = brief_prompt
        self._transcripts: dict[tuple[int, int], NodeTranscript] = {}

    async def act(self, view: NodeView) -> PolicyAction | EndNode:
        key = (view.tree_id, view.node_id)
        tr = self._transcripts.get(key)
        if tr is None:
            tr = self._transcripts[key] = NodeTranscript(self.template, self.tokenizer)
            docs = view.tool_docs if self.tool_docs is None else self.tool_docs(view.recursive)
            prompt = tr.start(system_prompt(docs, view.recursive, brief=self.brief_prompt), user_prompt(view))
        else:
            prompt = tr.observe(view.steps[-1].observation)
        action = await self.inner.act(view)
        if isinstance(action, EndNode):
            return action
        text = action if isinstance(action, str) else action.text
        # A model's sample ends at the stop string; anything after it would never be sampled.
        if ACTION_STOP in text:
            text = text[:text.index(ACTION_STOP) + len(ACTION_STOP)]
        response = self.tokenizer.encode(text)
        limit = min(self.context_limit, view.max_context or self.context_limit)
        if len(tr.tokens) + len(response) > limit:
            return EndNode("context", f"its context window of {limit} tokens is full")
        tr.add_response(response, [0.0] * len(response))
        return PolicyAction(text, ActionTokens(tuple(prompt), tuple(response), (0.0,) * len(response)))

    async def end_node(self, tree_id: int, node_id: int) -> None:
        self._transcripts.pop((tree_id, node_id), None)
