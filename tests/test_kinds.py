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


def test_a_new_kind_is_one_module_and_one_registration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kind the table does not know yet (a directory under another key) is parsed, resolved, locked,
    cached and planned once its module exists and MODULES names it: nothing else changes."""
    import sys
    import types

    from builder.kernel.features import Features
    from builder.layers import lock
    from builder.layers.resolved import ResolvedLayer
    from builder.plan.planner import make_plan
    from builder.recipe.load import parse
    from builder.recipe.model import Layer
    from builder.sandbox import plancache
    from builder.sandbox.session import Session

    toy = types.ModuleType("builder.layers.kinds.toy")
    toy.KIND, toy.KEY, toy.LOCKED, toy.OPTIONS = "toy", "toy", "toy", ()  # type: ignore[attr-defined]
    toy.parse = lambda c, t, where, base, cwd, digest, devices: Layer(  # type: ignore[attr-defined]
        where, "toy", c.host_path(t["toy"], base, cwd))
    toy.needs_store = lambda layer: False  # type: ignore[attr-defined]
    toy.resolve = lambda res, file, layer, unpack: [  # type: ignore[attr-defined]
        ResolvedLayer(layer.origin, "dir", layer.path)]
    toy.digest = lambda res, layer: "7" * 64  # type: ignore[attr-defined]
    toy.source = lambda layer: layer.path  # type: ignore[attr-defined]
    toy.image = lambda res, layer: None  # type: ignore[attr-defined]
    toy.inputs = lambda layer: []  # type: ignore[attr-defined]
    toy.cacheable = lambda layer: True  # type: ignore[attr-defined]
    toy.moving = lambda layer: []  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "builder.layers.kinds.toy", toy)
    monkeypatch.setattr(kinds, "MODULES", kinds.MODULES + ("toy",))
    monkeypatch.setattr(kinds, "_by_kind", {})

    (tmp_path / "tree").mkdir()
    recipe = parse({"sandbox": {"name": "toy"}, "layer": [{"toy": "tree"}]}, str(tmp_path / "r.toml"), "0" * 64,
                   str(tmp_path))
    assert recipe.layers[0].kind == "toy"
    session = Session(store=str(tmp_path / "no-store"))  # a kind that needs none never makes it
    resolved = session.resolve(recipe, unpack=False)
    assert resolved.layers == (ResolvedLayer("layer[0]", "dir", str(tmp_path / "tree")),)
    plan = make_plan(resolved, Features("6.18.0-test", True, False, False), "unshare")
    assert any(s.call == "openat" and s.args[1] == str(tmp_path / "tree") for s in plan.steps)
    assert lock.layer_digests(recipe, session.layers) == {
        "layer[0]": {"kind": "toy", "source": str(tmp_path / "tree"), "sha256": "7" * 64}}
    assert plancache.cacheable(recipe) and not (tmp_path / "no-store").exists()
