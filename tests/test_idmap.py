"""Idmapped binds ([[mount]] idmap): the recipe's syntax and errors, the plan's steps, and real builds
in which a host directory owned by one user appears owned by the sandbox's [run] user.

The planning and validation tests need no root. The mounting tests run under every strategy the
kernel has (test_kernel_vm.py runs this file in the 7.2 guest for the other two).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from builder.errors import BuildError, RecipeError
from builder.kernel.features import STRATEGIES, probe, supported
from builder.plan import executor, render
from builder.plan.planner import make_plan
from builder.plan.steps import Plan
from builder.recipe import idmap
from builder.recipe.load import load

from conftest import IS_ROOT, mountinfo, needs_root, open_fds, tally
from test_plan import GOLDEN, K72
from test_recipe import problems

OWNER = 1234  # the host user who owns the project directory
HEAD = '[sandbox]\nname = "idm"\n'
# enough of the host to run stat, touch and sh in the sandbox
BASE = ('[[path]]\npath = "/bin"\nsymlink = "usr/bin"\n[[path]]\npath = "/lib"\nsymlink = "usr/lib"\n'
        '[[path]]\npath = "/lib64"\nsymlink = "usr/lib64"\n'
        '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n[[mount]]\ntarget = "/proc"\ntype = "proc"\n')


def bind(source: str, mapping: str = "true", extra: str = "") -> str:
    value = mapping if mapping in ("true", "false") else f'"{mapping}"'
    return f'[[mount]]\ntarget = "/work"\ntype = "bind"\nsource = "{source}"\nrw = true\nidmap = {value}\n{extra}'


# -- the mapping syntax: mount(8)'s X-mount.idmap, FROM (the filesystem's id) : TO (the sandbox's) --------

@pytest.mark.parametrize("text,uids,gids", [
    ("u:1000:0:1 g:1000:0:1", b"1000 0 1\n", b"1000 0 1\n"),
    ("1000:0:1", b"1000 0 1\n", b"1000 0 1\n"),                   # no type: uids and gids
    ("b:5000:1000:2 u:0:10:1", b"5000 1000 2\n0 10 1\n", b"5000 1000 2\n"),
    ("  u:1:2:3\tg:4:5:6  ", b"1 2 3\n", b"4 5 6\n"),             # any blanks between entries
    ("0:0:4294967295", b"0 0 4294967295\n", b"0 0 4294967295\n"),  # every id there is
])
def test_mapping_lines_are_written_as_given(text: str, uids: bytes, gids: bytes) -> None:
    """The fields go to /proc/PID/uid_map in the order given, as libmount writes them."""
    u, g = idmap.parse(text)
    assert (idmap.text(u), idmap.text(g)) == (uids, gids)


CASES = [
    (bind("/tmp", "x"), "'x' is not [u:|g:|b:]FROM:TO:COUNT"),
    (bind("/tmp", ""), "is empty"),
    (bind("/tmp", "u:1:2"), "is not [u:|g:|b:]FROM:TO:COUNT"),
    (bind("/tmp", "u:-1:2:3 g:1:2:3"), "is not [u:|g:|b:]FROM:TO:COUNT"),
    (bind("/tmp", "1:2:0"), "maps no ids (COUNT is 0)"),
    (bind("/tmp", "4294967295:0:1"), "reaches beyond the largest id, 4294967294"),
    (bind("/tmp", "0:4294967290:10"), "reaches beyond the largest id"),
    (bind("/tmp", "0:0:4294967296"), "reaches beyond the largest id"),
    (bind("/tmp", "u:0:0:10 u:5:100:1 g:0:0:1"), "uid ranges 0-9 and 5-5 overlap on the FROM side"),
    (bind("/tmp", "g:0:0:10 g:100:9:1 u:0:0:1"), "gid ranges 0-9 and 9-9 overlap on the TO side"),
    (bind("/tmp", "u:1000:0:1"), "maps no gids: give g:FROM:TO:COUNT"),
    (bind("/tmp", "g:1000:0:1"), "maps no uids: give u:FROM:TO:COUNT"),
    (bind("/tmp", " ".join(f"{i}:{i}:1" for i in range(0, 682, 2))), "entries; the kernel takes at most 340"),
    (bind("/tmp").replace("idmap = true", "idmap = 3"), "must be true, false or a mapping string"),
    ('[[mount]]\ntarget = "/t"\ntype = "tmpfs"\nidmap = true\n', 'only applies to type = "bind"'),
    ('[[mount]]\ntarget = "/t"\ntype = "proc"\nidmap = "0:0:1"\n', 'only applies to type = "bind"'),
    (bind("/tmp") + '[run]\nuser = "dev"\n', "[run] user 'dev' is looked up in the sandbox's /etc/passwd only"),
    (bind("/tmp") + '[run]\nuser = "1000"\n', "recipe writes no /etc/passwd"),
    (bind("/tmp") + '[[path]]\npath = "/etc/passwd"\ncontent = "root:x:0:0::/root:/bin/sh\\n"\n'
     '[run]\nuser = "dev"\n', "[run] user 'dev' is not in the /etc/passwd that the recipe writes"),
]


@pytest.mark.parametrize("body,fragment", CASES, ids=[c[1][:40] for c in CASES])
def test_bad_idmap_names_file_and_key(tmp_path: Path, body: str, fragment: str) -> None:
    found = problems(tmp_path, body)  # RecipeError, exit code 2, every line "FILE: KEY: ..."
    assert any(p.startswith("mount[0].idmap: ") and fragment in p for p in found), found


def test_cli_says_it_once_with_exit_2_and_no_traceback(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text(HEAD + bind("/tmp", "u:0:0:10 u:5:100:1 g:0:0:1"))
    for command in ("plan", "build"):
        proc = nsbuild(command, str(recipe), check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"nsbuild: error: {recipe}: mount[0].idmap: the uid ranges 0-9 and 5-5 "
                                      "overlap on the FROM side"), proc.stderr
        assert "X-mount.idmap" in proc.stderr and "Traceback" not in proc.stderr
    assert not state_dir.exists()


@pytest.mark.parametrize("user,passwd,ids", [
    ("root", None, (0, 0)),
    ("1000:100", None, (1000, 100)),
    ("dev", b"root:x:0:0::/root:/bin/sh\ndev:x:1000:1001::/home/dev:/bin/sh\n", (1000, 1001)),
    ("1000", b"dev:x:1000:1001::/home/dev:/bin/sh\n", (1000, 1001)),  # the group from passwd, as `run` takes it
    ("1000", b"root:x:0:0::/root:/bin/sh\n", (1000, 1000)),           # not there: its own number, as `run` does
    ("root", b"dev:x:1000:1001::/home/dev:/bin/sh\n", (0, 0)),
])
def test_run_user_ids_resolve_as_run_resolves_them(user: str, passwd: bytes | None, ids: tuple[int, int]) -> None:
    assert idmap.run_ids(user, passwd) == ids


def test_idmap_true_maps_the_source_owner_to_the_run_user(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.chown(src, OWNER, OWNER + 1) if IS_ROOT else None
    owner = (OWNER, OWNER + 1) if IS_ROOT else (os.getuid(), os.getgid())
    recipe = tmp_path / "r.toml"
    recipe.write_text(HEAD + bind(str(src)) + '[run]\nuser = "1000:100"\n')
    plan = make_plan(load(str(recipe)), K72, "unshare")
    writes = [s.args[1] for s in plan.steps if s.call == "write"]
    assert writes == [f"{owner[0]} 1000 1\n".encode(), f"{owner[1]} 100 1\n".encode()]


def test_a_user_from_an_image_config_is_checked_when_planning(tmp_path: Path) -> None:
    """An OCI image's User may name the run user only once its layer is resolved: the planner then
    reports the same problem the loader would have."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(HEAD + bind("/tmp"))
    r = load(str(recipe))
    r = dataclasses.replace(r, run=dataclasses.replace(r.run, user="node"))
    with pytest.raises(RecipeError) as info:
        make_plan(r, K72, "unshare")
    assert info.value.exit_code == 2 and [p.key for p in info.value.problems] == ["mount[0].idmap"]


