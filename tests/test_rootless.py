"""Rootless nsbuild, for real: users made with useradd (one with subordinate ids, one without) build,
run, list and remove sandboxes through their holder (builder/sandbox/holder.py), and get the tree root
gets; the holder's life (one for two concurrent first builds, stale after a kill, recovery, gone after
the last rm); another user can neither list, enter nor remove them; the escape attempts of
tests/attack.py fail from a rootless contained run too. Users, holders and files are removed."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from conftest import RECIPES, _umount_all_under, needs_root, nsbuild_cmd, tally
from builder.kernel.features import pick_strategy, probe
from registries import fault_proxy, images, registry  # noqa: F401
from rootless_users import Interpreter, RootlessUser, make_user, remove_user
from test_e2e import strategies

pytestmark = needs_root
AUTO = pick_strategy(probe())  # what a rootless build picks: unshare on 6.x, fsmount-namespace on 7.1+
ATTACK = Path(__file__).with_name("attack.py")
DEV_NODES = {f"/dev/{n}" for n in ("null", "zero", "full", "random", "urandom", "tty")}


@pytest.fixture(scope="module", autouse=True)  # before each test's look at the mount table
def python():
    interpreter = Interpreter()
    yield interpreter.python
    interpreter.close()


def _user(prefix: str, subids: bool, python: str):
    u = make_user(prefix, subids, python)
    try:
        yield u
    finally:
        left = u.wait_no_processes(2.0)
        for pid in left:  # a failed test's holder (or victim): this user's processes are this test's own
            os.kill(pid, signal.SIGKILL)
        u.wait_no_processes()
        shutil.rmtree(u.state, ignore_errors=True)
        remove_user(u.name, u.home)
        assert not left, f"processes of {u.name} left: {left}"


@pytest.fixture(scope="module")
def ranged(python):
    if not shutil.which("newuidmap") or not shutil.which("newgidmap"):
        pytest.fail("newuidmap/newgidmap are missing: apt-get install uidmap (README set-up 2)")
    yield from _user("nsbrr", True, python)


@pytest.fixture(scope="module")
def single(python):
    yield from _user("nsbrs", False, python)


@pytest.fixture(params=["ranged", "single"])
def user(request) -> RootlessUser:
    u = request.getfixturevalue(request.param)
    yield u
    u.run("rm", "--all")  # also what a test left
    assert u.wait_no_processes() == [], "the holder outlived the user's last sandbox"
    assert not u.state.exists(), "rm --all left the state directory"


def in_sandbox(u: RootlessUser, name: str, command: str, state: Path | None = None) -> str:
    """`command` in the sandbox's mount namespace, entered the way the README says (util-linux)."""
    state = state or u.state
    proc = u.sh(f'nsenter -t "$(cat {state}/.holder.pid)" -U --preserve-credentials -m -p nsenter --mount={state}/{name}.mnt '
                f'/bin/sh -c {_quote(command)}')
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


RUNS = {  # recipe -> (what `nsbuild run NAME` prints, from the recipe's [run] command)
    "layers": "hello from the tools layer; version: from config\n",
    "archive": 'NAME="layered example"\nLAYER=base\n',
    "oci": "from layer 2\nc\n",
}


@pytest.mark.parametrize("recipe", sorted(RUNS))
def test_build_run_ls_rm(user: RootlessUser, recipe: str) -> None:
    """Directory, archive and OCI-layout layers, without root; the holder goes with the last sandbox."""
    built = json.loads(user.run("build", "--json", f"recipes/{recipe}.toml").stdout)
    assert built["nsfs"] == str(user.state / f"{recipe}.mnt") and built["strategy"] == AUTO
    assert user.run("run", recipe).stdout == RUNS[recipe]
    listed = json.loads(user.run("ls", "--json").stdout)
    assert [(s["name"], s["status"]) for s in listed] == [(recipe, "ok")]
    holder = user.holder_pid()
    assert holder and user.holders() == [holder]
    mapping = Path(f"/proc/{holder}/uid_map").read_text().split()
    assert in_sandbox(user, recipe, "ls /etc")  # the README's util-linux way in
    assert mapping[:3] == ["0", str(user.uid), "1"] and (len(mapping) > 3) == (user.name.startswith("nsbrr"))
    assert user.run("rm", recipe).stdout == f"{recipe}: removed\n"
    assert user.wait_no_processes() == [] and user.holder_pid() is None
    assert json.loads(user.run("ls", "--json").stdout) == []


