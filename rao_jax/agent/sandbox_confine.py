"""How a sandbox worker confines itself: Python-level guards, kernel isolation, rlimits.

Loaded by ``sandbox_worker.py`` from its own directory (standard library only; never imports
rao_jax). Two layers:

- kernel (the boundary), per tree: its own process forked from a template, in new network, mount
  and PID namespaces (the worker is PID 1 of its own: it cannot see or signal another process), a
  private size-capped tmpfs as the scratch dir, ``chroot`` into it, then either a uid of its own
  (started as root) or, in a user namespace, root mapped to an unprivileged uid with every
  capability dropped; rlimits on address space, CPU, processes / threads (none), file size and
  open files;
- Python (defence in depth): an AST check that rejects underscore and frame attributes, builtins
  without eval / exec / compile, an ``open`` confined to the scratch dir, ``import`` that returns
  attribute-filtered views of whitelisted modules only, and no string-named attribute access that
  skips those checks (``getattr`` and ``operator.attrgetter`` / ``methodcaller`` check the name;
  ``string.Formatter`` is not offered).
"""

from __future__ import annotations

import ast
import builtins
import ctypes
import importlib
import json
import operator
import os
import resource
import signal
import types

ALLOWED_MODULES = (
    "array", "asyncio", "base64", "bisect", "cmath", "collections", "collections.abc", "copy", "dataclasses",
    "datetime", "decimal", "difflib", "enum", "fractions", "functools", "hashlib", "heapq", "itertools", "json",
    "math", "numbers", "operator", "pprint", "random", "re", "statistics", "string", "struct", "textwrap",
    "time", "typing", "unicodedata",
)
# Modules whose public names reach too far: cells get only the names listed here.
MODULE_ALLOWLISTS = {
    "asyncio": {"gather", "sleep", "wait", "wait_for", "as_completed", "create_task", "shield", "timeout",
                "Semaphore", "BoundedSemaphore", "Lock", "Event", "Condition", "Queue", "PriorityQueue",
                "LifoQueue", "QueueEmpty", "QueueFull", "TimeoutError", "CancelledError", "InvalidStateError",
                "iscoroutine", "iscoroutinefunction", "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED"},
}
# Callables that evaluate strings although their names look harmless.
HIDDEN_MODULE_ATTRS = {"typing": {"get_type_hints", "ForwardRef"},
                       "string": {"Formatter"}}   # get_field walks dotted names to any attribute
# Dunders ordinary class code uses that lead nowhere (no __class__, __dict__, __self__, __globals__...).
SAFE_DUNDERS = frozenset({
    "__init__", "__name__", "__doc__", "__len__", "__str__", "__repr__", "__eq__", "__lt__", "__le__", "__gt__",
    "__ge__", "__hash__", "__iter__", "__next__", "__contains__", "__getitem__", "__setitem__", "__enter__",
    "__exit__", "__call__", "__add__", "__post_init__",
})
BLOCKED_ATTRS = frozenset({
    "cr_frame", "gi_frame", "ag_frame", "tb_frame", "tb_next", "f_globals", "f_locals", "f_builtins", "f_back",
    "f_code", "cr_code", "gi_code", "ag_code", "cr_await", "gi_yieldfrom", "ag_await", "mro", "format_map",
    "get_loop", "get_coro",
})
SAFE_BUILTINS = (
    "abs", "aiter", "all", "anext", "any", "ascii", "bin", "bool", "bytearray", "bytes", "callable", "chr",
    "classmethod", "complex", "dict", "dir", "divmod", "enumerate", "filter", "float", "format", "frozenset",
    "hash", "hex", "id", "int", "isinstance", "issubclass", "iter", "len", "list", "map", "max", "min", "next",
    "object", "oct", "ord", "pow", "print", "property", "range", "repr", "reversed", "round", "set", "slice",
    "sorted", "staticmethod", "str", "sum", "super", "tuple", "type", "zip", "True", "False", "None",
    "Ellipsis", "NotImplemented", "__build_class__",
)


class SandboxViolation(Exception):
    """The cell tried something this sandbox forbids."""



def _forbidden(name: str) -> bool:
    return name in BLOCKED_ATTRS or name.startswith("_") and name != "_" and name not in SAFE_DUNDERS


