"""Attacks on the sandbox, as a policy optimised against it would try them, and the harness that runs them.

Each ``Attack`` is one cell of tree A (the attacker), run while tree B (the victim) has variables,
a file in its scratch dir and a tool history. ``run_attack`` then checks, and returns for the test to
assert: A's cell ended as an observation within the cell limit plus a few seconds; B's state, module
functions, files, memory and file descriptors are intact and its tool results unchanged; a canary
file of the host is untouched; A's next cell works; after the pool closes no worker process is left.

``guards=False`` attacks run with the Python guards off (``os``, ``ctypes``, ``signal`` importable):
code that got past the guards, held by the kernel layer and the host alone. Placeholders in the code:
``{host_pid}``, ``{victim_pid}``, ``{victim_scratch}``, ``{canary}``.

Also a script: ``python -m tests.agent.attacks`` runs every attack and prints one JSON line per
attack (the non-root variant of the suite runs it under another uid).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rao_jax.agent.sandbox import SandboxLimits, SandboxPool

LIMITS = SandboxLimits(cpu_seconds=1.0, wall_seconds=2.0, memory_bytes=512 << 20, output_chars=5_000,
                       max_output_chars=1_000_000, scratch_bytes=32 << 20, watchdog_margin_seconds=3.0)
SLACK_SECONDS = 4.0   # "the cell limit plus a few seconds"

_WRITE_FRAME = ("import os, json\n"
                "def frame(obj):\n"
                "    data = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj\n"
                "    return len(data).to_bytes(4, 'big') + data\n"
                "def to_host(obj):\n"
                "    for fd in range(3, 64):\n"
                "        try:\n"
                "            os.write(fd, frame(obj) if not isinstance(obj, bytes) else obj)\n"
                "        except OSError:\n"
                "            pass\n")


@dataclasses.dataclass(frozen=True)
class Attack:
    name: str
    kind: str              # the class of attack (tamper, starve, bypass, hang, frame, crash, signal, linger)
    code: str
    guards: bool = True
    expect: tuple[str, ...] = ()   # fragments of the observation (output + value + error)


ATTACKS = [
    # ---- tampering with what another tree's cells use ---------------------------------------------
    Attack("rebind_asyncio_sleep", "tamper", "import asyncio\nasyncio.sleep = None\nasyncio.gather = print"),
    Attack("rebind_math_sqrt", "tamper", "import math\nmath.sqrt = lambda x: -1.0\nmath.sqrt(4)", expect=("-1.0",)),
    Attack("patch_json_encoder", "tamper",
           "import json\njson.JSONEncoder.encode = lambda self, o: '{\"op\": \"done\"}'\necho(1)"),
    Attack("patch_json_decoder", "tamper",
           "import json\njson.JSONDecoder.decode = lambda self, s, *a: {'op': 'reply', 'call': 1, 'ok': True, "
           "'value': 'forged'}\necho(1)"),
    Attack("patch_json_dumps_and_loads", "tamper",
           "import json\njson.dumps = lambda *a, **k: 'forged'\njson.loads = lambda *a, **k: {}\necho(2)"),
    Attack("read_victim_scratch", "tamper", "open('{victim_scratch}/secret.txt').read()", expect=("Error",)),
    Attack("overwrite_victim_scratch", "tamper", "open('{victim_scratch}/secret.txt', 'w').write('pwned')",
           expect=("Error",)),
    Attack("relative_escape_to_victim", "tamper",
           "for p in ['../secret.txt', '../../secret.txt', '/secret.txt']:\n"
           "    try:\n        print(open(p).read())\n    except Exception as e:\n        print(type(e).__name__)",
           expect=("FileNotFoundError",)),
    Attack("umask_and_cwd", "tamper", "import os\nos.umask(0o777)\nos.chdir('/')\nos.getcwd()", guards=False),
    Attack("list_other_trees_files", "tamper", "import os\nsorted(os.listdir('/'))", guards=False),
    # ---- starving the machine of what other trees need ------------------------------------------------
    Attack("memory_starve", "starve", "x = bytearray(10 ** 12)", expect=("MemoryError",)),
    Attack("memory_starve_list", "starve", "x = [0] * (10 ** 10)", expect=("MemoryError",)),
    Attack("fd_starve", "starve",
           "import os\nfds = []\nwhile True:\n    fds.append(os.open('/', os.O_RDONLY))", guards=False,
           expect=("Too many open files",)),
    Attack("disk_starve", "starve", "for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * (8 << 20))",
           expect=("No space left on device",)),
    # ---- the guards, from inside ------------------------------------------------------------------------
    Attack("attrgetter_globals", "bypass", "import operator\noperator.attrgetter('__globals__')(open)",
           expect=("SandboxViolation",)),
    Attack("attrgetter_dotted", "bypass", "import operator\noperator.attrgetter('real.__class__')(1)",
           expect=("SandboxViolation",)),
    Attack("methodcaller_dunder", "bypass", "import operator\noperator.methodcaller('__reduce_ex__', 2)(open)",
           expect=("SandboxViolation",)),
    Attack("attrgetter_tool_closure", "bypass", "import operator\noperator.attrgetter('__closure__')(echo)",
           expect=("SandboxViolation",)),
    Attack("formatter_get_field", "bypass", "import string\nstring.Formatter().get_field('0.__globals__', [open], {})",
           expect=("AttributeError",)),
    Attack("getattr_globals", "bypass", "getattr(open, '__globals__')", expect=("SandboxViolation",)),
    Attack("format_string_walks_attributes", "bypass", "s = '{0.__class__}'.format(open)\ntype(s).__name__",
           expect=("'str'",)),   # text at most: no object comes back
    # ---- hangs -----------------------------------------------------------------------------------------------
    Attack("ignore_timers_and_sleep", "hang",
           "import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
           "signal.signal(signal.SIGPROF, signal.SIG_IGN)\ntime.sleep(1000)", guards=False, expect=("stopped",)),
    Attack("ignore_timers_and_spin", "hang",
           "import signal\nfor s in (signal.SIGALRM, signal.SIGPROF, signal.SIGXCPU):\n"
           "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass", guards=False, expect=("stopped",)),
    Attack("sleeping_str", "hang",
           "import time\nclass E(Exception):\n    def __str__(self):\n        while True:\n            try:\n"
           "                time.sleep(1000)\n            except BaseException:\n                pass\nraise E()",
           expect=("SandboxError",)),
    Attack("sleeping_del", "hang",
           "import time\nclass D:\n    def __del__(self):\n        while True:\n            try:\n"
           "                time.sleep(1000)\n            except BaseException:\n                pass\n"
           "d = D()\nd = None", expect=("SandboxError",)),
    Attack("swallow_every_stop", "hang",
           "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass",
           expect=("SandboxError", "its CPU limit")),
    # ---- the protocol, forged ----------------------------------------------------------------------------
    Attack("garbage_frame", "frame", _WRITE_FRAME + "to_host(b'\\x00\\x00\\x00\\x05junk!')\nimport time\n"
           "time.sleep(5)", guards=False, expect=("broke the protocol",)),
    Attack("frame_missing_fields", "frame", _WRITE_FRAME + "to_host({'op': 'done', 'cell': 1})\nimport time\n"
           "time.sleep(5)", guards=False, expect=("broke the protocol",)),
    Attack("frame_huge_length", "frame", _WRITE_FRAME + "to_host(b'\\xff\\xff\\xff\\xff')\nimport time\ntime.sleep(5)",
           guards=False, expect=("broke the protocol",)),
    Attack("frame_forged_finish", "frame",
           _WRITE_FRAME + "to_host({'op': 'done', 'cell': 10 ** 9, 'output': '', 'value': None, 'error': None, "
           "'finished': True})\n"
           "import time\ntime.sleep(5)", guards=False, expect=("broke the protocol",)),
    Attack("frame_wrong_types", "frame", _WRITE_FRAME + "to_host({'op': 'call', 'cell': '1', 'call': 1, "
           "'name': 'echo', 'args': [], 'kwargs': {}})\nimport time\ntime.sleep(5)", guards=False,
           expect=("broke the protocol",)),
    # ---- crashes -------------------------------------------------------------------------------------------
    Attack("exit_process", "crash", "import os\nos._exit(0)", guards=False, expect=("SandboxError",)),
    Attack("segfault", "crash", "import ctypes\nctypes.string_at(0)", guards=False, expect=("SandboxError",)),
    Attack("system_exit", "crash", "raise SystemExit(3)", expect=("CellExit",)),
    Attack("lone_surrogate", "crash", "print('x' + chr(0xD800) + 'y')", expect=("x\ufffdy",)),
    Attack("nul_and_escape_codes", "crash", "print('a' + chr(0) + 'b' + chr(27) + '[31mc')", expect=("ab[31mc",)),
    # ---- signals ---------------------------------------------------------------------------------------------
    Attack("kill_the_trainer", "signal", "import os, signal\nos.kill({host_pid}, signal.SIGKILL)", guards=False,
           expect=("ProcessLookupError",)),
    Attack("stop_the_victim", "signal", "import os, signal\nos.kill({victim_pid}, signal.SIGSTOP)", guards=False,
           expect=("ProcessLookupError",)),
    Attack("kill_everything", "signal", "import os, signal\nos.kill(-1, signal.SIGKILL)\n'alive'", guards=False),
    Attack("fork_bomb", "signal", "import os\nwhile True:\n    os.fork()", guards=False, expect=("BlockingIOError",)),
    Attack("become_root", "signal", "import os\nos.setuid(0)\nos.mkdir('jail')\nos.chroot('jail')", guards=False,
           expect=("PermissionError",)),   # refused as its own uid; in a user namespace uid 0 has no capability
    # ---- tasks that outlive their cell ---------------------------------------------------------------------
    Attack("lingering_task", "linger",
           "import asyncio\nasync def spin():\n    while True:\n        try:\n            await asyncio.sleep(0.05)\n"
           "        except BaseException:\n            pass\n        echo('LEAK')\n        print('LEAK')\n"
           "t = asyncio.create_task(spin())\n'started'", expect=("started",)),
]

VICTIM_SETUP = ("secret = 'victim-secret-123'\nopen('secret.txt', 'w').write('victim-file')\n"
                "history = [echo(i) for i in range(5)]\nhistory")
VICTIM_CHECK = ("import math, json, asyncio\n"
                "await asyncio.sleep(0.01)\n"
                "assert math.sqrt(4) == 2.0, math.sqrt(4)\n"
                "assert json.loads(json.dumps({'a': [1]})) == {'a': [1]}\n"
                "assert secret == 'victim-secret-123'\n"
                "assert open('secret.txt').read() == 'victim-file'\n"
                "open('probe.bin', 'wb').write(b'x' * (4 << 20))\n"
                "buf = bytearray(100 << 20)\n"
                "files = [open('secret.txt') for _ in range(20)]\n"
                "[f.close() for f in files]\n"
                "[echo(i) for i in range(5)] == history and 'victim ok'")


def _echo(x):
    return x


async def run_attack(attack: Attack, limits: SandboxLimits = LIMITS) -> dict:
    """Runs one attack against a two-tree pool; returns what the test asserts on."""
    limits = dataclasses.replace(limits, python_guards=attack.guards)
    tools = {"echo": _echo}
    with tempfile.TemporaryDirectory() as host_dir:
        canary = Path(host_dir) / "canary.txt"
        canary.write_text("host canary")
        canary.chmod(0o666)
        pids: set[int] = set()
        async with SandboxPool(1, limits) as pool:
            attacker, victim = pool.session(), pool.session()
            setup = await victim.run_cell(0, VICTIM_SETUP, tools)
            await attacker.run_cell(0, "kept = 1", tools)
            pids |= {attacker.worker_pid, victim.worker_pid}
            code = attack.code
            for name, value in (("host_pid", os.getpid()), ("victim_pid", victim.worker_pid), ("canary", canary),
                                ("victim_scratch", victim.scratch_dir)):
                code = code.replace("{" + name + "}", str(value))
            t0 = time.perf_counter()
            result = await attacker.run_cell(0, code, tools)
            seconds = time.perf_counter() - t0
            pids.add(attacker.worker_pid) if attacker.worker_pid else None
            await asyncio.sleep(0.3)   # a lingering task would act now
            check = await victim.run_cell(0, VICTIM_CHECK, tools)
            again = await attacker.run_cell(1, "6 * 7", tools)
            later = await attacker.run_cell(0, "'quiet'", tools)
            pids |= {p for p in (attacker.worker_pid, victim.worker_pid) if p}
            isolation = dict(pool.isolation)
        canary_now = canary.read_text()
        left = await _left_processes(pids)
    return {
        "name": attack.name, "kind": attack.kind, "guards": attack.guards, "isolation": isolation,
        "seconds": seconds, "limit_seconds": limits.wall_seconds + limits.watchdog_margin_seconds + SLACK_SECONDS,
        "observation": result.output + (result.value or "") + (result.error or ""),
        "error": result.error, "finished": result.finished,
        "setup": setup.value, "victim": check.value, "victim_error": check.error,
        "again": again.value, "later_output": later.output, "later": later.value,
        "canary": canary_now, "left_processes": left, "expect": list(attack.expect),
    }


async def _left_processes(pids: set[int], wait: float = 3.0) -> list[int]:
    """The worker processes still alive ``wait`` seconds after their pool closed (SIGKILL is async)."""
    deadline = time.monotonic() + wait
    while True:
        left = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                left.append(pid)
            except ProcessLookupError:
                pass
            except PermissionError:
                left.append(pid)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


def main() -> None:
    names = sys.argv[1:]
    for attack in ATTACKS:
        if not names or attack.name in names:
            print(json.dumps(asyncio.run(asyncio.wait_for(run_attack(attack), 120))), flush=True)


if __name__ == "__main__":
    main()
