"""Property-based: any TOML document is either a valid recipe (which then plans for every strategy)
or one clear RecipeError. Two generators: documents built from recipe-shaped keys and tricky values,
and the example recipes with one key changed, removed or added. No root needed."""
from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from builder.errors import NsbuildError, RecipeError
from builder.kernel.features import STRATEGIES, Features
from builder.plan.planner import make_plan
from builder.recipe.load import parse
from builder.sandbox.session import Session

from conftest import RECIPES, tally

EXAMPLES = int(os.environ.get("NSBUILD_FUZZ_EXAMPLES", "5000"))  # per generator
K72 = Features("7.2.0", True, True, True)
HERE = str(Path(__file__).resolve().parent)

tricky_text = st.sampled_from([
    "", "/", "//", "/..", "/a/../b", "../../etc", "/etc/passwd", "/tmp", "/dev", "/proc", "$CWD", "$CWD/..",
    "~", "~/x", "/\x00x", "/a\nb", "/ünï/cödé", "/" + "a" * 5000, "tmpfs", "none", "bind", "dev", "proc",
    "ro", "nosuid", "noatime", "strictatime", "shared", "C:\\x", "\u202e/etc", "/a b", ".", "..", "x" * 64,
    "0644", "1777", "9999", "usr/bin", "golden", HERE, "/usr",
])
scalars = st.one_of(tricky_text, st.text(max_size=20), st.integers(-2**64, 2**64), st.booleans(),
                    st.floats(allow_nan=True), st.none())
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(tricky_text | st.text(max_size=8), inner,
                                                                       max_size=4)), max_leaves=12)
mount_keys = st.sampled_from(["target", "type", "source", "options", "attrs", "propagation", "recursive",
                              "optional", "rw", "tagret", "typ"])
path_keys = st.sampled_from(["path", "type", "content", "symlink", "mode", "uid", "gid", "owner"])
table = lambda keys: st.dictionaries(keys, values, max_size=7)  # noqa: E731
documents = st.fixed_dictionaries({}, optional={
    "sandbox": st.just({"name": "fuzz"}) | st.dictionaries(st.sampled_from(["name", "description", "nmae"]),
                                                          values, max_size=3),
    "layer": st.lists(table(st.sampled_from(["path", "archive", "image", "sha256", "devices", "oci"])),
                      max_size=3) | values,
    "root": table(st.sampled_from(["upper", "size", "attrs", "lower"])) | values,
    "mount": st.lists(table(mount_keys), max_size=5) | values,
    "path": st.lists(table(path_keys), max_size=4) | values,
    "run": table(st.sampled_from(["command", "cwd", "env", "user"])) | values,
    "extra": values,
})


SESSION = Session(store="/nonexistent-store")  # one for all examples: it remembers binaries closures


def check(doc: dict, file: str) -> None:
    try:
        recipe = parse(doc, file, "0" * 64, "/tmp", os.path.basename(file))
    except RecipeError as e:
        tally("fuzzed recipes rejected with one clear error (exit 2)")
        assert e.exit_code == 2 and e.problems
        for p in e.problems:
            assert p.message and isinstance(p.key, str)
            assert p.render(os.path.basename(file)).startswith(os.path.basename(file) + ": ")
        return
    try:
        recipe = SESSION.resolve(recipe, unpack=False)  # archive, OCI, binaries layers: store paths
    except NsbuildError as e:  # a layer's content does not fit (a pin, an OCI ref): what `build` says
        tally("fuzzed recipes rejected with one clear error (exit 2)")
        assert e.exit_code == 2 and "\n" not in str(e), e
        return
    for strategy in STRATEGIES:  # a valid recipe always plans
        plan = make_plan(recipe, K72, strategy)
        assert plan.steps and all(step.origin for step in plan.steps)
    tally("fuzzed recipes valid, and planned for every strategy")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=documents)
def test_any_document_is_valid_or_one_clear_error(doc: dict) -> None:
    check(doc, os.path.join(HERE, "fuzz.toml"))


EXAMPLE_DOCS = {str(p): tomllib.loads(p.read_text()) for p in sorted(RECIPES.glob("*.toml"))}


def key_paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every key and index of a document, parents before children."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    paths = []
    for key, child in items:
        paths.append(prefix + (key,))
        paths += key_paths(child, prefix + (key,))
    return paths


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(file=st.sampled_from(sorted(EXAMPLE_DOCS)), data=st.data())
def test_example_recipes_with_one_key_changed(file: str, data: st.DataObject) -> None:
    doc = copy.deepcopy(EXAMPLE_DOCS[file])
    path = data.draw(st.sampled_from(key_paths(doc)))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "remove":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[data.draw(tricky_text | mount_keys | path_keys)] = data.draw(values)
    else:
        parent[path[-1]] = data.draw(values)
    check(doc, file)