def check_source(tree: ast.AST) -> None:
    """Reject attribute names that lead to interpreter internals (defence in depth)."""
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Name) and node.id.startswith("__"):
            names = [node.id]
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.MatchClass):
            names = list(node.kwd_attrs)
        for name in names:
            if _forbidden(name):
                raise SandboxViolation(f"line {node.lineno}: '{name}' is not accessible in this sandbox")


def module_view(name: str, module: types.ModuleType, submodules: dict[str, types.ModuleType]) -> types.ModuleType:
    """A copy of ``module`` with only its public, non-module attributes (and allowed submodules)."""
    view = types.ModuleType(name, getattr(module, "__doc__", None))
    hidden = HIDDEN_MODULE_ATTRS.get(name, set())
    allowed = MODULE_ALLOWLISTS.get(name)
    for key, value in vars(module).items():
        if key.startswith("_") or key in hidden or isinstance(value, types.ModuleType):
            continue
        if allowed is not None and key not in allowed:
            continue
        setattr(view, key, value)
    for key, value in GUARDED_MODULE_ATTRS.get(name, {}).items():
        setattr(view, key, value)
    for key, value in submodules.items():
        setattr(view, key, value)
    return view


def _checked_attrgetter(*names):
    """``operator.attrgetter`` with every dotted part checked like ``getattr``'s name."""
    for name in names:
        for part in _checked_name(name).split("."):
            _checked_name(part)
    return operator.attrgetter(*names)


def _checked_methodcaller(name, /, *args, **kwargs):
    return operator.methodcaller(_checked_name(name), *args, **kwargs)


class _JSONEncoder(json.JSONEncoder):
    """What cells get as ``json.JSONEncoder``: patching it cannot change the worker's own framing."""


class _JSONDecoder(json.JSONDecoder):
    """What cells get as ``json.JSONDecoder`` (see ``_JSONEncoder``)."""


_JSONEncoder.__name__ = _JSONEncoder.__qualname__ = "JSONEncoder"
_JSONDecoder.__name__ = _JSONDecoder.__qualname__ = "JSONDecoder"

# Names of allowed modules that would reach any attribute by a string, or objects the worker itself
# uses: what cells get instead.
GUARDED_MODULE_ATTRS = {"operator": {"attrgetter": _checked_attrgetter, "methodcaller": _checked_methodcaller},
                        "json": {"JSONEncoder": _JSONEncoder, "JSONDecoder": _JSONDecoder}}


def _checked_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError("attribute name must be a string")
    if _forbidden(name):
        raise SandboxViolation(f"attribute '{name}' is not accessible in this sandbox")
    return name


def make_builtins(views: dict[str, types.ModuleType], open_root: str) -> dict:
    """The restricted builtins dict of a cell namespace."""
    table = {name: getattr(builtins, name) for name in SAFE_BUILTINS}
    for name, value in vars(builtins).items():
        if isinstance(value, type) and issubclass(value, BaseException) and not name.startswith("_"):
            table[name] = value

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level:
            raise ImportError("relative imports are not available in this sandbox")
        if name not in views:
            raise ImportError(f"import of '{name}' is not allowed in this sandbox; allowed modules: "
                              + ", ".join(m for m in ALLOWED_MODULES if "." not in m))
        return views[name] if fromlist or "." not in name else views[name.split(".")[0]]

    def guarded_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, str | bytes):
            raise SandboxViolation("open() takes a path in this sandbox")
        path = os.path.realpath(os.fsdecode(file))
        if os.path.commonpath([path, open_root]) != open_root:
            raise PermissionError(f"access to {os.fsdecode(file)!r} is not allowed: files live in the current "
                                  "directory only")
        return open(path, mode, *args, **kwargs)

    table.update({
        "__import__": guarded_import,
        "open": guarded_open,
        "getattr": lambda obj, name, *default: getattr(obj, _checked_name(name), *default),
        "hasattr": lambda obj, name: hasattr(obj, _checked_name(name)),
        "setattr": lambda obj, name, value: setattr(obj, _checked_name(name), value),
        "delattr": lambda obj, name: delattr(obj, _checked_name(name)),
    })
    return table


