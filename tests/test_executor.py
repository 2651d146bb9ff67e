"""The executor, in process: faults injected at every step unwind completely."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder.plan import executor
from builder.layers import gclock
from builder.sandbox.build import ensure_template, plan_for, resolve_layers
from builder.errors import BuildError
from builder.sandbox.state import StateDir
from builder.kernel.features import STRATEGIES, probe, supported
from builder.recipe.model import Recipe
from builder.recipe.load import load
from builder.plan.steps import Plan

from conftest import IN_VM, RECIPES, mountinfo, needs_root, nsbuild_cmd, open_fds, tally

pytestmark = needs_root
FEATURES = probe()
AVAILABLE = [s for s in STRATEGIES if supported(FEATURES, s)]


def kept_upper_recipe(tmp_path: Path) -> Path:
    """layers.toml, but with a persistent upper directory that the build must create."""
    text = (RECIPES / "layers.toml").read_text()
    text = text.replace('path = "layers/', f'path = "{RECIPES}/layers/')
    text = text.replace('source = "layers/', f'source = "{RECIPES}/layers/')
    text = text.replace('upper = "tmpfs"\nsize = "64m"', 'upper = "kept/upper"')
    path = tmp_path / "kept.toml"
    path.write_text(text)
    (tmp_path / "kept").mkdir()
    return path


def store_listing(store: Path) -> list[tuple[str, int]]:
    """Each store entry's files with their sizes, whatever is under tmp/, and the gc roots (a failed
    build registers none); not the cache of file digests."""
    return sorted((str(p.relative_to(store)), p.lstat().st_size) for p in store.rglob("*")
                  if "digests.json" not in p.name)


def store_stamp(store: Path) -> list[tuple[str, int, int]]:
    """The store's top directories and entries (inode, mtime): cheap enough to check after every fault."""
    dirs = [store, store / "tmp", store / "sha256"] + sorted((store / "sha256").glob("*"))
    return [(str(d), d.stat().st_ino, d.stat().st_mtime_ns) for d in dirs if d.exists()]


