"""The sandboxed REPL: persistence, tool proxies, and hostile cells that must end as observations.

Every hostile cell runs under tight limits (1-2 s CPU, 3 s wall, 512 MiB address space) set inside the
worker before any cell runs, so none of these tests can load the machine. Each hostile case also
checks that the same session goes on, that a session on the other worker ran a benign cell to the
right answer meanwhile, and that this (the trainer's) process is untouched.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
import uuid
from pathlib import Path

import pytest

from rao_jax.agent.sandbox import SandboxLimits, SandboxPool
from rao_jax.envs.base import ActionError

LIMITS = SandboxLimits(cpu_seconds=1.5, wall_seconds=3.0, memory_bytes=512 << 20, output_chars=5_000,
                       max_output_chars=1_000_000)


def run(coro, timeout: float = 90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def echo(x):
    return x


async def _cell(session, code, node=0, sync=None, asyn=None):
    return await session.run_cell(node, code, sync if sync is not None else {"echo": echo}, asyn or {})


def test_namespace_persists_and_cells_are_async():
    async def main():
        async with SandboxPool(1, LIMITS) as pool:
            s = pool.session()
            assert (await _cell(s, "x = 41\ndef inc(v):\n    return v + 1")).error is None
            r = await _cell(s, "print('hi')\ninc(x)")
            assert (r.output, r.value, r.error) == ("hi\n", "42", None)
            r = await _cell(s, "import asyncio\nawait asyncio.sleep(0.01)\nclass P:\n    n = 3\nP.n * x")
            assert r.value == "123" and r.error is None
            r = await _cell(s, "class A:\n    def __init__(self, v):\n        self.v = v\n"
                               "class B(A):\n    def __init__(self):\n        super().__init__(5)\n"
                               "    def __repr__(self):\n        return f'B({self.v})'\nB()")
            assert r.value == "B(5)" and r.error is None
            r = await _cell(s, "x", node=1)            # another node: its own namespace
            assert "NameError" in r.error
            r = await _cell(s, "open('notes.txt', 'w').write('kept')\nopen('notes.txt').read()")
            assert r.value == "'kept'"
            if pool.isolation.get("scratch", "").startswith("tmpfs"):   # private to the worker
                assert not (s.scratch_dir / "notes.txt").exists()
            else:
                assert (s.scratch_dir / "notes.txt").read_text() == "kept"
            await s.drop(0)
            assert "NameError" in (await _cell(s, "x")).error
    run(main())


def test_a_traceback_names_the_nodes_own_cell_number():
    """What a model reads in a traceback must not depend on how other nodes' cells interleaved."""
    async def main():
        async with SandboxPool(1, LIMITS) as pool:
            s = pool.session()
            for node in (0, 0, 1, 0):
                await _cell(s, "x = 1", node=node)
            r = await _cell(s, "x = 2\n[][x]", node=1)   # node 1's second cell; the pool's fifth
            assert f'File "<cell {s._id}.1/2>", line 2' in r.error and "IndexError" in r.error
    run(main())


def test_tools_errors_and_finish():
    async def main():
        def pick(item):
            if item == "stone":
                raise ActionError("stone cannot be picked")
            return {"item": item, "count": 2}

        done = []

        def finish(message):
            done.append(message)

        tools = {"pick": pick, "finish": finish, "bad": lambda: {1, 2}}
        async with SandboxPool(1, LIMITS) as pool:
            s = pool.session()
            r = await _cell(s, "pick('wood')['count']", sync=tools)
            assert r.value == "2"
            r = await _cell(s, "pick('stone')", sync=tools)
            assert "\nActionError: stone cannot be picked" in r.error
            r = await _cell(s, "try:\n    pick('stone')\nexcept ActionError as e:\n    print('caught', e)", sync=tools)
            assert r.output == "caught stone cannot be picked\n"
            r = await _cell(s, "pick()", sync=tools)
            assert "TypeError: pick(): missing a required argument" in r.error
            r = await _cell(s, "pick({1, 2})", sync=tools)
            assert "JSON-like" in r.error
            r = await _cell(s, "bad()", sync=tools)
            assert "not JSON-like" in r.error
            r = await _cell(s, "finish({'answer': [1, 2]})\nprint('not reached')", sync=tools)
            assert r.finished and r.output == "" and r.error is None and done == [{"answer": [1, 2]}]
    run(main())