def test_default_recipe_and_every_command(user: RootlessUser) -> None:
    """`nsbuild build` (the embedded dev recipe) from a project directory, bound at /work, and every
    other command: plan, check, lock, gc, doctor, build --count, run RECIPE (ephemeral)."""
    project = user.home / "project"
    project.mkdir()
    shutil.chown(project, user.name, user.name)
    user.run("build", "-q", cwd=project)
    out = user.run("run", "dev", "--", "/bin/sh", "-c", "id -u; echo hi > /work/made; ls /work", cwd=project).stdout
    assert out == "0\nmade\n" and (project / "made").stat().st_uid == user.uid
    assert "userxattr" in user.run("plan", "recipes/layers.toml").stdout  # what the build does, rootless
    user.run("check", "recipes/archive.toml")
    user.run("lock", "recipes/archive.toml")
    assert "wrote" in user.run("lock", "recipes/oci.toml").stdout
    batch = json.loads(user.run("build", "--json", "--count", "3", "--name", "many", "recipes/layers.toml").stdout)
    assert batch["names"] == ["many-0", "many-1", "many-2"]
    assert user.run("run", "recipes/archive.toml").stdout == RUNS["archive"]
    doctor = json.loads(user.run("doctor", "--json").stdout)["user_namespace"]
    assert doctor["mapping"] == ("range" if user.name.startswith("nsbrr") else "single")
    assert doctor["holder"] == user.holder_pid()
    if doctor["mapping"] == "single":
        assert "usermod --add-subuids" in doctor["hint"]
    user.run("rm", "dev", "many-0", "many-1", "many-2")
    assert user.wait_no_processes() == []
    assert "removed" in user.run("gc").stdout  # the archive's and the layout's store entries
    assert user.wait_no_processes() == []  # gc's holder went too: no sandbox left


def test_export_takes_a_rootless_sandboxs_changes(ranged: RootlessUser) -> None:
    """The tmpfs upper is pinned in the holder's mount namespace, beside the namespace; export joins it."""
    ranged.run("build", "-q", "recipes/layers.toml")
    ranged.run("run", "layers", "--", "/bin/sh", "-c", "echo made by $(id -u) > /made")
    ranged.run("export", "-q", "layers", f"oci:{ranged.home / 'out'}:v1")
    back = ranged.home / "back.toml"
    back.write_text(f'[sandbox]\nname = "back"\n[[layer]]\noci = "oci:{ranged.home / "out"}:v1"\n'
                    '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n'
                    '[run]\ncommand = ["/bin/sh", "-c", "cat /made /etc/hostname"]\n')
    ranged.run("build", "-q", str(back))
    assert ranged.run("run", "back").stdout == "made by 0\nlayers\n"
    ranged.run("rm", "layers", "back")
    assert ranged.wait_no_processes() == []


def test_a_tree_with_a_proc_directory_and_no_proc_mount_runs(single: RootlessUser) -> None:
    """Images carry an empty /proc. Rootless, the kernel mounts no new proc where none is visible
    (mount_too_revealing), so the run leaves that directory as it is, empty, instead of failing."""
    lower = single.home / "lower"
    (lower / "proc").mkdir(parents=True)
    shutil.chown(lower, single.name, single.name)
    shutil.chown(lower / "proc", single.name, single.name)
    recipe = single.home / "p.toml"
    recipe.write_text('[sandbox]\nname = "p"\n[[layer]]\npath = "lower"\n[[path]]\npath = "/bin"\nsymlink = "usr/bin"\n'
                      '[[path]]\npath = "/lib64"\nsymlink = "usr/lib64"\n[[path]]\npath = "/lib"\nsymlink = "usr/lib"\n'
                      '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n')
    single.run("build", "-q", str(recipe))
    assert single.run("run", "p", "--", "/bin/sh", "-c", "ls -A /proc | wc -l").stdout == "0\n"
    single.run("rm", "p")
    assert single.wait_no_processes() == []


