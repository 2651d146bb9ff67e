"""Property-based: any TOML document is either a valid recipe or one clear RecipeError. No root needed."""
from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from builder.errors import RecipeError
from builder.features import STRATEGIES, Features
from builder.plan import make_plan
from builder.recipe import parse
from builder.store import Store

EXAMPLES = int(os.environ.get("NSBUILD_FUZZ_EXAMPLES", "10000"))
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
    "sandbox": st.dictionaries(st.sampled_from(["name", "description", "nmae"]), values, max_size=3),
    "layer": st.lists(table(st.sampled_from(["path", "archive", "image", "sha256", "devices", "oci"])),
                      max_size=3) | values,
    "root": table(st.sampled_from(["upper", "size", "attrs", "lower"])) | values,
    "mount": st.lists(table(mount_keys), max_size=5) | values,
    "path": st.lists(table(path_keys), max_size=4) | values,
    "run": table(st.sampled_from(["command", "cwd", "env", "user"])) | values,
    "extra": values,
})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=documents)
def test_any_document_is_valid_or_one_clear_error(doc: dict) -> None:
    try:
        recipe = parse(doc, os.path.join(HERE, "fuzz.toml"), "0" * 64, "/tmp", "fuzz.toml")
    except RecipeError as e:
        assert e.exit_code == 2 and e.problems
        for p in e.problems:
            assert p.message and isinstance(p.key, str)
            assert p.render("fuzz.toml").startswith("fuzz.toml: ")
        return
    recipe = Store("/nonexistent-store").resolve(recipe, unpack=False)  # archive layers: store paths
    for strategy in STRATEGIES:  # a valid recipe always plans
        plan = make_plan(recipe, K72, strategy)
        assert plan.steps and all(step.origin for step in plan.steps)
