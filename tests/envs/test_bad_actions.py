"""Every tool of every family answers junk arguments with an ActionError (an observation), never a crash."""

from __future__ import annotations

import itertools

import pytest

from rao_jax.envs import chain_hop, labeled_rows
from rao_jax.envs import textcraft_synth as ts
from rao_jax.envs.base import ActionError
from rao_jax.envs.families import open_episode

JUNK = [None, True, -1, 0, 3.5, "", "x", "m1a", [], ["m1a", 2], ("m1a",), {}, {"m1a": "2"}, {"m1a": 2}, {1: 2},
        {"m0a": 10**9}, float("nan"), object()]


def _episodes():
    yield open_episode(next(ts.generate_tasks(ts.SynthConfig.tiny(), "val", 1)))
    yield open_episode(labeled_rows.generate_task(labeled_rows.RowsConfig(context_multiple=0.5), "val", 0))
    yield open_episode(chain_hop.generate_task(chain_hop.HopConfig(entities_per_type=6), "val", 0, 2))


@pytest.mark.parametrize("episode", list(_episodes()), ids=["textcraft", "labeled_rows", "chain_hop"])
def test_tools_and_goals_never_crash(episode):
    episode.open_node(0, None, episode.root_goal())
    tools = episode.tools(0)
    for name, tool in tools.items():
        for args in itertools.chain(([a] for a in JUNK), itertools.product(JUNK[:12], repeat=2)):
            try:
                tool(*args)
            except ActionError as err:
                assert str(err)
            except TypeError as err:
                # Wrong arity is the sandbox's business (it reports the TypeError text); wrong values are ours.
                assert "positional argument" in str(err), (name, args, err)
    for goal in JUNK:
        try:
            episode.parse_child_goal(goal, "")
        except ActionError as err:
            assert str(err)
    for message in (None, "", "done", {"a": 1}, [1], 3):
        assert 0.0 <= episode.node_success(0, message) <= 1.0