def planned(recipe: Recipe, strategy: str, state: StateDir | None) -> Plan:
    """The build's plan, with archive, OCI and binaries layers in the (test's) store."""
    try:
        return plan_for(resolve_layers(recipe), strategy, state=state)
    finally:
        gclock.release()  # resolve_layers held the store for this process (no gc runs here)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One content store for the sweeps: its entries do not depend on the strategy, and copying the
    tools layer once instead of once per strategy matters under TCG."""
    return tmp_path_factory.mktemp("store") / "store"


@pytest.mark.parametrize("strategy", AVAILABLE)
@pytest.mark.parametrize("recipe", ["dev", "layers", "kept", "dev+template", "archive", "oci", "tools"])
def test_fault_at_every_step_leaves_nothing(tmp_path: Path, state_dir: Path, shared_store: Path, monkeypatch,
                                            strategy: str, recipe: str) -> None:
    """Every example recipe but debian.toml, whose 70 MB image is made by a script (test_images
    sweeps image plans); archive, oci and tools use the content store."""
    path = kept_upper_recipe(tmp_path) if recipe == "kept" else RECIPES / f"{recipe.split('+')[0]}.toml"
    store = shared_store
    monkeypatch.setenv("NSBUILD_STORE", str(store))
    state = None
    if recipe.endswith("+template"):
        if strategy != "unshare":
            pytest.skip("templates serve the unshare strategy only")
        state = StateDir(str(state_dir))
        state.prepare()
        ensure_template(state, FEATURES)
    plan = planned(load(str(path), cwd=str(tmp_path)), strategy, state)
    assert (state is not None) == any(step.out == "%template" for step in plan.steps)
    assert recipe in ("dev", "layers", "kept", "dev+template") or store.exists()
    entries, stamp = store_listing(store), store_stamp(store)
    # dev.toml binds $CWD (here tmp_path) read-write at /work: unwinding must not delete through it
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("host data\n")
    before, fds = mountinfo(), open_fds()
    faults = 0
    for k in range(len(plan.steps)):
        if plan.steps[k].call == "fork":
            continue  # not a syscall of its own: its child's steps are
        monkeypatch.setenv("NSBUILD_TEST_FAULT", f"{k}:EIO")
        with pytest.raises(BuildError) as info:
            executor.execute(plan)
        assert info.value.step == k and info.value.errno == 5, str(info.value)  # type: ignore[attr-defined]
        assert plan.steps[k].origin in str(info.value)
        assert mountinfo() == before, f"a mount was left after a fault at step {k}"
        assert open_fds() == fds, f"an fd leaked after a fault at step {k}"
        assert sentinel.read_text() == "host data\n", f"host files lost after a fault at step {k}"
        assert store_stamp(store) == stamp, f"the store changed after a fault at step {k}"
        if recipe == "kept":
            assert sorted(os.listdir(tmp_path / "kept")) == [], f"left files after a fault at step {k}"
        faults += 1
    monkeypatch.delenv("NSBUILD_TEST_FAULT")
    os.close(executor.execute(plan))  # and without a fault it builds
    assert mountinfo() == before and open_fds() == fds
    assert store_listing(store) == entries  # the entries were complete before the plan ran; still are
    tally(f"faults injected and survived, in process, {strategy}", faults)


def test_real_kernel_error_names_step_entry_errno_and_message(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[sandbox]\nname = "r"\n[[mount]]\ntarget = "/m"\ntype = "tmpfs"\n'
                      'options = { nr_inodes = "many" }\n')
    with pytest.raises(BuildError) as info:
        executor.execute(plan_for(load(str(recipe))))
    text = str(info.value)
    assert text.startswith("mount[0] (step ") and "fsconfig(%fs:/m" in text and "EINVAL" in text
    assert "; kernel says: tmpfs: Bad value for 'nr_inodes'" in text, text  # without the log's "e " prefix


@pytest.mark.skipif(IN_VM, reason="the CLI path is the same on every kernel; ~100 slow starts under TCG")
@pytest.mark.parametrize("recipe", ["dev", "layers", "archive", "oci", "tools"])
def test_cli_build_with_a_fault_at_every_step_leaves_no_state(nsbuild, state_dir: Path, tmp_path: Path,
                                                              monkeypatch, recipe: str) -> None:
    path = str(RECIPES / f"{recipe}.toml")
    store = tmp_path / "store"
    monkeypatch.setenv("NSBUILD_STORE", str(store))  # the CLI's (nsbuild fixture), filled here first
    plan = planned(load(path, cwd=str(tmp_path)), "auto", None)
    entries = store_listing(store)
    env = nsbuild.env  # type: ignore[attr-defined]
    for k, step in enumerate(plan.steps):
        if step.call == "fork":
            continue
        proc = subprocess.run(nsbuild_cmd() + ["build", path], capture_output=True,
                              text=True, env=dict(env, NSBUILD_TEST_FAULT=f"{k}:ENOMEM"), cwd=tmp_path)
        assert proc.returncode == 1 and f"(step {k + 1}," in proc.stderr and "ENOMEM" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert not state_dir.exists()  # no namespace, no metadata, no plan cache
        tally(f"faults injected and survived, through the CLI, {plan.strategy}")
    assert store_listing(store) == entries


def test_a_process_with_threads_forks_for_the_namespace_steps(tmp_path: Path, monkeypatch) -> None:
    """setns/unshare fail in a process with threads: then a forked child runs those steps."""
    import threading

    plan = plan_for(load(str(RECIPES / "layers.toml"), cwd=str(tmp_path)), "unshare")
    child_steps = [k for k, s in enumerate(plan.steps) if s.where == "child"]
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not executor._single_threaded()
        before = mountinfo()
        os.close(executor.execute(plan))
        for k in (child_steps[0], child_steps[len(child_steps) // 2], child_steps[-1]):
            monkeypatch.setenv("NSBUILD_TEST_FAULT", f"{k}:EIO")
            with pytest.raises(BuildError) as info:
                executor.execute(plan)
            assert info.value.step == k  # type: ignore[attr-defined]
        assert mountinfo() == before
    finally:
        stop.set()
        thread.join()
