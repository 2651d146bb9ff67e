"""The layer-kind table: every registered kind speaks the whole protocol, the recipe's source keys come
from it, and the layers room has no import circles (store.py reads lock files as gc roots; lock.py does not import it).
No root needed."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from builder.layers import kinds

PROTOCOL = ("KIND", "KEY", "LOCKED", "OPTIONS", "parse", "needs_store", "resolve", "digest", "source", "image",
            "inputs", "cacheable", "moving")
LAYERS = Path(importlib.import_module("builder.layers").__file__).parent  # type: ignore[arg-type]


@pytest.mark.parametrize("name", kinds.MODULES)
def test_each_kind_speaks_the_protocol(name: str) -> None:
    module = importlib.import_module(f"builder.layers.kinds.{name}")
    missing = [attr for attr in PROTOCOL if not hasattr(module, attr)]
    assert not missing, f"kinds/{name}.py lacks {missing}"
    assert kinds._table()[module.KIND] is module


def test_source_keys_are_the_tables() -> None:
    assert list(kinds.by_key()) == ["path", "image", "archive", "oci", "binaries"]
    assert kinds.options()["oci"] == ("sha256", "ref", "platform", "devices")


def _runtime_imports(path: Path) -> set[str]:
    """Modules a file imports when it runs (TYPE_CHECKING blocks left out)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)

    Visitor().visit(ast.parse(path.read_text()))
    return found


def test_no_import_circles_in_the_layers_room() -> None:
    modules = {}
    for path in sorted(LAYERS.rglob("*.py")):
        name = "builder." + ".".join(path.relative_to(LAYERS.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {m: {d for d in _runtime_imports(p) if d in modules and d != m} for m, p in modules.items()}
    graph = {m: {d for d in deps if not (modules[d].name == "__init__.py" and any(x.startswith(d + ".") for x in deps))}
             for m, deps in graph.items()}  # "from builder.layers import x" imports x, not a cycle through the package

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        return seen

    circles = sorted(m for m in graph if m in reachable(m))
    assert not circles, f"import circles through {circles}"
    assert "builder.layers.store" not in graph["builder.layers.lock"]  # lock files use the store a session made
