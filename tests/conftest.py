"""Shared fixtures: a private state dir, and proof that the host is left as it was."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
IS_ROOT = os.geteuid() == 0
IN_VM = os.environ.get("KERNEL_VM") == "1"

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: mounts for real")


def _enter_scratch_namespace() -> int | None:
    """Run the whole session in a private copy of the host's mount namespace.

    Every test compares the mount table exactly, and other work on the machine (a user's docker, an
    automounter, another engineer's test run) mounts at any time. In a recursively private copy those
    mounts no longer propagate here, while every mount nsbuild makes still shows in this process's
    table: the check stays exact for nsbuild and blind to everything else. Test subprocesses (the CLI)
    inherit the namespace. Returns an fd of the host's namespace (for tests of this), None when not root."""
    if not IS_ROOT:
        return None  # unprivileged runs mount nothing: the host table is theirs to compare
    from builder.kernel import syscalls as sc
    from builder.sandbox.holder import lowest_id_cpu

    host = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    # Mount-namespace ids come from per-CPU ranges (KERNEL-NOTES.md), and the kernel refuses to pin
    # a namespace older than the one nsbuild runs in. Made on the CPU whose range is lowest, the
    # scratch namespace is older than any that nsbuild's builds (on any CPU) make after it.
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {lowest_id_cpu(cpus)})
    try:
        sc.unshare(sc.FLAGS["CLONE_NEWNS"])  # conftest loads before pytest starts any thread
    finally:
        os.sched_setaffinity(0, cpus)
    sc.mount_setattr(sc.AT_FDCWD, "/", sc.FLAGS["AT_RECURSIVE"], propagation=sc.FLAGS["MS_PRIVATE"])
    return host


HOST_NAMESPACE = _enter_scratch_namespace()

# What the reliability suites did (faults injected, kills, races, recipes fuzzed, hostile layers):
# printed at the end of the run, so CI's log carries the counts and not just "passed".
TALLY: Counter[str] = Counter()
TALLY_PREFIX = "nsbuild tally: "


def tally(what: str, count: int = 1) -> None:
    TALLY[what] += count


NOT_RUN: list[str] = []  # suites that could not run here (no kernel-vm): said last, in red


def pytest_terminal_summary(terminalreporter) -> None:
    for line in NOT_RUN:
        terminalreporter.section("NOT RUN", red=True, bold=True)
        terminalreporter.write_line(f"!!! {line.splitlines()[0]} !!!", red=True, bold=True)
    if TALLY:
        terminalreporter.section("what the reliability suites did")
        for what, count in sorted(TALLY.items()):
            terminalreporter.write_line(f"{TALLY_PREFIX}{count:>7}  {what}")


def nsbuild_cmd() -> list[str]:
    """The installed console script of the interpreter running the tests."""
    script = Path(sys.executable).parent / "nsbuild"
    return [str(script)] if script.exists() else [sys.executable, "-m", "builder"]


def mountinfo() -> list[str]:
    """The host's mount table (mount ids included: any remount shows)."""
    with open("/proc/self/mountinfo") as f:
        return f.read().splitlines()


_SESSION_TMP: list[str] = []  # the session's pytest base temp dir, where every test image lives


@pytest.fixture(scope="session", autouse=True)
def _session_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    _SESSION_TMP[:] = [str(tmp_path_factory.getbasetemp())]


def own_loops() -> set[tuple[str, str]]:
    """Attached loop devices backed by a file of this session (loop devices are global: those of
    other users and test runs are none of the tests' business)."""
    import glob

    found = set()
    for path in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(path) as f:
                backing = f.read().strip()
        except FileNotFoundError:
            continue  # detached while we looked
        if any(backing == root or backing.startswith(root + "/") for root in _SESSION_TMP):
            found.add((path.split("/")[3], backing))
    return found


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _umount_all_under(path: Path) -> None:
    """Unmount everything at or below `path`, deepest first (teardown of a test's state dir)."""
    from builder.kernel import syscalls as sc

    target = str(path)
    while True:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
                  for line in mountinfo()]
        under = [p for p in points if p == target or p.startswith(target + "/")]
        if not under:
            return
        sc.umount2(max(under, key=len), sc.FLAGS["MNT_DETACH"])