# -- the plan ------------------------------------------------------------------------------------------

def idmap_plan(strategy: str, mapping: str = "true") -> Plan:
    return make_plan(load_text(HEAD + BASE + bind("/tmp", mapping)), K72, strategy)


def load_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "idm.toml"
        path.write_text(text)
        return load(str(path))


NEW_CALLS = ["clone", "openat", "write", "openat", "write", "openat", "kill", "waitpid", "open_tree", "mount_setattr"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_plan_makes_the_user_namespace_step_by_step(strategy: str) -> None:
    """One step per syscall, on the host before the tree is entered, and the idmap is set where the
    bind's other attributes are, on the detached clone."""
    plan = idmap_plan(strategy)
    steps = [s for s in plan.steps if s.origin == "mount[2]"]
    assert [s.call for s in steps][:len(NEW_CALLS)] == NEW_CALLS
    assert all(s.where == "host" for s in steps[:len(NEW_CALLS)])
    lines = [render.strace_line(s) for s in steps[:len(NEW_CALLS)]]
    assert lines[0] == "clone(CLONE_NEWUSER) = #userns0"
    assert lines[1] == 'openat(AT_FDCWD, "/proc/#userns0/uid_map", O_WRONLY|O_CLOEXEC, 0) = %uid_map0'
    assert lines[2] == 'write(%uid_map0, "0 0 1\\n" (6 bytes))'  # /tmp is root's: 0 appears as root
    assert lines[5] == 'openat(AT_FDCWD, "/proc/#userns0/ns/user", O_RDONLY|O_CLOEXEC, 0) = %userns0'
    assert lines[6:8] == ["kill(#userns0, SIGKILL)", "waitpid(#userns0, 0)"]
    assert lines[9].endswith("attr_set=MOUNT_ATTR_NOSUID|MOUNT_ATTR_NODEV|MOUNT_ATTR_IDMAP, attr_clr=0, "
                             "propagation=MS_PRIVATE, userns_fd=%userns0})")
    data = render.as_dict(plan)
    by_call = {s["call"]: s for s in data["steps"] if s["origin"] == "mount[2]"}
    assert by_call["clone"]["out"] == "#userns0"
    assert by_call["kill"]["args"][0] == {"value": "#userns0"}
    assert data["steps"][plan.steps.index(steps[1])]["args"][1] == {"proc_path": "#userns0/uid_map"}
    assert by_call["mount_setattr"]["args"][-1] == {"fd": "%userns0"}
    from rich.console import Console

    console = Console(record=True, width=400)
    console.print(render.table(plan))
    assert "kill(#userns0, SIGKILL)" in console.export_text()


def test_binds_with_one_mapping_share_one_user_namespace() -> None:
    second = '[[mount]]\ntarget = "/other"\ntype = "bind"\nsource = "/tmp"\nidmap = "0:0:1"\n'
    third = '[[mount]]\ntarget = "/third"\ntype = "bind"\nsource = "/tmp"\nidmap = "0:5:1"\n'
    plan = make_plan(load_text(HEAD + BASE + bind("/tmp") + second + third), K72, "unshare")
    assert [s.out for s in plan.steps if s.call == "clone"] == ["#userns0", "#userns1"]
    usernses = [s.args[6] for s in plan.steps if s.call == "mount_setattr" and len(s.args) > 6]
    assert usernses == ["%userns0", "%userns0", "%userns1"]  # /tmp is root's: true is 0:0:1 too


def test_plan_round_trips_through_the_plan_cache_format() -> None:
    import marshal

    plan = idmap_plan("unshare", "u:1000:0:1 g:1000:0:1 2000:1:2")
    assert Plan.load(marshal.loads(marshal.dumps(plan.dump()))) == plan


def test_binds_without_idmap_plan_as_before() -> None:
    plan = idmap_plan("unshare", "false")
    assert not any(s.call in ("clone", "kill", "waitpid") for s in plan.steps)
    assert all(len(s.args) == 6 for s in plan.steps if s.call == "mount_setattr")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_golden_idmap_plan(strategy: str) -> None:
    """Regenerate with NSBUILD_UPDATE_GOLDEN=1 after an intended change, and review the diff."""
    text = render.strace(idmap_plan(strategy, "u:1234:0:1 g:1234:0:1"))
    golden = GOLDEN / f"idmap.{strategy}.{K72.release}.strace"
    if os.environ.get("NSBUILD_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


# -- real builds ---------------------------------------------------------------------------------------

FEATURES = probe()


def strategies() -> list:
    return [pytest.param(s, marks=pytest.mark.skipif(not supported(FEATURES, s),
                                                     reason=f"kernel {FEATURES.release} lacks {s}"))
            for s in STRATEGIES]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory of user 1234 with a file of theirs and one of another user's."""
    src = tmp_path / "project"
    src.mkdir()
    (src / "mine").write_text("1234's\n")
    (src / "theirs").write_text("4321's\n")
    if IS_ROOT:
        for path, uid in ((src, OWNER), (src / "mine", OWNER), (src / "theirs", 4321)):
            os.chown(path, uid, uid)
    return src


def host_view(path: Path) -> list[tuple[str, int, int, int]]:
    return sorted((p.name, p.stat().st_uid, p.stat().st_gid, p.stat().st_mode) for p in [path, *path.iterdir()])


def _all_children() -> set[str]:
    found: set[str] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            found.update(f.read().split())
    return found


_BEFORE: set[str] = set()


@pytest.fixture(autouse=True)
def _children_before() -> None:
    """The children this process had before the test (session fixtures' servers, e.g. docker-registry)."""
    _BEFORE.clear()
    _BEFORE.update(_all_children())


def children() -> list[str]:
    """This process's child processes that the test left (a clone step's child must never be left)."""
    return sorted(_all_children() - _BEFORE)


@needs_root
@pytest.mark.parametrize("strategy", strategies())
def test_project_appears_owned_by_root_and_new_files_by_its_owner(nsbuild, state_dir: Path, tmp_path: Path,
                                                                  project: Path, strategy: str) -> None:
    recipe = tmp_path / "idm.toml"
    recipe.write_text(HEAD + BASE + bind(str(project)))
    before = host_view(project)
    nsbuild("build", str(recipe), "-s", strategy)
    assert nsbuild("run", "idm", "--", "stat", "-c", "%u:%g", "/work", "/work/mine").stdout == "0:0\n0:0\n"
    # nobody else is mapped: another user's file appears as the overflow id
    assert nsbuild("run", "idm", "--", "stat", "-c", "%u:%g", "/work/theirs").stdout == "65534:65534\n"
    assert host_view(project) == before  # the host's view of the source is unchanged by the mount
    nsbuild("run", "idm", "--", "sh", "-c", "echo new > /work/new && mkdir /work/dir")
    assert [(p.name, p.stat().st_uid, p.stat().st_gid) for p in (project / "new", project / "dir")] == [
        ("new", OWNER, OWNER), ("dir", OWNER, OWNER)]
    assert nsbuild("run", "idm", "--", "stat", "-c", "%u:%g", "/work/new").stdout == "0:0\n"
    nsbuild("rm", "idm")
    assert children() == []
    tally(f"idmapped binds built, entered and written through, {strategy}")


@needs_root
@pytest.mark.parametrize("strategy", strategies())
def test_explicit_mapping_for_a_run_user(nsbuild, state_dir: Path, tmp_path: Path, project: Path,
                                         strategy: str) -> None:
    """u:1234:1000:1 g:1234:1000:1 with [run] user dev (1000:1000 in the recipe's /etc/passwd): the
    contained run as dev owns the project and writes into it as the host's 1234."""
    recipe = tmp_path / "idm.toml"
    recipe.write_text(HEAD + BASE + bind(str(project), f"u:{OWNER}:1000:1 g:{OWNER}:1000:1")
                      + '[[path]]\npath = "/etc/passwd"\ncontent = "root:x:0:0::/root:/bin/sh\\n'
                        'dev:x:1000:1000::/work:/bin/sh\\n"\n[run]\nuser = "dev"\n')
    nsbuild("build", str(recipe), "-s", strategy)
    out = nsbuild("run", "idm", "--", "sh", "-c", "id -u; stat -c %u:%g /work; touch /work/by-dev").stdout
    assert out == "1000\n1000:1000\n"
    assert (project / "by-dev").stat().st_uid == OWNER and (project / "by-dev").stat().st_gid == OWNER
    nsbuild("rm", "idm")


@needs_root
@pytest.mark.parametrize("strategy", strategies())
def test_idmap_true_follows_the_run_user(nsbuild, state_dir: Path, tmp_path: Path, project: Path,
                                         strategy: str) -> None:
    recipe = tmp_path / "idm.toml"
    recipe.write_text(HEAD + BASE + bind(str(project)) + '[run]\nuser = "1000:1001"\n')
    nsbuild("build", str(recipe), "-s", strategy)
    assert nsbuild("run", "idm", "--", "stat", "-c", "%u:%g", "/work").stdout == "1000:1001\n"
    nsbuild("run", "idm", "--", "touch", "/work/as-1000")
    assert (project / "as-1000").stat().st_uid == OWNER
    nsbuild("rm", "idm")


@needs_root
def test_a_filesystem_that_cannot_be_idmapped_is_one_clear_error(nsbuild, state_dir: Path,
                                                                 tmp_path: Path) -> None:
    """ramfs has no idmapped mounts (no FS_ALLOW_IDMAP): mount_setattr says EINVAL, at run time."""
    from builder.kernel import syscalls as sc

    ram = tmp_path / "ram"
    ram.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "nsbuild-test", str(ram)], check=True)
    try:
        recipe = tmp_path / "idm.toml"
        recipe.write_text(HEAD + BASE + bind(str(ram)))
        before = mountinfo()
        proc = nsbuild("build", str(recipe), check=False)
        assert proc.returncode == 1, proc.stderr
        first = proc.stderr.splitlines()[0]
        assert first.startswith("nsbuild: error: mount[2] (step ") and "mount_setattr(%mnt:/work" in first
        assert "MOUNT_ATTR_IDMAP" in first and first.endswith("failed: EINVAL (Invalid argument)")
        assert "hint: the filesystem of this bind's source" in proc.stderr and "cannot be idmapped" in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 2
        assert not state_dir.exists() and mountinfo() == before and children() == []
    finally:
        sc.umount2(str(ram), 0)