def test_gather_of_async_tools_runs_concurrently_in_the_host():
    async def main():
        live, peak = [0], [0]

        async def launch_subagent(goal, budget, context=""):
            live[0] += 1
            peak[0] = max(peak[0], live[0])
            await asyncio.sleep(0.5)
            live[0] -= 1
            return {"goal": goal, "budget": budget}

        async with SandboxPool(1, LIMITS) as pool:
            s = pool.session()
            t0 = time.perf_counter()
            code = ("import asyncio\nres = await asyncio.gather(*[launch_subagent(f'g{i}', i) for i in range(4)])\n"
                    "[r['goal'] for r in res]")
            r = await s.run_cell(0, code, {}, {"launch_subagent": launch_subagent})
            assert r.value == "['g0', 'g1', 'g2', 'g3']" and r.error is None
            assert peak[0] == 4 and time.perf_counter() - t0 < 1.5
            # While one node's cell awaits the host, another node's cell on the same worker runs.
            slow = asyncio.create_task(s.run_cell(1, "await launch_subagent('slow', 1)", {},
                                                  {"launch_subagent": launch_subagent}))
            await asyncio.sleep(0.1)
            quick = await s.run_cell(2, "6 * 7", {}, {})
            assert quick.value == "42" and not slow.done()
            assert (await slow).value == "{'goal': 'slow', 'budget': 1}"

            async def long_child(goal, budget, context=""):
                await asyncio.sleep(LIMITS.wall_seconds + 1)
                return "late but fine"
            # Awaiting a subagent longer than the wall limit is not the cell's time.
            r = await s.run_cell(3, "await launch_subagent('long', 1)", {}, {"launch_subagent": long_child})
            assert r.value == "'late but fine'" and r.error is None
    run(main())


ESCAPE = f"/tmp/rao_escape_{uuid.uuid4().hex}"

