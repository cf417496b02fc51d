"""The recursive agent runtime (RAO_SPEC section 1).

- ``policy``: what chooses a node's next action (Policy, NodeView, PolicyAction / ActionTokens);
- ``protocol``: prompts, chat templates, token transcripts, action parsing, observations;
- ``sandbox`` (host) / ``sandbox_worker`` + ``sandbox_confine`` + ``sandbox_io`` (worker processes): the CodeAct REPL;
- ``budget``: the step ledger (reserve n + 1, release on end, caps);
- ``rollout``: the scheduler that runs many trees at once; ``tree``: node records; ``trace``: JSONL
  traces and a console rendering.
"""
