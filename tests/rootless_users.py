"""Real unprivileged users for the rootless tests: made with useradd, one with subordinate ids
(/etc/subuid, /etc/subgid) and one without, running the installed nsbuild through runuser.

Each user gets a home of its own (the store's default, ~/.local/share/nsbuild/store, lives there), a
copy of the test venv's packages it can read, and an interpreter of the test's version that it can
run: the venv's own when others can reach it, else the test interpreter's installation bound
read-only at a readable path in the tests' scratch mount namespace (a pyenv under /root, say).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # not from conftest: bench/rootless_rows.py imports this too


def _readable_by_others(path: str) -> bool:
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", path, "-c",
                            "import tarfile; tarfile.data_filter"], capture_output=True)
    return probe.returncode == 0


class Interpreter:
    """A Python of the test's version (with tarfile's extraction filters) that any user can run."""

    def __init__(self) -> None:
        self.bound: str | None = None
        base = os.path.realpath(sys.executable)
        if _readable_by_others(base):
            self.python = base
            return
        self.bound = tempfile.mkdtemp(prefix="nsbuild-py-")
        os.chmod(self.bound, 0o755)
        subprocess.run(["mount", "--bind", "-o", "ro", sys.base_prefix, self.bound], check=True)
        subprocess.run(["mount", "--make-private", self.bound], check=True)
        self.python = os.path.join(self.bound, os.path.relpath(base, sys.base_prefix))
        if not _readable_by_others(self.python):
            self.close()
            raise RuntimeError(f"no Python {sys.version_info[:2]} with tarfile filters that other users can run")

    def close(self) -> None:
        if self.bound:
            subprocess.run(["umount", self.bound], check=True)
            os.rmdir(self.bound)
            self.bound = None


class RootlessUser:
    def __init__(self, name: str, home: Path, python: str, site: str) -> None:
        self.name, self.home, self.python, self.site = name, home, python, site
        import pwd

        self.uid, self.gid = pwd.getpwnam(name).pw_uid, pwd.getpwnam(name).pw_gid

    @property
    def state(self) -> Path:
        """The default state directory without XDG_RUNTIME_DIR."""
        return Path(f"/tmp/nsbuild-{self.uid}")

    def env(self, extra: dict[str, str] | None = None) -> list[str]:
        clean = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(self.home),
                 "LANG": "C.UTF-8", "PYTHONPATH": self.site, **(extra or {})}
        return ["env", "-i", *(f"{k}={v}" for k, v in clean.items())]

    def popen_args(self, *args: str, env: dict[str, str] | None = None) -> list[str]:
        return ["runuser", "-u", self.name, "--", *self.env(env), self.python, "-s", "-m", "builder", *args]

    def run(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.popen_args(*args, env=env), capture_output=True, text=True,
                              cwd=cwd or self.home, timeout=300)
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        if check and proc.returncode:
            raise AssertionError(f"{self.name}: nsbuild {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sh(self, command: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A shell command as this user (util-linux, say)."""
        return subprocess.run(["runuser", "-u", self.name, "--", *self.env(env), "/bin/sh", "-c", command],
                              capture_output=True, text=True, cwd=cwd or self.home, timeout=120)

    def holder_pid(self, state: Path | None = None) -> int | None:
        try:
            return int(((state or self.state) / ".holder.pid").read_text())
        except (OSError, ValueError):
            return None

    def processes(self) -> list[int]:
        """This user's live processes (zombies waiting for init to reap them are gone already)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                st = os.stat(f"/proc/{entry}")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if st.st_uid == self.uid and state != "Z":
                found.append(int(entry))
        return found

    def holders(self) -> list[int]:
        out = []
        for pid in self.processes():
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"nsbuild-holder":
                    out.append(pid)
            except OSError:
                pass
        return out

    def wait_no_processes(self, timeout: float = 10.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left


def _subids(name: str | None, kind: str) -> list[str]:
    """name's lines of /etc/subuid or /etc/subgid (None: every well-formed line)."""
    path = "/etc/subuid" if kind == "uid" else "/etc/subgid"
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [line for line in lines if line.count(":") == 2 and (name is None or line.split(":")[0] == name)]


def make_user(prefix: str, subids: bool, python: str) -> RootlessUser:
    name = f"{prefix}{os.getpid()}"[:31]
    home = Path(tempfile.mkdtemp(prefix=f"nsbuild-{prefix}-"))
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin", name],
                   check=True)
    try:
        site = home / "site"
        skip = shutil.ignore_patterns("pip", "pip-*", "setuptools*", "_pytest", "pytest*", "hypothesis*",
                                      "_distutils_hack", "pkg_resources", "__pycache__", "*.pth")
        shutil.copytree(sysconfig.get_paths()["purelib"], site, ignore=skip)
        shutil.copytree(REPO / "recipes", home / "recipes")
        subprocess.run(["chown", "-R", f"{name}:", str(home)], check=True)
        os.chmod(home, 0o755)
        for kind, delete, add in (("uid", "--del-subuids", "--add-subuids"), ("gid", "--del-subgids", "--add-subgids")):
            mine = _subids(name, kind)  # useradd allocates a range where /etc/subuid exists: keep it or drop it
            if not subids:
                for line in mine:
                    _, first, count = line.split(":")
                    subprocess.run(["usermod", delete, f"{first}-{int(first) + int(count) - 1}", name], check=True)
            elif not mine:  # above every range in use, so that no other user's ids are shared
                first = max([100000] + [int(f) + int(c) for _, f, c in (line.split(":") for line in _subids(None, kind))])
                subprocess.run(["usermod", add, f"{first}-{first + 65535}", name], check=True)
        return RootlessUser(name, home, python, str(site))
    except BaseException:
        remove_user(name, home)
        raise


def remove_user(name: str, home: Path) -> None:
    subprocess.run(["userdel", name], check=False)
    shutil.rmtree(home, ignore_errors=True)
    for path in ("/etc/subuid", "/etc/subgid"):  # userdel removes them; be sure
        try:
            lines = Path(path).read_text().splitlines(keepends=True)
        except FileNotFoundError:
            continue
        kept = [line for line in lines if line.split(":")[0] != name]
        if kept != lines:
            Path(path).write_text("".join(kept))
