"""The README's set-ups on a fresh clone, wherever it sits: set-up 2 (the tests) from a clone under
/tmp, with and without the project's ../shared beside it."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import IN_VM, REPO, needs_root

pytestmark = [needs_root, pytest.mark.skipif(IN_VM, reason="runs kernel-vm itself")]
SHARED = REPO.parent / "shared"
IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                "_ffi.py")


@pytest.fixture(scope="module")
def clone_under_tmp():
    """A copy of this tree under /tmp with its venv made as set-up 2 makes it (inside the clone)."""
    top = Path(tempfile.mkdtemp(prefix="nsbuild-setup-", dir="/tmp"))
    clone = top / "nsbuild"
    try:
        shutil.copytree(REPO, clone, ignore=IGNORE)
        subprocess.run("python3 -m venv .venv && .venv/bin/pip install -q '.[test]'", shell=True, cwd=clone,
                       check=True, capture_output=True)
        yield clone
    finally:
        shutil.rmtree(top)


def kernel_vm_test(clone: Path) -> subprocess.CompletedProcess:
    """The clone's own kernel-7 test, with one quick suite in the guest."""
    env = dict(os.environ, NSBUILD_KVM_SUITES="tests/test_recipe.py::test_minimal_recipe_defaults")
    return subprocess.run([".venv/bin/pytest", "-p", "no:cacheprovider", "tests/test_kernel_vm.py"], cwd=clone,
                          env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.skipif(not (SHARED / "tools" / "kernel-vm").exists(), reason=f"no {SHARED} on this machine")
def test_set_up_2_passes_from_a_clone_under_tmp(clone_under_tmp: Path) -> None:
    (clone_under_tmp.parent / "shared").symlink_to(SHARED)
    try:
        proc = kernel_vm_test(clone_under_tmp)
    finally:
        (clone_under_tmp.parent / "shared").unlink()
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "NOT RUN" not in proc.stdout


def test_set_up_2_without_shared_says_so_and_passes(clone_under_tmp: Path) -> None:
    proc = kernel_vm_test(clone_under_tmp)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout[-3000:]
    last = proc.stdout.rstrip().splitlines()
    not_run = [line for line in last if line.startswith("!!! KERNEL 7 TESTS NOT RUN")]
    assert not_run and "kernel-vm is missing" in not_run[0], proc.stdout[-3000:]


def files(tree: Path) -> set[str]:
    return {str(p.relative_to(tree)) for p in tree.rglob("*")}


def test_set_up_1_leaves_no_build_droppings_in_the_clone(tmp_path: Path) -> None:
    """Set-up 1 installs from the clone and builds the default recipe there, which binds the clone at
    /work: pip's build/ and *.egg-info must not appear in it (nor in the sandbox)."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO, clone, ignore=IGNORE)
    before = files(clone)
    venv = tmp_path / "opt-nsbuild"
    subprocess.run(f"python3 -m venv {venv} && {venv}/bin/pip install -q .", shell=True, cwd=clone, check=True,
                   capture_output=True)
    assert files(clone) == before
    env = dict(os.environ, NSBUILD_STATE_DIR=str(tmp_path / "state"), NSBUILD_STORE=str(tmp_path / "store"))
    try:
        subprocess.run([f"{venv}/bin/nsbuild", "build", "-q"], cwd=clone, env=env, check=True)
        seen = subprocess.run([f"{venv}/bin/nsbuild", "run", "dev", "--", "ls", "-A", "/work"], cwd=clone, env=env,
                              check=True, capture_output=True, text=True).stdout.split()
    finally:
        subprocess.run([f"{venv}/bin/nsbuild", "rm", "--all"], env=env, check=True, capture_output=True)
    assert sorted(seen) == sorted(p.name for p in clone.iterdir())
    assert not {"build", "nsbuild.egg-info"} & set(seen)
