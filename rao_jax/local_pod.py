"""A pod on one machine: the real trainer (or evaluator) as P processes of N CPU devices each.

    python -m rao_jax.local_pod --processes 2 --devices-per-process 4 -- \\
        --config configs/tiny_test.py --config.mesh.fsdp=2 --config.mesh.tensor=4

runs ``python -m rao_jax.train`` (``--module rao_jax.evaluate`` for the evaluator) P times, each
process with ``N`` fake CPU devices (``--xla_force_host_platform_device_count``), joined through
``jax.distributed`` on a free localhost port with gloo collectives: exactly the multi-controller
code path of a TPU pod, where every host runs the same command. Everything after ``--`` goes to
every process. Process 0's output is shown; the others' go to ``--log-dir`` (``process_<i>.log``,
and ``pids.json``: the process ids, in process order).

If a process fails the others are stopped (they would wait in a collective until gloo's timeout),
and the pod exits with that process's code. SIGTERM / SIGINT are passed on to every process (a
preemption notice: the trainer checkpoints and exits with 75, which the pod returns).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(processes: int, module: str, args: list[str], port: int) -> list[list[str]]:
    """The command line of each process."""
    return [[sys.executable, "-m", module, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
             f"--num_processes={processes}", f"--process_id={i}", *args] for i in range(processes)]


def environment(devices_per_process: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices_per_process}"])
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run(processes: int, devices_per_process: int, args: list[str], *, module: str = "rao_jax.train",
        log_dir: str | os.PathLike | None = None, cwd: str | os.PathLike | None = None) -> int:
    """Runs the pod to its end; returns its exit code (see the module docstring)."""
    if processes < 1 or devices_per_process < 1:
        raise ValueError("--processes and --devices-per-process must be >= 1")
    logs = Path(log_dir or tempfile.mkdtemp(prefix="rao_local_pod_"))
    logs.mkdir(parents=True, exist_ok=True)
    env = environment(devices_per_process)
    procs: list[subprocess.Popen] = []
    files = []
    for i, cmd in enumerate(commands(processes, module, args, free_port())):
        if i == 0:
            out = None
        else:
            out = (logs / f"process_{i}.log").open("w")
            files.append(out)
        procs.append(subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None))
    (logs / "pids.json").write_text(json.dumps([p.pid for p in procs]))

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = 0
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.returncode not in (None, 0)]
            if failed:
                code = failed[0].returncode
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                break
            time.sleep(0.2)
        for p in procs:
            p.wait()
        if code == 0:
            code = next((p.returncode for p in procs if p.returncode), 0)
        if code and processes > 1:
            print(f"local_pod: a process exited with {code}; logs of processes 1..{processes - 1} in {logs}",
                  file=sys.stderr)
        return code
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for f in files:
            f.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m rao_jax.local_pod", description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="processes (simulated hosts), default 2")
    parser.add_argument("--devices-per-process", type=int, default=4, help="CPU devices per process, default 4")
    parser.add_argument("--module", default="rao_jax.train", help="what each process runs (default rao_jax.train)")
    parser.add_argument("--log-dir", default=None, help="where processes 1.. log (default: a temporary folder)")
    args = parser.parse_args(argv)
    try:
        return run(args.processes, args.devices_per_process, rest, module=args.module, log_dir=args.log_dir)
    except ValueError as err:
        print(f"local_pod: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
