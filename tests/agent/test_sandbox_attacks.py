"""The attack suite (tests/agent/attacks.py) against the real sandbox: each attack of tree A ends as
an observation in bounded time and leaves the host, tree B and the machine as they were."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rao_jax.agent.rollout import RolloutRunner
from rao_jax.agent.sandbox import SandboxPool, missing_layers
from tests.agent.attacks import ATTACKS, LIMITS, run_attack
from tests.agent.toy import BagWorld, SplitPolicy, budget_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kernel_isolation():
    async def probe():
        async with SandboxPool(1, LIMITS) as pool:
            return pool.isolation
    return asyncio.run(probe())


def check(r: dict) -> None:
    assert r["seconds"] <= r["limit_seconds"], r
    for fragment in r["expect"]:
        assert fragment in r["observation"], (fragment, r["observation"][:500])
    assert r["victim"] == "'victim ok'", r              # B's variables, modules, files, memory, fds, tools
    assert r["again"] == "42" and r["later"] == "'quiet'", r   # A goes on
    assert "LEAK" not in r["later_output"], r
    assert r["canary"] == "host canary" and r["left_processes"] == [], r
    assert r["finished"] is False


def test_the_suite_covers_every_class_of_attack():
    kinds = {a.kind for a in ATTACKS}
    assert len(ATTACKS) >= 30 and len({a.name for a in ATTACKS}) == len(ATTACKS)
    assert kinds == {"tamper", "starve", "bypass", "hang", "frame", "crash", "signal", "linger"}


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_contained(attack, kernel_isolation):
    if not attack.guards and missing_layers(kernel_isolation):
        pytest.skip(f"no kernel isolation here ({kernel_isolation}): code past the guards would reach the host")
    check(asyncio.run(asyncio.wait_for(run_attack(attack), 120)))


@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_contained_in_a_user_namespace(attack, kernel_isolation):
    """The user-namespace path (no capabilities, the tree's uid mapped to root inside), which a trainer
    that is not root takes."""
    if not attack.guards and missing_layers(kernel_isolation):
        pytest.skip(f"no kernel isolation here ({kernel_isolation})")
    r = asyncio.run(asyncio.wait_for(run_attack(attack, dataclasses.replace(LIMITS, user_namespace=True)), 120))
    assert "no capabilities" in r["isolation"]["user"]
    check(r)


@pytest.mark.slow
def test_the_suite_with_the_trainer_as_an_unprivileged_user():
    """The whole suite with the host process itself not root (the usual Cloud TPU VM login): its
    workers then share its uid outside their user namespaces, and only the namespaces keep them off it."""
    if os.geteuid() != 0:
        pytest.skip("the test switches to user nobody, which needs root")
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME="/tmp")
    # The harness and the sandbox need the standard library and rao_jax.agent only: any Python >= 3.11
    # that nobody may run (and that can start itself, as the pool starts its template) will do.
    probe = ("import subprocess, sys; assert sys.version_info >= (3, 11); import tests.agent.attacks; "
             "subprocess.run([sys.executable, '-I', '-c', 'pass'], check=True)")
    why, python = "no setpriv", None
    if shutil.which("setpriv"):
        system = "/usr/local/bin:/usr/bin:/bin"
        for candidate in dict.fromkeys([sys.executable, shutil.which("python3", path=system),
                                        shutil.which("python3.11", path=system)]):
            if candidate is None:
                continue
            out = subprocess.run([*nobody, candidate, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                                 text=True)
            if out.returncode == 0:
                python = candidate
                break
            why = f"{candidate}: {(out.stderr.strip().splitlines() or ['?'])[-1]}"
    if python is None:
        pytest.skip(f"user nobody cannot run a Python that imports the harness ({why})")
    out = subprocess.run([*nobody, python, "-m", "tests.agent.attacks"], cwd=ROOT, capture_output=True, text=True,
                         timeout=1800, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(ATTACKS)
    for r in results:
        assert "no capabilities" in r["isolation"]["user"], r["isolation"]
        check(r)


SABOTAGE = (
    "import json, math, asyncio\n"
    "json.JSONEncoder.encode = lambda self, o: '{}'\n"
    "json.JSONDecoder.decode = lambda self, s, *a: {'op': 'reply', 'call': 1, 'ok': True, 'value': 0}\n"
    "json.dumps = json.loads = math.sqrt = lambda *a, **k: None\n"
    "asyncio.sleep = asyncio.gather = None\n"
    "for i in range(50):\n"
    "    open(f'junk{i}', 'w').write('x' * 1000)\n"
    "hog = bytearray(300 << 20)\n"
    "finish('done sabotaging')"
)


class GroupPolicy(SplitPolicy):
    """Tree 1 attacks (one sabotage cell, then finish); every other tree plays SplitPolicy honestly."""

    def __init__(self, attack: bool):
        super().__init__()
        self.attack = attack

    async def act(self, view):
        if view.tree_id == 1:
            code = SABOTAGE if self.attack else "finish('honest')"
            return f"<thought>tree A</thought>\n<python>\n{code}\n</python>"
        return await super().act(view)


def test_an_attacking_tree_cannot_lower_its_siblings_success():
    """In a group of two trees, A's sabotage (patched modules and json framing, junk files, a memory
    hog) leaves B's success and tree exactly as in the unattacked run."""
    target = {"a": 2, "b": 2}

    async def group(attack: bool):
        async with SandboxPool(1, LIMITS) as pool:
            runner = RolloutRunner(GroupPolicy(attack), pool)
            return await asyncio.gather(runner.run_tree(BagWorld({"x": 1}), 3),
                                        runner.run_tree(BagWorld(target), budget_for(target) + 2))

    attacked_a, attacked_b = asyncio.run(asyncio.wait_for(group(True), 120))
    honest_a, honest_b = asyncio.run(asyncio.wait_for(group(False), 120))
    assert attacked_a.root.finish_message == "done sabotaging"
    assert honest_b.root.success == 1.0
    assert attacked_b.root.success == honest_b.root.success
    assert [(n.node_id, n.success, n.finish_message) for n in attacked_b.nodes] == \
        [(n.node_id, n.success, n.finish_message) for n in honest_b.nodes]
