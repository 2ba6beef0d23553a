"""Layers import downward only (docs/ARCHITECTURE.md):

    base (constants, conversation, image and token helpers, utils) < model < data < train | eval | serve
    < demo, testing

Every `import` and `from ... import` in llava/ (at module level or inside a function) is read from the
source, so a lazy import that climbs a layer is caught too. train, eval and serve sit side by side and do
not import each other; the runtime data modules do not import the offline data tools (llava.data.tools).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llava"

BASE = {"llava", "llava.constants", "llava.conversation", "llava.conversation_templates", "llava.mm_utils",
        "llava.utils", "llava.images"}  # fmt: skip
# Old module names kept as thin aliases of the offline tools (so their `python -m` commands keep working):
# each may import its own tool and nothing else is excused.
ALIASES = {
    f"llava.data.{name}": f"llava.data.tools.{name}"
    for name in ("synthetic", "synthetic_tower", "generate_instruct", "validate", "convert")
}
RANK = {
    "base": 0,
    "model": 1,
    "data": 2,
    "tools": 3,
    "train": 4,
    "eval": 4,
    "serve": 4,
    "demo": 5,
    "testing": 5,
}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or ".".join(parts[:2]) in BASE:
        return "base"
    if parts[1] == "data" and len(parts) > 2 and parts[2] == "tools":
        return "tools"
    if parts[1] in RANK:
        return parts[1]
    if parts[1] == "demo_tasks":  # the demo's task definitions: part of the demo
        return "demo"
    raise AssertionError(f"{module} belongs to no layer: add it to tests/test_layers.py and ARCHITECTURE.md")


def imported_modules(path: Path, package_dir: Path = PACKAGE) -> list[tuple[str, int]]:
    """(absolute llava module, line) for every import of a llava module in `path`."""
    module = module_name(path, package_dir)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from llava import conversation` imports the module llava.conversation
            found += [
                (f"{target}.{alias.name}" if target == "llava" else target, node.lineno)
                for alias in node.names
            ]
    return sorted({(n, line) for n, line in found if n == "llava" or n.startswith("llava.")})


def violations(package_dir: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        source = module_name(path, package_dir)
        src_layer = layer(source)
        for target, line in imported_modules(path, package_dir):
            dst_layer = layer(target)
            upward = RANK[dst_layer] > RANK[src_layer]
            sideways = RANK[dst_layer] == RANK[src_layer] == RANK["train"] and dst_layer != src_layer
            if (upward or sideways) and ALIASES.get(source) != target:
                where = path.relative_to(package_dir.parent)
                out.append(f"{where}:{line}: {source} ({src_layer}) imports {target} ({dst_layer})")
    return out


def test_no_module_imports_a_higher_layer():
    found = violations()
    assert not found, "imports that climb a layer or cross between train/eval/serve:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "module, expected",
    [
        ("llava.conversation", "base"),
        ("llava.utils.atomic", "base"),
        ("llava.model.builder", "model"),
        ("llava.data.dataset", "data"),
        ("llava.data.tools.validate", "tools"),
        ("llava.serve.cli", "serve"),
        ("llava.demo", "demo"),
    ],
)
def test_layer_of(module, expected):
    assert layer(module) == expected


def test_the_scan_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: an upward import inside a function and a relative one are both found."""
    pkg = tmp_path / "llava"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text("from ..serve import cli\n")
    (pkg / "model" / "x.py").write_text("def f():\n    from llava.train import train\n")
    found = violations(pkg)
    assert any("llava.model (model) imports llava.serve" in v for v in found)
    assert any("llava.model.x (model) imports llava.train (train)" in v for v in found)
