#!/usr/bin/env python3
"""A stand-in for the `gcloud` CLI in tests of tpu_scripts/: records every call and simulates the states of
queued resources, TPU VMs and GCS objects in a JSON file.

Environment: FAKE_GCLOUD_STATE (the state file), FAKE_GCLOUD_LOG (one JSON list of arguments per call),
FAKE_GCS_DIR (optional: the bytes of uploaded files, so that a later download gets them back).
A queued resource starts WAITING_FOR_RESOURCES and becomes ACTIVE at its ``provision_after``-th describe
(default 2); a test preempts it by writing ``"SUSPENDED"`` into the state file. ssh / scp succeed only on
the node of an ACTIVE queued resource (or a READY TPU VM).
"""

import json
import os
import shutil
import sys
from pathlib import Path

# FAKE_GCS_DIR: where objects uploaded from a local file keep their bytes (else only their names are kept).
BUCKET = Path(os.environ["FAKE_GCS_DIR"]) if os.environ.get("FAKE_GCS_DIR") else None


def main(argv: list[str]) -> int:
    state_path = Path(os.environ["FAKE_GCLOUD_STATE"])
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    state.setdefault("qr", {})
    state.setdefault("vm", {})
    state.setdefault("objects", {})
    with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    positional = [a for a in argv if not a.startswith("-")]
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    try:
        code = dispatch(positional, flags, argv, state)
    finally:
        state_path.write_text(json.dumps(state, indent=1))
    return code


def not_found(what: str) -> int:
    print(f"ERROR: (gcloud) NOT_FOUND: {what} was not found", file=sys.stderr)
    return 1


def node_up(state: dict, node: str) -> bool:
    qrs = [q for q in state["qr"].values() if q["node"] == node]
    return any(q["state"] == "ACTIVE" for q in qrs) or state["vm"].get(node) == "READY"


def dispatch(pos: list[str], flags: dict, argv: list[str], state: dict) -> int:
    if pos[:2] == ["storage", "cp"]:
        src, dest = ([a for a in argv[2:] if not a.startswith("--") and a != "-r"] + ["", ""])[:2]
        if src.startswith("gs://") and src.rstrip("*/") not in state["objects"] and not any(
                o.startswith(src.rstrip("*")) for o in state["objects"]):
            return not_found(src)
        if dest.startswith("gs://"):
            state["objects"][dest] = True
            if BUCKET and src not in ("-", "") and Path(src).is_file():   # keep the bytes
                (BUCKET / dest[5:]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, BUCKET / dest[5:])
        elif dest.endswith("/"):
            Path(dest).mkdir(parents=True, exist_ok=True)
        elif dest:
            kept = BUCKET / src[5:] if BUCKET else None
            if kept is not None and kept.is_file():
                shutil.copy(kept, dest)
            else:
                Path(dest).write_text("copied from " + src)
        return 0
    if pos[:2] == ["storage", "ls"]:
        return 0 if pos[2] in state["objects"] else not_found(pos[2])
    if pos[:3] == ["compute", "tpus", "queued-resources"]:
        verb, name = pos[3], pos[4]
        if verb == "create":
            if name in state["qr"]:
                print(f"ERROR: ALREADY_EXISTS: {name}", file=sys.stderr)
                return 1
            startup = flags.get("metadata-from-file", "")
            script = Path(startup.split("=", 1)[1]).read_text() if startup.startswith("startup-script=") else None
            state["qr"][name] = {"state": "WAITING_FOR_RESOURCES", "node": flags["node-id"], "polls": 0,
                                 "spot": "--spot" in argv, "startup": script,
                                 "provision_after": state.get("provision_after", 2)}
            return 0
        if name not in state["qr"]:
            return not_found(name)
        qr = state["qr"][name]
        if verb == "describe":
            qr["polls"] += 1
            if qr["state"] == "WAITING_FOR_RESOURCES" and qr["polls"] >= qr["provision_after"]:
                qr["state"] = "ACTIVE"
                if qr["startup"]:
                    state.setdefault("boots", []).append(name)   # the hosts ran their startup script
            print(qr["state"])
            return 0
        if verb == "delete":
            del state["qr"][name]
            return 0
    if pos[:3] == ["compute", "tpus", "tpu-vm"]:
        verb = pos[3]
        if verb in ("ssh", "scp"):
            node = pos[4] if verb == "ssh" else pos[5].split(":")[0]
            if not node_up(state, node):
                print(f"ERROR: (gcloud.compute.tpus.tpu-vm.{verb}) NOT_FOUND: node {node}", file=sys.stderr)
                return 1
            return 0
        name = pos[4]
        if verb == "create":
            state["vm"][name] = "READY"
            return 0
        if name not in state["vm"]:
            return not_found(name)
        if verb == "describe":
            print(state["vm"][name])
            return 0
        if verb == "delete":
            del state["vm"][name]
            return 0
    print(f"fake gcloud: unsupported call {argv}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
