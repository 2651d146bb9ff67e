"""The house rules of the source tree (ARCHITECTURE.md): no import circles, no module over 400 lines."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "builder"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(path: Path, known: set[str]) -> set[str]:
    """The builder modules a module imports, at the top or inside functions (a lazy import is still a
    dependency), leaving out `if TYPE_CHECKING:` blocks, which never run."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    found.add(sub if sub in known else child.module)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in known and m != "builder"}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def test_no_import_circles() -> None:
    assert cycles(graph()) == []


def test_the_circle_finder_finds_circles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_size(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by what its parts hold"


def test_every_module_is_in_a_room() -> None:
    """Only the package's entry points and the errors and progress shared by every room sit at the top."""
    top = {name for name, path in modules().items() if name.count(".") == 1 and path.name != "__init__.py"}
    assert top == {"builder.__main__", "builder.errors", "builder.progress"}, top


def room(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 2 else module


def test_the_rooms_depend_as_architecture_md_says() -> None:
    uses: dict[str, set[str]] = {}
    for module, imported in graph().items():
        uses.setdefault(room(module), set()).update(room(m) for m in imported if room(m) != room(module))
    assert uses["kernel"] <= {"builder.errors"}, uses["kernel"]
    assert uses["plan"] <= {"builder.errors", "kernel", "recipe", "layers"}, uses["plan"]
    plan_on_layers = {m for name, imported in graph().items() if room(name) == "plan"
                      for m in imported if room(m) == "layers"}
    assert plan_on_layers <= {"builder.layers.resolved"}, plan_on_layers  # the types only
    assert not any("cli" in {room(m) for m in imported} for name, imported in graph().items()
                   if room(name) not in ("cli", "builder.__main__")), "only the entry points import cli/"


def test_architecture_md_names_only_files_that_exist() -> None:
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    for name in rooms:
        assert f"`{name}/`" in text, f"ARCHITECTURE.md does not describe builder/{name}/"
    current = None
    for line in text.splitlines():
        found = re.match(r"\| `(\w+)/` \|", line)
        if found:
            current = found.group(1)
            for path in re.findall(r"`([\w/]+\.py)`", line):
                assert (PACKAGE / current / path).exists(), f"builder/{current}/{path} is named but missing"
    for path in re.findall(r"`((?:\w+/)+\w+\.py)`", text):
        assert any(p.exists() for p in (PACKAGE / path, PACKAGE.parent / path, *(PACKAGE / r / path for r in rooms))), path
