"""Layers only point down: every `import` in the package (module-level or inside a function) checked
against the layer it may reach."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rao_jax"

# What each layer may import from rao_jax (prefixes); everything else there is above it.
ALLOWED = {
    "models": ("rao_jax.models",),
    "parallel": ("rao_jax.parallel", "rao_jax.models"),
    "layout": ("rao_jax.layout", "rao_jax.parallel", "rao_jax.models"),
    "sampling": ("rao_jax.sampling", "rao_jax.models", "rao_jax.parallel", "rao_jax.layout"),
    "envs": ("rao_jax.envs",),
    "data": ("rao_jax.data", "rao_jax.envs", "rao_jax.paths"),
}


BOTTOM = ("rao_jax.errors",)   # every layer may raise ConfigError


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "rao_jax" or name.startswith("rao_jax.")}


def _modules(layer: str) -> list[Path]:
    folder = PACKAGE / layer
    return sorted(folder.glob("*.py")) if folder.is_dir() else [PACKAGE / f"{layer}.py"]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_is_below_it(layer):
    bad = {f"{path.relative_to(PACKAGE.parent)}: {name}" for path in _modules(layer) for name in _imports(path)
           if not name.startswith(ALLOWED[layer] + BOTTOM)}
    assert not bad, sorted(bad)


def test_the_check_sees_function_level_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from rao_jax.agent.policy import NodeView\n    import rao_jax.train\n")
    assert _imports(source) == {"rao_jax.agent.policy", "rao_jax.train"}


WORKER_SIDE = ("sandbox_worker", "sandbox_confine", "sandbox_io")   # run as `python -I -S`, from their folder


@pytest.mark.parametrize("name", WORKER_SIDE)
def test_the_sandbox_worker_side_imports_only_the_standard_library_and_its_siblings(name):
    import sys
    tree = ast.parse((PACKAGE / "agent" / f"{name}.py").read_text())
    found = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    found |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    bad = {m for m in found if m.split(".")[0] not in sys.stdlib_module_names | {"__future__", *WORKER_SIDE}}
    assert not bad, sorted(bad)
