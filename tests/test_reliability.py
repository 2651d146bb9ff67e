"""Crashes, races and hostile state: the state dir stays consistent and the host unchanged."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import RECIPES, mountinfo, needs_root, nsbuild_cmd, tally

pytestmark = needs_root


def tiny_recipe(tmp_path: Path) -> Path:
    """A small sandbox that builds fast: tmpfs root, /usr, /proc."""
    path = tmp_path / "tiny.toml"
    path.write_text('[sandbox]\nname = "tiny"\n[[path]]\npath = "/bin"\nsymlink = "usr/bin"\n'
                    '[[path]]\npath = "/lib64"\nsymlink = "usr/lib64"\n[[path]]\npath = "/lib"\nsymlink = "usr/lib"\n'
                    '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n'
                    '[[mount]]\ntarget = "/proc"\ntype = "proc"\n')
    return path


def consistent(nsbuild, state_dir: Path) -> list[dict]:
    """Every listed sandbox is usable; nothing else is in the state dir."""
    listed = json.loads(nsbuild("ls", "--json").stdout)
    for row in listed:
        assert row["status"] == "ok", row
        assert nsbuild("run", row["name"], "--", "true").returncode == 0
    names = {row["name"] for row in listed}
    files = {p.name for p in state_dir.iterdir()} if state_dir.exists() else set()
    assert files <= {".lock", ".template.mnt", ".plans", ".seccomp"} | \
        {f"{n}.{ext}" for n in names for ext in ("mnt", "json", "run", "upper")}, files
    points = {line.split()[4] for line in open("/proc/self/mountinfo")}
    assert all(str(state_dir / f) in points for f in files if f.endswith(".upper")), files  # pinned, not left over
    return listed


def test_parallel_builds_of_different_names(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: nsbuild("build", str(recipe), "--name", f"p{i}", check=False),
                                range(16)))
    assert [r.returncode for r in results] == [0] * 16, [r.stderr for r in results if r.returncode]
    assert len(consistent(nsbuild, state_dir)) == 16
    tally("parallel builds of different names", 16)
    nsbuild("rm", *[f"p{i}" for i in range(16)])
    assert consistent(nsbuild, state_dir) == []


def test_racing_builds_of_one_name_one_wins(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: nsbuild("build", str(recipe), check=False), range(16)))
    codes = sorted(r.returncode for r in results)
    assert codes == [0] + [1] * 15, [r.stderr for r in results]
    assert all("exists already" in r.stderr for r in results if r.returncode)
    assert len(consistent(nsbuild, state_dir)) == 1
    tally("racing builds of one name (one wins)", 16)
    nsbuild("rm", "tiny")


def test_replace_and_rm_racing_run(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    nsbuild("build", str(recipe))
    env = nsbuild.env  # type: ignore[attr-defined]

    def runner(_: int) -> list[int]:
        codes = []
        for _ in range(8):
            p = subprocess.run(nsbuild_cmd() + ["run", "tiny", "--", "test", "-d", "/proc/self"],
                               capture_output=True, text=True, env=env)
            # entered the old or the new namespace (0), or found it gone cleanly (1 or 2)
            assert p.returncode in (0, 1, 2) and "Traceback" not in p.stderr, p.stderr
            codes.append(p.returncode)
        return codes

    with ThreadPoolExecutor(4) as pool:
        runs = pool.submit(lambda: sum(pool.map(runner, range(3)), []))
        for _ in range(8):
            nsbuild("build", str(recipe), "--replace")
        codes = runs.result()
    assert codes.count(0) == len(codes)  # --replace never leaves the path without a namespace
    tally("runs racing build --replace", len(codes))
    with ThreadPoolExecutor(4) as pool:
        runs = pool.submit(lambda: sum(pool.map(runner, range(3)), []))
        for _ in range(4):
            nsbuild("rm", "tiny")
            nsbuild("build", str(recipe))
        tally("runs racing rm and build", len(runs.result()))
    consistent(nsbuild, state_dir)
    nsbuild("rm", "tiny")


def test_sigkill_at_random_points_then_recovery(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    env = nsbuild.env  # type: ignore[attr-defined]
    rng = random.Random(1234)
    kills = 0
    for i in range(40):
        args = ["build", str(recipe), "--replace"] if i % 3 else ["rm", "tiny"]
        proc = subprocess.Popen(nsbuild_cmd() + args, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 0.25))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 10
    tally("builds and rms killed (SIGKILL) at random points, then recovered", kills)
    # the next command recovers whatever was abandoned, and says so
    nsbuild("build", str(recipe), "--replace")
    consistent(nsbuild, state_dir)
    nsbuild("rm", "tiny")
    assert consistent(nsbuild, state_dir) == []


def archive_recipe(tmp_path: Path, files: int = 2400) -> Path:
    """A sandbox whose one layer is a tarball of `files` small files: its unpack takes a while."""
    with tarfile.open(tmp_path / "big.tar.gz", "w:gz", compresslevel=1) as tar:
        for d in range(60):
            info = tarfile.TarInfo(f"d{d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for i in range(files):
            data = f"file {i}\n".encode() * 8
            info = tarfile.TarInfo(f"d{i % 60}/f{i}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "big.toml"
    path.write_text(tiny_recipe(tmp_path).read_text().replace('name = "tiny"\n',
                                                              'name = "big"\n[[layer]]\narchive = "big.tar.gz"\n'))
    return path


def listing(entry: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(entry)), p.lstat().st_size) for p in entry.rglob("*"))


def wait_until(condition, timeout: float = 30.0) -> float:  # noqa: ANN001 - a callable returning bool
    """Poll `condition` every 2 ms; return the time it took (or the timeout)."""
    start = time.monotonic()
    while not condition() and time.monotonic() - start < timeout:
        time.sleep(0.002)
    return time.monotonic() - start


def test_sigkill_during_store_writes_then_recovery(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    """Cold builds killed at random points, half of them while they unpack into the store: no entry
    is ever half there, and the next build removes (and names) what a killed one left under tmp/."""
    recipe = archive_recipe(tmp_path)
    store, tmp = tmp_path / "store", tmp_path / "store" / "tmp"
    env = nsbuild.env  # type: ignore[attr-defined]
    start = time.monotonic()
    first = subprocess.Popen(nsbuild_cmd() + ["build", str(recipe)], env=env, stdout=subprocess.DEVNULL)
    wait_until(lambda: tmp.is_dir() and any(tmp.iterdir()) or first.poll() is not None)
    unpack = wait_until(lambda: not any(tmp.iterdir()))  # renamed into place
    assert first.wait() == 0
    cold = time.monotonic() - start
    (entry,) = (store / "sha256").iterdir()
    whole = listing(entry)
    assert len(whole) == 2460
    rng = random.Random(5678)
    kills = abandoned = 0
    for round_ in range(10):
        nsbuild("rm", "big")
        assert json.loads(nsbuild("gc", "--json").stdout)["removed"] == [str(entry)]  # unpacked again next
        proc = subprocess.Popen(nsbuild_cmd() + ["build", str(recipe)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if round_ % 2:  # anywhere in the build
            time.sleep(rng.uniform(0.05, cold))
        else:  # while it unpacks
            wait_until(lambda: any(tmp.iterdir()) or proc.poll() is not None)
            time.sleep(rng.uniform(0, unpack / 2))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert not entry.exists() or listing(entry) == whole, "a store entry is half written"
        left = sorted(tmp.iterdir())
        abandoned += bool(left)
        later = nsbuild("build", str(recipe), "--replace")
        for path in left:
            assert f"nsbuild: recovered: removed {path}, an unpack that was interrupted" in later.stderr
        assert listing(entry) == whole and not any(tmp.iterdir())
        assert sorted(p.name for p in store.iterdir()) == [".gc.lock", ".lock", "digests.json", "roots",
                                                            "sha256", "tmp"]
        consistent(nsbuild, state_dir)
    assert kills >= 5 and abandoned >= 4, (kills, abandoned, unpack)
    tally("builds killed (SIGKILL) during cold builds (store writes), then recovered", kills)
    tally("interrupted unpacks found under the store's tmp/ and removed by the next build", abandoned)
    nsbuild("rm", "big")
    assert json.loads(nsbuild("ls", "--json").stdout) == []


@pytest.mark.parametrize("point", ["after-create", "after-mount", "after-tmp"])
def test_kill_inside_persist_is_recovered(nsbuild, state_dir: Path, tmp_path: Path, point: str) -> None:
    """Deterministic kills at each gap of the persist sequence."""
    recipe = tiny_recipe(tmp_path)
    env = dict(nsbuild.env, NSBUILD_TEST_KILL=point)  # type: ignore[attr-defined]
    proc = subprocess.run(nsbuild_cmd() + ["build", str(recipe)], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    later = nsbuild("build", str(recipe))
    assert "nsbuild: recovered:" in later.stderr
    tally("builds killed (SIGKILL) inside persist, then recovered")
    assert [r["name"] for r in consistent(nsbuild, state_dir)] == ["tiny"]
    nsbuild("rm", "tiny")


def test_corrupt_and_foreign_metadata(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    nsbuild("build", str(tiny_recipe(tmp_path)))
    assert oct(state_dir.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in state_dir.glob("*.json"))
    (state_dir / "tiny.run").write_bytes(b"\x00garbage")  # the fast cache is checked, then ignored
    assert nsbuild("run", "tiny", "--", "true").returncode == 0
    (state_dir / "tiny.run").unlink()
    (state_dir / "tiny.json").write_text("{not json")
    assert json.loads(nsbuild("ls", "--json").stdout)[0]["status"] == "corrupt"
    proc = nsbuild("run", "tiny", "--", "true", check=False)
    assert proc.returncode == 1 and "unreadable" in proc.stderr and "nsbuild rm tiny" in proc.stderr
    (state_dir / "tiny.json").write_text(json.dumps({"name": "other", "nsfs": "/etc/passwd"}))
    proc = nsbuild("run", "tiny", "--", "true", check=False)
    assert proc.returncode == 1 and "not nsbuild metadata" in proc.stderr
    assert "tiny: removed" in nsbuild("rm", "tiny").stdout
    assert consistent(nsbuild, state_dir) == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", ".lock", "UP"])
def test_names_cannot_inject_paths(nsbuild, state_dir: Path, name: str) -> None:
    assert nsbuild("rm", name, check=False).returncode == 2
    assert nsbuild("build", str(RECIPES / "dev.toml"), "--name", name, check=False).returncode == 2
    assert not state_dir.exists()


def test_build_inside_a_scratch_namespace_with_2000_mounts(tmp_path: Path) -> None:
    """A host with many mounts, and a non-initial mount namespace (as in a container)."""
    scratch = tmp_path / "many"
    scratch.mkdir()
    script = f"""