def test_a_registry_image_pulls_runs_and_builds_warm_after_one_head(ranged: RootlessUser, fault_proxy) -> None:
    """podman's rootless pull, nsbuild's way: the pull, the unpack into the user's store and the warm
    build's tag check (curl, spawned in the holder's namespaces) all work without root."""
    proxy = fault_proxy("pass")
    recipe = ranged.home / "pulled.toml"
    recipe.write_text((RECIPES / "oci.toml").read_text().replace('oci = "oci/layout"', f'oci = "{proxy.ref("demo:gzip")}"')
                      .replace('ref = "demo"', ""))
    ranged.run("build", "-q", str(recipe))
    assert ranged.run("run", "oci").stdout == "from layer 2\nc\n"
    ranged.run("build", "-q", "--replace", str(recipe))  # planned anew (the first build pinned the template)
    n = len(proxy.requests())
    ranged.run("build", "-q", "--replace", str(recipe))
    assert proxy.requests()[n:] == ["HEAD /v2/demo/manifests/gzip - -> 200"]  # the cached plan, after one HEAD
    assert ranged.run("run", "oci").stdout == "from layer 2\nc\n"
    ranged.run("rm", "oci")
    assert ranged.wait_no_processes() == []


def test_image_layers_are_refused(ranged: RootlessUser) -> None:
    recipe = ranged.home / "img.toml"
    recipe.write_text('[sandbox]\nname = "img"\n[[layer]]\nimage = "recipes/layers.toml"\ntype = "erofs"\n')
    proc = ranged.run("build", str(recipe), check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"nsbuild: error: {recipe}: layer[0]: an erofs image cannot be mounted")
    assert "unpack the image" in proc.stderr and "or build as root" in proc.stderr
    ranged.run("rm", "--all")
    assert ranged.wait_no_processes() == []


def test_an_idmapped_bind_is_refused(single: RootlessUser) -> None:
    """The kernel refuses a user MOUNT_ATTR_IDMAP on a host filesystem: one clear error before anything runs."""
    recipe = single.home / "idmap.toml"
    recipe.write_text('[sandbox]\nname = "idm"\n[[mount]]\ntarget = "/work"\ntype = "bind"\n'
                      f'source = "{single.home}"\nidmap = true\n')
    proc = single.run("build", str(recipe), check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"nsbuild: error: {recipe}: mount[0].idmap: an idmapped bind needs privilege")
    assert "drop idmap" in proc.stderr and "Traceback" not in proc.stderr
    single.run("rm", "--all")
    assert single.wait_no_processes() == []


def test_xdg_runtime_dir_and_the_fallback_check(single: RootlessUser) -> None:
    runtime = single.home / "run-user"
    runtime.mkdir(mode=0o700)
    shutil.chown(runtime, single.name, single.name)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    built = json.loads(single.run("build", "--json", "recipes/layers.toml", env=env).stdout)
    assert built["nsfs"] == f"{runtime}/nsbuild/layers.mnt" and not single.state.exists()
    assert single.run("run", "layers", env=env).stdout == RUNS["layers"]
    in_sandbox(single, "layers", "test -f /opt/app/version", state=runtime / "nsbuild")
    single.run("rm", "--all", env=env)
    assert single.wait_no_processes() == [] and not (runtime / "nsbuild").exists()
    # without XDG_RUNTIME_DIR: /tmp/nsbuild-UID, refused unless it is the user's own and 0700
    single.state.mkdir(mode=0o755)
    shutil.chown(single.state, single.name, single.name)
    os.chmod(single.state, 0o755)
    try:
        proc = single.run("build", "recipes/layers.toml", check=False)
        assert proc.returncode == 1 and "is not a private directory of yours (mode 0755)" in proc.stderr, proc.stderr
        os.chmod(single.state, 0o700)
        shutil.chown(single.state, "root", "root")
        proc = single.run("ls", check=False)
        assert proc.returncode == 1 and "(owned by uid 0)" in proc.stderr, proc.stderr
    finally:
        shutil.rmtree(single.state)
    assert single.wait_no_processes() == []


def _shape(u: RootlessUser | None, name: str, state: Path) -> tuple[set[tuple[str, str]], list[str]]:
    """findmnt's targets and types (a tree without /proc: none), and the root filesystem's file listing
    (path, type, mode, owner)."""
    mounts = "findmnt -rno TARGET,FSTYPE"
    files = "find / -xdev -printf '%p %y %m %U:%G\\n' | sort"
    if u is None:
        run = lambda c: subprocess.run(["nsenter", f"--mount={state}/{name}.mnt", "/bin/sh", "-c", c],  # noqa: E731
                                       capture_output=True, text=True, check=True).stdout
    else:
        run = lambda c: in_sandbox(u, name, c, state)  # noqa: E731
    table = {tuple(line.split()) for line in run(mounts).splitlines()} if name != "archive" else set()
    return table, run(files).splitlines()