# ---- isolation -------------------------------------------------------------------------------

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE = 38, 4
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18


def _mount_scratch(libc, scratch: str, size: int, uid: int | None) -> str:
    """A private tmpfs of ``size`` bytes on the scratch dir: files cannot fill the host's disk, and no
    other tree's worker sees them (the mount lives in this worker's mount namespace)."""
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:   # keep our mounts out of the host's view
        return f"not mounted ({os.strerror(ctypes.get_errno())})"
    options = f"size={size},mode=0700" + (f",uid={uid},gid={uid}" if uid is not None else "")
    if libc.mount(b"tmpfs", scratch.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options.encode()) != 0:
        return f"not mounted ({os.strerror(ctypes.get_errno())})"
    return f"tmpfs of {size >> 20} MiB"


def _drop_capabilities(libc) -> None:
    """Empty effective, permitted and inheritable capability sets (v3 ABI: two 32-bit words each)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), f"capset: {os.strerror(ctypes.get_errno())}")


def _become(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def enter_namespaces(kernel: bool, userns: bool | None, uid: int) -> dict[str, str]:
    """Step one, in the process that will fork the worker: new network, mount and PID namespaces
    (the worker, forked next, is PID 1 of its own), and a user namespace when not root or asked.
    As root the tree's own ``uid`` is taken first when a user namespace is wanted. Returns what was
    achieved (``confine`` completes it)."""
    report = {"network": "python guards only", "files": "python guards only", "pids": "shared with the host",
              "user": f"uid {os.getuid()}"}
    if not kernel:
        return report
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    root = os.geteuid() == 0
    use_userns = (not root) if userns is None else userns
    if root and use_userns:   # the tree's own uid first: then this is the unprivileged path
        _become(uid)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)   # a uid change makes /proc/self root-owned otherwise
    outside_uid, outside_gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNET | CLONE_NEWNS | (CLONE_NEWUSER if use_userns else 0)
    if libc.unshare(flags | CLONE_NEWPID) == 0:
        report["pids"] = "own PID namespace"
    elif libc.unshare(flags) != 0:
        report["unshare_error"] = os.strerror(ctypes.get_errno())
        return report
    if use_userns:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {outside_uid} 1"),
                           ("gid_map", f"0 {outside_gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        report["userns"] = str(outside_uid)
    report["network"] = "empty network namespace"
    return report


def confine(scratch: str, scratch_bytes: int, uid: int, report: dict[str, str]) -> dict[str, str]:
    """Step two, in the worker itself: a private tmpfs scratch dir, chroot into it, then the tree's
    own unprivileged uid (as root) or no capabilities at all (in a user namespace)."""
    os.chdir(scratch)
    if report["network"].startswith("python"):
        return report
    libc = ctypes.CDLL(None, use_errno=True)
    in_userns = "userns" in report
    root = os.geteuid() == 0 and not in_userns
    report["scratch"] = _mount_scratch(libc, scratch, scratch_bytes, uid if root else None)
    if root and not report["scratch"].startswith("tmpfs"):
        os.chown(scratch, uid, uid)
    os.chdir(scratch)   # the tmpfs now covers the directory we were in
    os.chroot(scratch)
    os.chdir("/")
    report["files"] = "chroot into its own scratch dir"
    if in_userns:
        _drop_capabilities(libc)
        report["user"] = f"user namespace, uid {report.pop('userns')} outside, no capabilities"
    elif root:
        _become(uid)
        report["user"] = f"uid {uid} (its own)"
    return report


def set_rlimits(cfg: dict) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # an oversized write fails with EFBIG instead of killing
    lifetime = int(cfg["worker_cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (lifetime, lifetime + 5))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_bytes"], cfg["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_bytes"], cfg["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def import_views() -> dict[str, types.ModuleType]:
    modules = {name: importlib.import_module(name) for name in ALLOWED_MODULES}
    views: dict[str, types.ModuleType] = {}
    for name in sorted(modules, key=lambda n: -n.count(".")):   # submodules first
        subs = {n.split(".")[-1]: views[n] for n in views if n.rsplit(".", 1)[0] == name}
        views[name] = module_view(name, modules[name], subs)
    return views