set -e
mount -t tmpfs scratch {scratch}
for i in $(seq 2000); do mkdir {scratch}/$i; mount --bind {scratch}/$i {scratch}/$i; done
test $(wc -l < /proc/self/mountinfo) -ge 2000
export NSBUILD_STATE_DIR={tmp_path}/state
{' '.join(nsbuild_cmd())} build {tiny_recipe(tmp_path)} --json
{' '.join(nsbuild_cmd())} run --unconfined tiny -- sh -c 'test $(wc -l < /proc/self/mountinfo) -eq 3 && echo inside'
{' '.join(nsbuild_cmd())} run tiny -- sh -c 'test $(wc -l < /proc/self/mountinfo) -lt 20'
{' '.join(nsbuild_cmd())} rm tiny
"""
    before = mountinfo()
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert '"strategy"' in proc.stdout and "inside" in proc.stdout
    assert mountinfo() == before


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_namespace_id_order_inside_a_non_initial_namespace(tmp_path: Path) -> None:
    """Namespace ids come from per-CPU ranges, so inside a namespace made on one CPU, a namespace
    made on the other CPU can get a lower id, and the kernel refuses to pin it.

    Which CPU's range is higher depends on the machine's history, so both orientations are tried:
    a build confined to the other CPU must either succeed or fail with the clear message (and one
    of the two orientations must fail); allowed both CPUs, a build always succeeds (it retries).
    """
    recipe = tiny_recipe(tmp_path)
    cmd = " ".join(nsbuild_cmd())

    def inside(outer_cpu: int, build_cpus: str) -> subprocess.CompletedProcess:
        script = (f"mount -t tmpfs s {tmp_path}/s && NSBUILD_STATE_DIR={tmp_path}/s/state "
                  f"taskset -c {build_cpus} {cmd} build {recipe} --json && "
                  f"NSBUILD_STATE_DIR={tmp_path}/s/state {cmd} run tiny -- true")
        return subprocess.run(["taskset", "-c", str(outer_cpu), "unshare", "-m", "--propagation",
                               "private", "sh", "-c", script], capture_output=True, text=True)

    (tmp_path / "s").mkdir()
    refusals = 0
    # A range refill between two runs can flip the order, so give it a few rounds.
    for _ in range(5):
        for outer in (0, 1):
            confined = inside(outer, str(1 - outer))
            assert "Traceback" not in confined.stderr
            if confined.returncode != 0:
                assert confined.returncode == 1, confined.stderr
                assert "is lower than that of the namespace nsbuild runs in" in confined.stderr
                refusals += 1
            ok = inside(outer, "0,1")
            assert ok.returncode == 0, ok.stderr
        if refusals:
            break
    assert refusals, "no orientation produced a lower namespace id: the kernel no longer uses per-CPU ranges?"


def test_failed_metadata_write_leaves_nothing(state_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Persisting fails after the namespace is bound (here: the metadata rename): all of it goes."""
    from builder.plan import executor
    from builder.sandbox import state as state_mod
    from builder.sandbox.build import plan_for
    from builder.recipe.load import load

    sd = state_mod.StateDir(str(state_dir))
    sd.prepare()
    nsfd = executor.execute(plan_for(load(str(tiny_recipe(tmp_path)))))

    def failing_rename(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_mod.os, "rename", failing_rename)
    try:
        with pytest.raises(OSError):
            sd.persist("tiny", nsfd, {"run": {"command": ["true"], "cwd": "/", "env": {}}}, replace=False)
    finally:
        os.close(nsfd)
    monkeypatch.undo()
    assert sorted(p.name for p in state_dir.iterdir()) == [".lock"]
    assert not any(str(state_dir / "tiny.mnt") in line for line in mountinfo())