@needs_root
@pytest.mark.parametrize("strategy", strategies())
def test_fault_at_every_step_leaves_nothing(tmp_path: Path, project: Path, monkeypatch, strategy: str) -> None:
    """NSBUILD_TEST_FAULT at each step, the new ones among them: no mount, fd, child process or
    change to the project directory is left."""
    recipe = tmp_path / "idm.toml"
    recipe.write_text(HEAD + BASE + bind(str(project)))
    plan = make_plan(load(str(recipe)), FEATURES, strategy)
    new = [k for k, s in enumerate(plan.steps) if s.call in ("clone", "kill", "waitpid")]
    assert len(new) == 3
    before, fds, view = mountinfo(), open_fds(), host_view(project)
    faults = 0
    for k, step in enumerate(plan.steps):
        if step.call == "fork":
            continue
        monkeypatch.setenv("NSBUILD_TEST_FAULT", f"{k}:EIO")
        with pytest.raises(BuildError) as info:
            executor.execute(plan)
        assert info.value.step == k and step.origin in str(info.value)  # type: ignore[attr-defined]
        assert mountinfo() == before, f"a mount was left after a fault at step {k}"
        assert open_fds() == fds, f"an fd leaked after a fault at step {k}"
        assert children() == [], f"a child process was left after a fault at step {k} ({step.call})"
        assert host_view(project) == view
        faults += 1
    monkeypatch.delenv("NSBUILD_TEST_FAULT")
    os.close(executor.execute(plan))
    assert mountinfo() == before and open_fds() == fds and children() == []
    tally(f"faults injected and survived, idmapped bind, {strategy}", faults)