@pytest.mark.parametrize("recipe", ["layers", "archive"])
def test_same_tree_as_root(user: RootlessUser, tmp_path: Path, recipe: str) -> None:
    """The same recipe gives the same tree rootless: mounts and files match root's, except the device
    nodes (bound from the host, not made: a user namespace may not mknod), and owners unless the
    mapping is a range and the files are nsbuild's (the content store's; host directories' owners
    are not mapped)."""
    state = tmp_path / "state"
    env = dict(os.environ, NSBUILD_STATE_DIR=str(state), NSBUILD_STORE=str(tmp_path / "store"))
    subprocess.run(nsbuild_cmd() + ["build", "-q", "--strategy", "unshare", str(user.home / f"recipes/{recipe}.toml")],
                   env=env, check=True, cwd=tmp_path)
    try:
        root_mounts, root_files = _shape(None, recipe, state)
    finally:
        _umount_all_under(state)
    user.run("build", "-q", f"recipes/{recipe}.toml")
    mounts, files = _shape(user, recipe, user.state)
    assert {m for m in mounts if m[0] not in DEV_NODES} == root_mounts
    assert {m for m in mounts if m[0] in DEV_NODES} == {(n, "devtmpfs") for n in DEV_NODES} & {m[0:2] for m in mounts}
    strip = lambda rows: [r.rsplit(" ", 1)[0] for r in rows]  # noqa: E731
    assert strip(files) == strip(root_files)
    if recipe == "archive" and user.name.startswith("nsbrr"):
        # owners too: unpacked in the user namespace, with the range mapped (a mount point shows the
        # mounted host directory, whose owner, host root, no user namespace of the user maps)
        targets = {m["target"] for m in tomllib.loads((RECIPES / "archive.toml").read_text())["mount"]}
        keep = lambda rows: [r for r in rows if r.split(" ", 1)[0] not in targets]  # noqa: E731
        assert keep(files) == keep(root_files)
    tally("rootless trees compared with root's", 1)