def persist_block(nsbuild, recipe: Path, *args: str) -> tuple[dict, range]:
    """The plan a build of `recipe` would run now, and the indices of its persist segment."""
    doc = json.loads(nsbuild("plan", str(recipe), "--format", "json", *args).stdout)
    kind, (start, end) = doc["blocks"][-1]["kind"], doc["blocks"][-1]["steps"]
    assert kind == "persist" and all(s["origin"] == "persist" for s in doc["steps"][start:end])
    return doc, range(start, end)


@pytest.mark.parametrize("replace", [False, True], ids=["new", "replace"])
def test_a_fault_at_every_persist_step_leaves_the_state_clean(nsbuild, state_dir: Path, tmp_path: Path,
                                                              replace: bool) -> None:
    """The persist segment is part of the plan, so faults reach it: a new sandbox in a fresh state
    directory (whose set-up is part of the segment), and one that replaces a sandbox. Each fault
    leaves no mount and no file behind and says whether a retry can help; a fault after the new
    namespace went beneath the old one takes both, and says so (a replaced sandbox is never half
    there)."""
    recipe = tiny_recipe(tmp_path)
    extra = ["--replace"] if replace else []
    if replace:
        nsbuild("build", str(recipe))
        consistent(nsbuild, state_dir)  # its runs make the seccomp cache, which stays
    doc, block = persist_block(nsbuild, recipe)
    calls = [doc["steps"][k]["call"] for k in block]
    assert calls == (["open_tree", "move_mount", "umount2"] if replace else
                     ["open_tree", "move_mount", "mount_setattr", "mknodat", "open_tree", "move_mount"])
    env = nsbuild.env  # type: ignore[attr-defined]
    before, files = mountinfo(), sorted(os.listdir(state_dir)) if replace else [".lock"]
    for k in block:
        proc = subprocess.run(nsbuild_cmd() + ["build", str(recipe)] + extra, capture_output=True, text=True,
                              env=dict(env, NSBUILD_TEST_FAULT=f"{k}:EIO"), cwd=tmp_path / "cwd")
        assert proc.returncode == 1 and f"persist (step {k + 1}," in proc.stderr and "EIO" in proc.stderr, proc.stderr
        assert "a retry will not help" in proc.stderr and "Traceback" not in proc.stderr
        lost = replace and doc["steps"][k]["call"] == "umount2"  # the new one was beneath the old one
        if lost:
            assert "the sandbox 'tiny' it was to replace is gone as well" in proc.stderr
            assert consistent(nsbuild, state_dir) == []
            nsbuild("build", str(recipe))  # back as it was, for the next fault
            before, files = mountinfo(), sorted(os.listdir(state_dir))
        assert mountinfo() == before, f"a mount was left after a fault at persist step {k + 1}"
        assert sorted(os.listdir(state_dir)) == files, f"files were left after a fault at persist step {k + 1}"
        assert [r["name"] for r in consistent(nsbuild, state_dir)] == (["tiny"] if replace else [])
        tally("faults injected into persist steps and survived, through the CLI")
    # a shortage the kernel may not have next time: a retry can help (and was made, on each CPU)
    proc = subprocess.run(nsbuild_cmd() + ["build", str(recipe)] + extra, capture_output=True, text=True,
                          env=dict(env, NSBUILD_TEST_FAULT=f"{block[-1]}:ENOMEM"), cwd=tmp_path / "cwd")
    assert proc.returncode == 1 and "a retry can help" in proc.stderr and "ENOMEM" in proc.stderr, proc.stderr
    nsbuild("build", str(recipe), "--replace")
    assert [r["name"] for r in consistent(nsbuild, state_dir)] == ["tiny"]
    nsbuild("rm", "tiny")


