"""The package's layers import only downward (README "Layout"); an upward import fails this test.

Order, lowest first: config / io / processes → models, data, losses → attacks → training → evaluation → reporting →
pipelines → experiments → commands / cli / errors. Modules of one layer may import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vlalign

LAYERS: list[set[str]] = [
    {"config", "io", "processes"},
    {"models", "data", "losses"},
    {"attacks"},
    {"training"},
    {"evaluation"},
    {"reporting"},
    {"pipelines"},
    {"experiments"},
    {"commands", "cli", "errors", "__init__", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
PACKAGE = Path(vlalign.__file__).parent


def _layer_of(module: str) -> str:
    """'vlalign.training.loop' -> 'training'; 'vlalign.io' -> 'io'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name == "vlalign" or name.startswith("vlalign.")]


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        own = _layer_of(".".join(relative.parts))
        if own not in RANK:
            problems.append(f"{path}: package '{own}' is missing from LAYERS in this test")
            continue
        for line, module in _imports(path):
            target = _layer_of(module)
            if target not in RANK:
                problems.append(f"{path}:{line}: imports {module}, whose package '{target}' is not in LAYERS")
            elif RANK[target] > RANK[own]:
                problems.append(f"{path}:{line}: {own} (layer {RANK[own]}) imports {module} (layer {RANK[target]})")
    return problems


def test_layers_import_only_downward():
    problems = upward_imports()
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_an_upward_import_is_caught(tmp_path, monkeypatch):
    fake = tmp_path / "vlalign"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "bad.py").write_text("from vlalign.training.loop import fit\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert any("models (layer 1) imports vlalign.training.loop" in p for p in upward_imports())