def test_holder_lifecycle(ranged: RootlessUser) -> None:
    """Two concurrent first builds start one holder; killed, it leaves stale sandboxes that the next
    build recovers; it stops with the last sandbox."""
    u = ranged
    procs = [subprocess.Popen(u.popen_args("build", "-q", f"recipes/{r}.toml"), cwd=u.home,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ("layers", "archive")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    holder = u.holder_pid()
    assert u.holders() == [holder]
    os.kill(holder, signal.SIGKILL)  # started by this test's builds: stopped by its pid
    deadline = time.monotonic() + 10
    while holder in u.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    listed = json.loads(u.run("ls", "--json").stdout)
    assert [(s["name"], s["status"]) for s in listed] == [("archive", "stale"), ("layers", "stale")]
    proc = u.run("run", "layers", check=False)
    assert proc.returncode == 1 and "has no mount namespace any more" in proc.stderr, proc.stderr
    proc = u.run("build", "-q", "recipes/layers.toml")
    assert "recovered: removed sandbox archive" in proc.stderr and "recovered: removed sandbox layers" in proc.stderr
    assert u.holders() == [u.holder_pid()] != [holder]
    assert u.run("run", "layers").stdout == RUNS["layers"]
    u.run("rm", "layers")
    assert u.wait_no_processes() == [] and u.holder_pid() is None
    u.run("rm", "--all")


def test_another_user_can_neither_list_enter_nor_remove(ranged: RootlessUser, single: RootlessUser) -> None:
    ranged.run("build", "-q", "recipes/layers.toml")
    theirs = ["--state-dir", str(ranged.state)]
    for args in (["ls", *theirs], ["run", *theirs, "layers"], ["rm", *theirs, "layers"],
                 ["build", *theirs, "recipes/layers.toml"]):
        proc = single.run(*args, check=False)
        assert proc.returncode == 1 and "cannot use the state directory" in proc.stderr, (args, proc.stderr)
    pid = ranged.holder_pid()
    proc = single.sh(f"nsenter -t {pid} -U -m /bin/true")
    assert proc.returncode != 0 and "Permission denied" in proc.stderr, proc.stderr
    proc = single.sh(f"kill -9 {pid}")
    assert proc.returncode != 0
    assert [(s["name"], s["status"]) for s in json.loads(ranged.run("ls", "--json").stdout)] == [("layers", "ok")]
    ranged.run("rm", "--all")
    assert ranged.wait_no_processes() == [] and single.wait_no_processes() == []


def test_escape_attempts_fail_rootless(user: RootlessUser, tmp_path: Path) -> None:
    """tests/attack.py from inside a rootless contained run of the default recipe: every way out fails."""
    project = user.home / "escape"
    project.mkdir()
    shutil.copy(ATTACK, project / "attack.py")
    host = user.home / "host-dir"
    host.mkdir()
    secret = host / "secret"
    secret.write_text("host only\n")
    subprocess.run(["chown", "-R", f"{user.name}:", str(project), str(host)], check=True)
    victim = subprocess.Popen(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
                               "sleep", "120"])  # a host process the user could kill from outside
    try:
        sleeper = victim.pid
        user.run("build", "-q", cwd=project)
        proc = user.run("run", "dev", "--", "python3", "/work/attack.py", str(secret), str(sleeper), str(host),
                        cwd=project, check=False)
        assert proc.returncode == 0, proc.stderr
        results = json.loads(proc.stdout)
        assert victim.poll() is None, "the user's host process was killed"
    finally:
        victim.kill()
        victim.wait()
    visible = results.pop("visible_pids")
    # pid 1 is nsbuild, here under the name of the interpreter the user runs it with (python3 -m builder)
    assert int(visible.split()[0]) <= 3 and "(pid 1: python3" in visible, visible
    escaped = {k: v for k, v in results.items() if not v.startswith("blocked")}
    assert not escaped, escaped
    assert not list(host.glob("pwned")) and not (project / "mnt-attack").is_mount()
    user.run("rm", "dev")
    tally("escape attempts from a rootless contained run, all refused", len(results))


def test_fault_at_every_step_leaves_nothing(user: RootlessUser) -> None:
    """The fault sweep, rootless: a build whose plan step K fails (NSBUILD_TEST_FAULT) ends in one
    clear error, leaves no sandbox, and its holder goes again (the user has none)."""
    plan = json.loads(user.run("plan", "--json", "recipes/layers.toml").stdout)
    steps = [s["index"] for s in plan["steps"] if s["call"] != "fork"]  # a fork is no syscall of its own
    assert len(steps) > 20
    for k in steps:
        proc = user.run("build", "-q", "recipes/layers.toml", env={"NSBUILD_TEST_FAULT": f"{k}:EIO"}, check=False)
        assert proc.returncode == 1 and proc.stderr.count("nsbuild: error:") == 1, (k, proc.stderr)
        assert json.loads(user.run("ls", "--json").stdout) == [], k
        assert user.wait_no_processes() == [], f"step {k}: the holder stayed without a sandbox"
    tally("rootless builds failed at a plan step, nothing left", len(steps))


def test_racing_builds_of_one_name_one_wins(ranged: RootlessUser) -> None:
    procs = [subprocess.Popen(ranged.popen_args("build", "-q", "recipes/layers.toml"), cwd=ranged.home,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(code for code, _ in results) == [0, 1, 1], results
    assert all("exists already" in err for code, err in results if code), results
    assert ranged.run("run", "layers").stdout == RUNS["layers"]
    ranged.run("rm", "--all")
    assert ranged.wait_no_processes() == []


@pytest.mark.parametrize("strategy", strategies())
def test_every_strategy_rootless(ranged: RootlessUser, strategy: str) -> None:
    """Each strategy the kernel has builds rootless (on 7.x: fsmount-namespace and open-tree-namespace in
    the holder's user namespace), and gives the tree the unshare strategy gives."""
    u = ranged
    u.run("build", "-q", "--strategy", "unshare", "--name", "ref", "recipes/layers.toml")
    built = json.loads(u.run("build", "--json", "--strategy", strategy, "recipes/layers.toml").stdout)
    assert built["strategy"] == strategy
    assert u.run("run", "layers").stdout == RUNS["layers"]
    listing = "find / -xdev -printf '%p %y %m %U:%G\\n' | sort"
    assert in_sandbox(u, "layers", listing) == in_sandbox(u, "ref", listing)
    mounts = "findmnt -rno TARGET,FSTYPE | sort"
    assert in_sandbox(u, "layers", mounts) == in_sandbox(u, "ref", mounts)
    u.run("rm", "--all")
    assert u.wait_no_processes() == []