@pytest.mark.parametrize("replace", [False, True], ids=["new", "replace"])
def test_a_fault_at_every_persist_step_of_a_tmpfs_upper(nsbuild, state_dir: Path, tmp_path: Path,
                                                        replace: bool) -> None:
    """The same with a tmpfs upper, which the segment pins on NAME.upper before the namespace. A new
    sandbox: every fault leaves nothing. A replacement: a fault before the new upper goes in leaves
    the old sandbox whole; one after it leaves the old sandbox without a pinned upper (export says
    so), never with the new one's; one after the namespace went beneath takes both, as above."""
    (tmp_path / "lower").mkdir()
    recipe = tiny_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace("[[path]]", '[[layer]]\npath = "lower"\n[[path]]', 1))
    extra = ["--replace"] if replace else []
    if replace:
        nsbuild("build", str(recipe))
        consistent(nsbuild, state_dir)
    doc, block = persist_block(nsbuild, recipe)
    calls = [doc["steps"][k]["call"] for k in block]
    assert calls == (["mount_setattr", "move_mount", "umount2", "open_tree", "move_mount", "umount2"] if replace else
                     ["open_tree", "move_mount", "mount_setattr", "mount_setattr", "mkdirat", "move_mount", "mknodat",
                      "open_tree", "move_mount"])
    env = nsbuild.env  # type: ignore[attr-defined]
    before, files = mountinfo(), sorted(os.listdir(state_dir)) if replace else [".lock"]
    for n, k in enumerate(block):
        proc = subprocess.run(nsbuild_cmd() + ["build", str(recipe)] + extra, capture_output=True, text=True,
                              env=dict(env, NSBUILD_TEST_FAULT=f"{k}:EIO"), cwd=tmp_path / "cwd")
        assert proc.returncode == 1 and f"persist (step {k + 1}," in proc.stderr and "EIO" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        if replace and n in (2, 3, 4):  # the new upper is in (beneath, or alone): the old sandbox keeps none
            assert [r["name"] for r in consistent(nsbuild, state_dir)] == ["tiny"]
            assert not (state_dir / "tiny.upper").exists()
            assert "is not pinned" in nsbuild("export", "tiny", f"oci:{tmp_path / 'out'}:v{n}").stderr
        elif replace and n == 5:  # the new namespace went beneath the old one
            assert "the sandbox 'tiny' it was to replace is gone as well" in proc.stderr
            assert consistent(nsbuild, state_dir) == []
        else:
            assert mountinfo() == before, f"a mount was left after a fault at persist step {k + 1}"
            assert sorted(os.listdir(state_dir)) == files, f"files were left after a fault at persist step {k + 1}"
            assert [r["name"] for r in consistent(nsbuild, state_dir)] == (["tiny"] if replace else [])
            tally("faults injected into persist steps and survived, through the CLI")
            continue
        tally("faults injected into persist steps and survived, through the CLI")
        nsbuild("build", str(recipe), "--replace")  # back as it was, for the next fault
        before, files = mountinfo(), sorted(os.listdir(state_dir))
    nsbuild("rm", "tiny")
    assert sorted(p.name for p in state_dir.iterdir() if not p.name.startswith(".")) == []
