"""A user who is not root meets root's state directory and content store (pointed at them with
NSBUILD_STATE_DIR and NSBUILD_STORE): every command ends in one clear message (or works), never a
traceback, and none suggests a destructive fix. (With their own directories, the defaults, the same
commands work rootless: tests/test_rootless.py.)"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import RECIPES, _umount_all_under, needs_root, nsbuild_cmd

pytestmark = needs_root

# (command line, exit status, a fragment of stderr); the sandboxes were built by root. Commands that
# needed root now work rootless through the user's own state directory (holder.py): pointed at root's,
# they stop at it, where they used to stop at "needs root".
THEIRS = "cannot use the state directory"
CASES = [
    (["ls"], 1, THEIRS),
    (["check", "archive.toml"], 1, THEIRS),
    (["check", "layers.toml"], 0, ""),
    (["lock", "archive.toml"], 1, THEIRS),
    (["lock", "layers.toml"], 2, "layers.toml.lock: Permission denied"),
    (["run", "archive.toml"], 1, THEIRS),
    (["run", "layers.toml"], 1, THEIRS),
    (["run", "layers"], 1, THEIRS),
    (["run", "--", "layers", "true"], 1, THEIRS),
    (["rm", "layers"], 1, THEIRS),
    (["rm", "--all"], 1, THEIRS),
    (["gc", "-n"], 1, THEIRS),
    (["gc"], 1, THEIRS),
    (["build", "layers.toml"], 1, THEIRS),
    (["plan", "archive.toml"], 0, ""),
    (["doctor"], 0, ""),
]


@pytest.fixture
def roots_sandboxes(user, tmp_path: Path):
    """layers and archive built by root, in a state dir and store the user can reach but not read;
    the recipes in a directory the user can read but not write."""
    top = Path(user.home) / f"t{os.getpid()}"
    recipes = top / "recipes"
    recipes.mkdir(parents=True)
    for item in ("layers.toml", "layers", "archive.toml", "archive"):
        (shutil.copytree if (RECIPES / item).is_dir() else shutil.copy)(RECIPES / item, recipes / item)
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(top)], check=True)
    env = dict(os.environ, NSBUILD_STATE_DIR=str(top / "state"), NSBUILD_STORE=str(top / "store"))
    for recipe in ("layers.toml", "archive.toml"):
        subprocess.run(nsbuild_cmd() + ["build", "-q", recipe], cwd=recipes, env=env, check=True)
    try:
        yield recipes, {k: env[k] for k in ("NSBUILD_STATE_DIR", "NSBUILD_STORE")}
    finally:
        _umount_all_under(top / "state")
        shutil.rmtree(top)


@pytest.mark.parametrize("args,status,fragment", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_user_gets_one_clear_message(user, roots_sandboxes, args: list[str], status: int, fragment: str) -> None:
    recipes, env = roots_sandboxes
    proc = user.run(*args, cwd=str(recipes), env=env)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert (proc.returncode, fragment in proc.stderr) == (status, True), proc
    if status:
        assert proc.stderr.startswith("nsbuild: error: ") and proc.stderr.count("nsbuild: error:") == 1, proc.stderr
        assert "nsbuild rm" not in proc.stderr, proc.stderr  # a permission problem is no reason to delete
    # root's sandboxes are untouched by the attempt
    listed = subprocess.run(nsbuild_cmd() + ["ls", "--json"], env=dict(os.environ, **env), capture_output=True,
                            text=True, check=True).stdout
    assert [(s["name"], s["status"]) for s in json.loads(listed)] == [("archive", "ok"), ("layers", "ok")]


def test_rm_on_unreadable_metadata_as_root_still_points_at_rm(nsbuild, state_dir: Path) -> None:
    """Root, whose metadata really is corrupt, still gets `nsbuild rm` as the way out."""
    nsbuild("build", str(RECIPES / "layers.toml"))
    (state_dir / "layers.json").write_text("{not json")
    (state_dir / "layers.run").unlink()
    proc = nsbuild("run", "layers", "--", "true", check=False)
    assert proc.returncode == 1 and "unreadable" in proc.stderr and "nsbuild rm layers" in proc.stderr
    nsbuild("rm", "layers")
