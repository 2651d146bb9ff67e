"""Pre-flight: does the [run] command start in the tree a recipe makes? Checked before mounting.

The tree view (tree.py) reads layers where they lie. Image layers are read through detached,
read-only mounts of their own (the same plan steps a build makes): nothing is attached anywhere.
"""
from __future__ import annotations

import hashlib
import os

from builder.errors import NsbuildError, Problem, RecipeError
from builder.kernel.features import Features

TYPE_CHECKING = False
if TYPE_CHECKING:
    from builder.layers.resolved import Resolved
    from builder.sandbox.state import StateDir


def problems(recipe: Resolved, features: Features) -> list[Problem]:
    """What would stop recipe.run.command from starting; `recipe` has its layers resolved (store.py)."""
    from builder.plan import executor
    from builder.plan.planner import make_image_plan
    from builder.check.command import check_run
    from builder.check.tree import SandboxTree

    fds: list[int] = []
    try:
        dirs = []
        for i, layer in enumerate(recipe.layers):
            if layer.kind == "image":
                fds.append(executor.execute(make_image_plan(recipe, i, features)))
                dirs.append(f"/proc/self/fd/{fds[-1]}")
            else:
                dirs.append(layer.path)
        return check_run(SandboxTree(recipe, dirs))
    finally:
        for fd in fds:
            os.close(fd)


def key(recipe: Resolved) -> str:
    """What a passed check depends on: the recipe and the identity of each layer's top directory or
    file (store entries are named by content). A rebuild with the same key skips the check."""
    h = hashlib.sha256(recipe.sha256.encode())
    for layer in recipe.layers:
        st = os.stat(layer.path)
        h.update(f"{layer.path}\0{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}\n".encode())
    return h.hexdigest()


def before_build(recipe: Resolved, features: Features, state: StateDir, name: str) -> str | None:
    """The check a build makes first: that [run]'s command starts in the tree, unless this sandbox
    passed with the same inputs. Returns the key to remember. Not checked (None): a recipe without a
    [run] command (a rootfs for other uses: `nsbuild check` still checks the default /bin/sh), and
    image layers, which the check would have to mount (`nsbuild check` does)."""
    if not recipe.run.given or any(layer.kind == "image" for layer in recipe.layers):
        return None
    passed = key(recipe)
    try:
        old = state.read(name) if os.path.isdir(state.path) else None
    except NsbuildError:
        old = None
    if old and old.get("checked") == passed:
        return passed
    found = problems(recipe, features)
    if found:
        error = RecipeError(recipe.file, found)
        error.hint = "fix the recipe, or build anyway with --no-check"
        raise error
    return passed