@pytest.fixture(autouse=True)
def host_unchanged():
    """Every test leaves /proc/self/mountinfo, this process's fds, mount namespace and working
    directory exactly as it found them."""
    before, fds = mountinfo(), open_fds()
    home = os.readlink("/proc/self/ns/mnt"), os.getcwd()
    yield
    assert (os.readlink("/proc/self/ns/mnt"), os.getcwd()) == home, "the test process did not come back home"
    assert mountinfo() == before, "the host's mount table changed"
    assert open_fds() == fds, "fds leaked"


@pytest.fixture
def state_dir(tmp_path: Path):
    """A private state dir; torn down (unmounted, removed) after the test."""
    path = tmp_path / "state"
    yield path
    if IS_ROOT:
        _umount_all_under(path)


@pytest.fixture
def nsbuild(state_dir: Path, tmp_path: Path):
    """Run the CLI with the private state dir; returns CompletedProcess (text)."""
    base_env = dict(os.environ, NSBUILD_STATE_DIR=str(state_dir), NSBUILD_STORE=str(tmp_path / "store"))
    base_env.pop("NSBUILD_TEST_FAULT", None)

    # $CWD binds must not contain the state dir: a recursive bind would carry its nsfs mounts along
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    def run(*args: str, check: bool = True, cwd: Path | None = None, env: dict[str, str] | None = None,
            **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(nsbuild_cmd() + list(args), capture_output=True, text=True, env=env or base_env,
                              cwd=cwd or workdir, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"nsbuild {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    run.env = base_env  # type: ignore[attr-defined]
    return run


class User:
    """An unprivileged user who runs the installed nsbuild: a copy of its packages that the user can
    read (the venv may sit under root's home) and an interpreter of the same version."""

    def __init__(self, name: str, python: str, site: str, home: str) -> None:
        self.name, self.python, self.site, self.home = name, python, site, home

    def run(self, *args: str, cwd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.home, "LANG": "C.UTF-8",
                 "PYTHONPATH": self.site, **(env or {})}
        return subprocess.run(["runuser", "-u", self.name, "--", "env", "-i",
                               *(f"{k}={v}" for k, v in clean.items()),
                               self.python, "-s", "-m", "builder", *args],
                              capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="session")
def user():
    """A throwaway user (useradd), removed again with everything made for it."""
    import shutil
    import sysconfig
    import tempfile

    if not IS_ROOT:
        pytest.skip("creating a test user needs root")
    name = f"nsbt{os.getpid()}"[:31]
    shared = tempfile.mkdtemp(prefix="nsbuild-user-")
    os.chmod(shared, 0o755)
    subprocess.run(["useradd", "--no-create-home", "--home-dir", shared, "--shell", "/usr/sbin/nologin", name],
                   check=True)
    try:
        site = os.path.join(shared, "site")
        skip = shutil.ignore_patterns("pip", "pip-*", "setuptools*", "_pytest", "pytest*", "hypothesis*",
                                      "_distutils_hack", "pkg_resources", "__pycache__", "*.pth")
        shutil.copytree(sysconfig.get_paths()["purelib"], site, ignore=skip)
        subprocess.run(["chmod", "-R", "a+rX", shared], check=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        for python in (os.path.realpath(sys.executable), f"/usr/bin/python{version}", "/usr/bin/python3"):
            probe = subprocess.run(["runuser", "-u", name, "--", python, "-c",
                                    "import sys; print('%d.%d' % sys.version_info[:2])"],
                                   capture_output=True, text=True)
            if probe.returncode == 0 and probe.stdout.strip() == version:
                break
        else:
            pytest.fail(f"no Python {version} that user {name} can run (the test interpreter is not readable)")
        yield User(name, python, site, shared)
    finally:
        subprocess.run(["userdel", name], check=True)
        shutil.rmtree(shared)
