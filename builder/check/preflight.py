"""Pre-flight: does the [run] command start in the tree a recipe makes? Checked before mounting.

The tree view (tree.py) reads layers where they lie. Image layers are read through detached,
read-only mounts of their own (the same plan steps a build makes): nothing is attached anywhere.
"""
from __future__ import annotations

import hashlib
import os

from builder.errors import Problem
from builder.kernel.features import Features
from builder.recipe.model import Recipe


def problems(recipe: Recipe, features: Features) -> list[Problem]:
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


def key(recipe: Recipe) -> str:
    """What a passed check depends on: the recipe and the identity of each layer's top directory or
    file (store entries are named by content). A rebuild with the same key skips the check."""
    h = hashlib.sha256(recipe.sha256.encode())
    for layer in recipe.layers:
        st = os.stat(layer.path)
        h.update(f"{layer.path}\0{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}\n".encode())
    return h.hexdigest()