HOSTILE = {
    "read_passwd": ("print(open('/etc/passwd').read())", ("Error",), 5),
    "write_outside": (f"open('{ESCAPE}', 'w').write('x')", ("Error",), 5),
    "write_dotdot": ("open('../../../../tmp/rao_escape_dotdot', 'w').write('x')", ("Error",), 5),
    "socket": ("import socket\nsocket.create_connection(('127.0.0.1', 22))", ("ImportError",), 5),
    "import_os": ("import os\nos.listdir('/')", ("ImportError",), 5),
    "import_subprocess": ("import subprocess\nsubprocess.run(['id'])", ("ImportError",), 5),
    "import_ctypes": ("import ctypes", ("ImportError",), 5),
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", ("ImportError",), 5),
    "dunder_escape": ("().__class__.__base__.__subclasses__()", ("SandboxViolation",), 5),
    "getattr_escape": ("getattr((), '__class__')", ("SandboxViolation",), 5),
    "busy_loop": ("while True:\n    pass", ("TimeoutError", "CPU time"), 6),
    "caught_busy_loop": ("while True:\n    try:\n        while True: pass\n    except Exception:\n        pass",
                         ("TimeoutError",), 6),
    "sleep": ("import time\ntime.sleep(1000)", ("TimeoutError", "ran for more than 3"), 7),
    "alloc_10gb": ("x = bytearray(10 * 1024 ** 3)", ("MemoryError",), 5),
    "alloc_list": ("x = [0] * (10 ** 10)", ("MemoryError",), 5),
    "fill_disk": ("for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * (8 << 20))",
                  ("No space left on device",), 6),
    "print_100mb": ("print('x' * 100_000_000)", ("OutputLimitExceeded",), 8),
    "print_loop": ("i = 0\nwhile True:\n    print(i)\n    i += 1", ("OutputLimitExceeded",), 8),
    "recursion": ("def f(n):\n    return f(n + 1)\nf(0)", ("RecursionError",), 5),
    "syntax": ("def broken(:\n    pass", ("SyntaxError",), 5),
    "exception": ("raise ValueError('boom')", ("ValueError: boom",), 5),
    "huge_exception": ("raise ValueError('v' * 50_000_000)", ("ValueError", "characters cut"), 6),
    "huge_tool_argument": ("echo('a' * 50_000_000)", ("ToolError", "the limit is"), 6),
    "async_sleep": ("import asyncio\nawait asyncio.sleep(10 ** 6)", ("TimeoutError", "ran for more than 3"), 7),
    "wait_forever": ("import asyncio\nawait asyncio.Event().wait()", ("TimeoutError",), 7),
    "forever_task": ("import asyncio\nasync def spin():\n    await asyncio.Event().wait()\n"
                     "await asyncio.gather(spin(), spin())", ("TimeoutError",), 7),
    "swallow_timeout": ("while True:\n    try:\n        await asyncio.sleep(100)\n    except BaseException:\n"
                        "        echo('still here')", ("TimeoutError", "abandoned"), 9),
    "event_loop": ("import asyncio\nasyncio.gather().get_loop().stop()", ("SandboxViolation",), 5),
    "loop_policy": ("import asyncio\nasyncio.get_event_loop_policy()", ("AttributeError",), 5),
    "system_exit": ("raise SystemExit(3)", ("CellExit", "SystemExit(3)"), 5),
    "exit_in_gather": ("import asyncio\nasync def bye():\n    raise KeyboardInterrupt\nawait asyncio.gather(bye())",
                       ("CellExit",), 5),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_cell_becomes_an_observation(case):
    code, fragments, max_seconds = HOSTILE[case]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def main():
        async with SandboxPool(2, LIMITS) as pool:
            if case == "fill_disk" and not pool.isolation.get("scratch", "").startswith("tmpfs"):
                pytest.skip("no private tmpfs scratch here: the cell would fill the real disk")
            hostile, benign = pool.session(), pool.session()   # two trees: two workers
            await _cell(hostile, "kept = 'still here'")
            benign_code = "total = 0\nfor i in range(200):\n    total += echo(i)\ntotal"
            t0 = time.perf_counter()
            r, other = await asyncio.gather(_cell(hostile, code), _cell(benign, benign_code))
            elapsed = time.perf_counter() - t0
            assert r.error is not None, r
            for fragment in fragments:
                assert fragment in r.error, r.error
            assert elapsed < max_seconds
            assert "root:" not in r.output + (r.value or "") + r.error
            assert len(r.output) <= LIMITS.output_chars + 200
            assert other.value == str(sum(range(200))) and other.error is None
            after = await _cell(hostile, "kept")             # the REPL goes on, variables intact
            assert after.value == "'still here'" and after.error is None
            assert list(hostile.scratch_dir.parent.glob("**/rao_escape*")) == []

    run(main())
    assert not Path(ESCAPE).exists() and not Path("/tmp/rao_escape_dotdot").exists()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200_000   # KiB: trainer untouched


def test_c_level_cpu_hog_kills_only_its_worker():
    """C code that never returns to the interpreter ignores SIGPROF; the per-cell RLIMIT_CPU kills the
    worker, the cell gets an observation, the worker is replaced and the other worker is untouched."""
    async def main():
        async with SandboxPool(2, LIMITS) as pool:
            hostile, benign = pool.session(), pool.session()
            await _cell(benign, "mine = 7")
            await _cell(hostile, "1")
            pids = hostile.worker_pid, benign.worker_pid
            t0 = time.perf_counter()
            r = await _cell(hostile, "sum(range(10 ** 12))")
            assert time.perf_counter() - t0 < LIMITS.cpu_seconds + 5
            assert "SandboxError" in r.error and "its CPU limit" in r.error
            assert (await _cell(benign, "mine")).value == "7"
            again = await _cell(hostile, "1 + 1")
            assert again.value == "2" and "restarted" in again.notes[0] if again.notes else again.value == "2"
            assert hostile.worker_pid != pids[0] and benign.worker_pid == pids[1]
    run(main())


SOCKET = "import socket\nc = socket.socket()\nc.settimeout(2)\n"


@pytest.mark.parametrize("user_namespace", [None, True], ids=["default", "user_namespace"])
def test_kernel_layer_holds_without_python_guards(user_namespace):
    """With the Python guards off (os, socket, open importable), the kernel still says no. The
    user-namespace variant is the path taken when the trainer does not run as root."""
    limits = SandboxLimits(cpu_seconds=2, wall_seconds=4, memory_bytes=512 << 20, python_guards=False,
                           user_namespace=user_namespace)

    async def main():
        async with SandboxPool(1, limits) as pool:
            iso = pool.isolation
            if "python" in iso["network"] or "python" in iso["files"]:
                pytest.skip(f"no kernel isolation on this machine: {iso}")
            s = pool.session()
            cases = {
                "import os\nos.fork()": "BlockingIOError",
                "import threading\nthreading.Thread(target=print).start()": "can't start new thread",
                SOCKET + "c.connect(('1.1.1.1', 53))": "Network is unreachable",
                SOCKET + "c.connect(('127.0.0.1', 22))": "OSError",
                "open('/etc/passwd').read()": "FileNotFoundError",
                f"open('{ESCAPE}', 'w').write('x')": "FileNotFoundError",
                "import os\nos.listdir('/')": None,
            }
            for code, fragment in cases.items():
                r = await _cell(s, code)
                if fragment is None:
                    assert r.error is None and "passwd" not in r.value
                else:
                    assert fragment in (r.error or ""), (code, r)
            assert iso.get("scratch", "").startswith("tmpfs"), iso
            if iso["user"].endswith("(its own)"):
                from rao_jax.agent.sandbox import UID_BASE
                assert int((await _cell(s, "import os\nos.getuid()")).value) >= UID_BASE
            if user_namespace:
                assert "no capabilities" in iso["user"]
                r = await _cell(s, "import os\nos.mkdir('x')\nos.chroot('x')")
                assert "PermissionError" in r.error   # the classic chroot escape needs CAP_SYS_CHROOT
    run(main())
    assert not Path(ESCAPE).exists()


def test_trainer_process_limits_are_untouched():
    limits = (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_NPROC, resource.RLIMIT_NOFILE)
    before = {r: resource.getrlimit(r) for r in limits}
    cwd = os.getcwd()

    async def main():
        async with SandboxPool(1, LIMITS) as pool:
            r = await _cell(pool.session(), "x = bytearray(10 * 1024 ** 3)")
            assert "MemoryError" in r.error
    run(main())
    assert before == {r: resource.getrlimit(r) for r in limits} and os.getcwd() == cwd