@needs_root
def test_a_child_that_cannot_make_its_namespace_is_reported(tmp_path: Path) -> None:
    """A chrooted process may not unshare CLONE_NEWUSER (EPERM): the clone step's child says so, and
    is reaped. Run in a forked process, chrooted into tmp_path."""
    from builder.kernel import syscalls as sc, userns

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports over the pipe
        try:
            os.close(r)
            os.chroot(str(tmp_path))
            try:
                userns.spawn(sc.FLAGS["CLONE_NEWUSER"])
                os.write(w, b"spawned")
            except sc.SyscallError as e:
                try:
                    os.waitpid(-1, os.WNOHANG)
                    left = "a child left"
                except ChildProcessError:  # spawn reaped it
                    left = "reaped"
                os.write(w, f"{e.call} {e.errname} {left}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.read().decode()
    os.waitpid(pid, 0)
    assert said == "clone EPERM reaped"


@needs_root
def test_a_cached_plan_is_not_reused_once_the_source_has_another_owner(nsbuild, state_dir: Path, tmp_path: Path,
                                                                      project: Path) -> None:
    """idmap = true puts the owner into the plan: the plan cache keys on the owner of bind sources."""
    recipe = tmp_path / "idm.toml"
    recipe.write_text(HEAD + BASE + bind(str(project)))
    for owner in (OWNER, OWNER, 4321):  # the second build runs the cached plan, the third may not
        os.chown(project, owner, owner)
        nsbuild("build", str(recipe))
        assert nsbuild("run", "idm", "--", "stat", "-c", "%u:%g", "/work").stdout == "0:0\n"
        nsbuild("rm", "idm")
    assert len(list((state_dir / ".plans").iterdir())) == 1
