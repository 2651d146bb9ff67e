"""Persisted sandboxes: a private state directory of nsfs bind mounts and metadata.

Layout of the state directory (bound onto itself and made unbindable once: a
mount-namespace file cannot be bound on a shared mount, and recursive binds of
a parent directory must not carry the nsfs mounts into sandboxes):

    .lock          flock(2) held while the directory changes
    NAME.mnt       the sandbox's mount namespace (an nsfs bind mount)
    NAME.json      metadata, replaced atomically (write, fsync, rename)
    NAME.run       [run] of NAME.json in marshal format: `nsbuild run` reads it without
                   importing json (whose regexes cost ~8 ms of a ~12 ms budget)
"""
from __future__ import annotations

import errno
import fcntl
import marshal
import os
import sys

from builder.kernel import syscalls as sc
from builder.errors import NsbuildError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

DEFAULT_STATE_DIR = "/run/nsbuild"  # root's; other users' are per-user (paths.py)
_NOT_YOURS = ("the state directory is another user's (mode 0700): use your own (the default), "
              "or run nsbuild as that user")


def state_dir(option: str | None = None) -> str:
    chosen = option or os.environ.get("NSBUILD_STATE_DIR")
    if chosen:
        return os.path.abspath(chosen)
    from builder.sandbox.paths import default_state_dir

    return default_state_dir()


def to_json(value: object, indent: str = "") -> str:
    """JSON text of metadata (dicts, lists, strings, numbers, booleans, null), keys sorted. json.dumps
    would do, but importing json (and with it re) costs a warm build ~8 ms."""
    from _json import encode_basestring

    inner = indent + "  "
    if isinstance(value, dict):
        items = [f"{inner}{encode_basestring(str(k))}: {to_json(v, inner)}" for k, v in sorted(value.items())]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[\n" + ",\n".join(inner + to_json(v, inner) for v in value) + f"\n{indent}]" if value else "[]"
    if isinstance(value, str):
        return encode_basestring(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"not JSON metadata: {value!r}")


def _mountinfo_entry(path: str) -> list[str] | None:
    """The last (topmost) mountinfo line whose mount point is `path`."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == path:
                found = fields
    return found


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    if "\\" not in field:
        return field
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {_unescape(line.split()[4]) for line in f}


def is_mount_point(path: str) -> bool:
    return _mountinfo_entry(path) is not None


class _Lock:
    """flock(2) on a lock file for a `with` block (contextlib costs ~2 ms on the `run` path)."""

    def __init__(self, path: str) -> None:
        self.path, self.fd = path, -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class StateDir:
    def __init__(self, path: str) -> None:
        self.path = path

    def locked(self) -> _Lock:
        return _Lock(os.path.join(self.path, ".lock"))

    def prepare(self) -> None:
        """Create the directory and make it an unbindable mount of its own (once)."""
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as e:
            raise NsbuildError(f"cannot create the state directory {self.path}: {e.strerror}",
                               "use --state-dir or NSBUILD_STATE_DIR to choose another") from None
        dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX)  # serializes concurrent first-time set-up
            entry = _mountinfo_entry(self.path)
            if entry is None:
                tree = sc.open_tree(sc.AT_FDCWD, self.path, sc.flags(("OPEN_TREE_CLONE", "OPEN_TREE_CLOEXEC")))
                try:
                    sc.move_mount(tree, "", sc.AT_FDCWD, self.path, sc.FLAGS["MOVE_MOUNT_F_EMPTY_PATH"])
                finally:
                    os.close(tree)
            # unbindable (which is also private): a recursive bind of a parent directory, such as
            # $CWD at /work, then leaves the nsfs mounts out instead of failing with ELOOP
            if entry is None or "unbindable" not in entry[6:entry.index("-")]:
                sc.mount_setattr(sc.AT_FDCWD, self.path, 0, propagation=sc.FLAGS["MS_UNBINDABLE"])
            os.chmod(self.path, 0o700)
        finally:
            os.close(dfd)

    def ns_path(self, name: str) -> str:
        return os.path.join(self.path, name + ".mnt")

    def meta_path(self, name: str) -> str:
        return os.path.join(self.path, name + ".json")

    def run_path(self, name: str) -> str:
        return os.path.join(self.path, name + ".run")

    def read_run(self, name: str) -> dict[str, object] | None:
        """The [run] cache, or None when it is missing or not what nsbuild wrote."""
        try:
            with open(self.run_path(name), "rb") as f:
                run = marshal.load(f)
        except (OSError, EOFError, ValueError, TypeError):
            return None
        if not (isinstance(run, dict) and isinstance(run.get("command"), list) and run["command"]
                and all(isinstance(a, str) for a in run["command"]) and isinstance(run.get("cwd"), str)
                and isinstance(run.get("env"), dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in run["env"].items())):
            return None
        return run

    def read(self, name: str) -> dict[str, object] | None:
        import json

        try:
            with open(self.meta_path(name)) as f:
                meta = json.load(f)
        except FileNotFoundError:
            return None
        except PermissionError:  # not corrupt, only not ours to read: removing it would be wrong
            raise NsbuildError(f"cannot read the metadata of sandbox '{name}' ({self.meta_path(name)}): "
                               "permission denied", _NOT_YOURS) from None
        except (OSError, ValueError) as e:
            raise NsbuildError(f"the metadata of sandbox '{name}' ({self.meta_path(name)}) is unreadable: {e}",
                               f"remove it with `nsbuild rm {name}`") from None
        if not isinstance(meta, dict) or meta.get("name") != name:
            raise NsbuildError(f"{self.meta_path(name)} is not nsbuild metadata for '{name}'",
                               f"remove it with `nsbuild rm {name}`")
        return meta

    def names(self) -> list[str]:
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return []
        except PermissionError:
            raise NsbuildError(f"cannot read the state directory {self.path}: permission denied",
                               _NOT_YOURS) from None
        return sorted(e[:-5] for e in entries if e.endswith(".json") and not e.startswith("."))

    def recover(self, mounted: set[str] | None = None) -> list[str]:
        """Clean up what a killed nsbuild left (call with the lock held); say what was cleaned.

        Under the lock a NAME.mnt always has its NAME.json, so one without is an abandoned
        persist; *.tmp files are metadata that was never renamed into place.
        """
        cleaned = []
        mounted = mount_points() if mounted is None else mounted
        entries = sorted(os.listdir(self.path))
        for entry in entries:
            path = os.path.join(self.path, entry)
            if entry.startswith("."):  # .lock, .template.mnt
                continue
            if entry.endswith(".tmp"):
                os.unlink(path)
                cleaned.append(f"removed unfinished metadata {entry}")
            elif entry.endswith(".run") and entry[:-4] + ".json" not in entries:
                os.unlink(path)
                cleaned.append(f"removed unfinished metadata {entry}")
            elif entry.endswith(".mnt") and entry[:-4] + ".json" not in entries:
                self._remove(entry[:-4])
                cleaned.append(f"removed abandoned namespace {entry}")
            elif entry.endswith(".json") and self.ns_path(entry[:-5]) not in mounted:
                self._remove(entry[:-5])
                cleaned.append(f"removed sandbox {entry[:-5]}: its namespace was gone")
        return cleaned

    def persist(self, name: str, nsfd: int, meta: dict[str, object], replace: bool) -> str:
        """Bind `nsfd` onto NAME.mnt and write NAME.json; atomic with respect to readers."""
        return self.persist_many(((name, nsfd),), meta, replace)[0]

    def persist_many(self, items: Iterable[tuple[str, int]], meta: dict[str, object], replace: bool) -> list[str]:
        """persist() for each (name, nsfd), under one lock and one read of the mount table (a batch:
        `items` may be a generator that makes the namespaces as they are asked for)."""
        done: list[str] = []
        with self.locked():
            mounted = mount_points()  # read once: with many sandboxes mountinfo is long
            cleaned = self.recover(mounted)
            self.report(cleaned)
            if cleaned:
                mounted = mount_points()
            for name, nsfd in items:
                done.append(self._persist_one(name, nsfd, meta, replace, mounted, fast_json=bool(done)))
                mounted.add(done[-1])
        return done

    def _persist_one(self, name: str, nsfd: int, meta: dict[str, object], replace: bool, mounted: set[str],
                     fast_json: bool = False) -> str:
        target = self.ns_path(name)
        stacked = target in mounted
        if (stacked or os.path.exists(self.meta_path(name))) and not replace:
            raise NsbuildError(f"a sandbox named '{name}' exists already",
                               f"use --replace, or remove it with `nsbuild rm {name}`")
        self._bind(nsfd, target, stacked)
        _test_kill("after-mount")
        try:
            if stacked:
                sc.umount2(target, sc.FLAGS["MNT_DETACH"])
            import time

            meta = dict(meta, name=name, nsfs=target, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            self._write(self.run_path(name), marshal.dumps(meta["run"]))  # type: ignore[arg-type]
            if fast_json:  # a batch: json's C encoder pays for its import after the first sandbox
                import json

                text = json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False)
            else:
                text = to_json(meta)
            self._write(self.meta_path(name), (text + "\n").encode())
        except BaseException:
            self._remove(name)
            raise
        return target

    @staticmethod
    def _bind(nsfd: int, target: str, stacked: bool) -> None:
        """Pin a namespace on `target`. Replacing (stacked): slide the new one under the old one,
        which the caller then detaches, so the path always holds a namespace."""
        if not stacked:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        _test_kill("after-create")
        tree = sc.open_tree(nsfd, "", sc.flags(("OPEN_TREE_CLONE", "OPEN_TREE_CLOEXEC", "AT_EMPTY_PATH")))
        try:
            flag = sc.flags(("MOVE_MOUNT_F_EMPTY_PATH",) + (("MOVE_MOUNT_BENEATH",) if stacked else ()))
            sc.move_mount(tree, "", sc.AT_FDCWD, target, flag)
        except sc.SyscallError as e:
            if not stacked:
                os.unlink(target)
            raise _persist_error(e, nsfd) from None
        finally:
            os.close(tree)

    @property
    def template_path(self) -> str:
        return os.path.join(self.path, ".template.mnt")

    def template(self) -> str | None:
        """The template namespace file, if one is pinned here (see plan.unshare_into_root)."""
        return self.template_path if os.path.isdir(self.path) and self.template_path in mount_points() else None

    def pin_template(self, nsfd: int) -> str:
        """Pin `nsfd` as the template namespace, unless one is pinned already."""
        with self.locked():
            if self.template_path not in mount_points():
                self._bind(nsfd, self.template_path, stacked=False)
        return self.template_path

    @staticmethod
    def _write(path: str, data: bytes) -> None:
        """Write-then-rename, so readers see the old file or the whole new one."""
        tmp = path + f".{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            _test_kill("after-tmp")
            os.rename(tmp, path)
        except BaseException:
            os.unlink(tmp)  # a failed write (ENOSPC, EIO) leaves no *.tmp behind
            raise

    def remove(self, name: str) -> bool:
        """Unmount and forget a sandbox; True if there was anything to remove."""
        with self.locked():
            self.report(self.recover())
            return self._remove(name)

    def release(self) -> tuple[list[str], bool]:
        """`nsbuild rm --all`: remove every sandbox, then give the directory back to the host as it
        was before the first build: the template namespace and the directory's own bind mount are
        unmounted, nsbuild's files (.lock, .seccomp, .plans) deleted and the directory removed if that leaves
        it empty. Returns the sandboxes removed, and whether the directory is gone."""
        import shutil

        if not os.path.isdir(self.path):
            return [], True
        with self.locked():
            self.report(self.recover())
            names = self.names()
            for name in names:
                self._remove(name)
            while is_mount_point(self.template_path):
                sc.umount2(self.template_path, sc.FLAGS["MNT_DETACH"])
            for entry in (".template.mnt", ".seccomp", ".lock", ".holder.pid", ".holder.lock"):  # holder.py
                try:
                    os.unlink(os.path.join(self.path, entry))
                except FileNotFoundError:
                    pass
            shutil.rmtree(os.path.join(self.path, ".plans"), ignore_errors=True)
        while is_mount_point(self.path):  # the self-bind that prepare() made (once, but be thorough)
            sc.umount2(self.path, sc.FLAGS["MNT_DETACH"])
        try:
            os.rmdir(self.path)
        except OSError:
            return names, False  # something else lives there: not nsbuild's to delete
        return names, True

    @staticmethod
    def report(cleaned: list[str]) -> None:
        for line in cleaned:
            print(f"nsbuild: recovered: {line}", file=sys.stderr)

    def _remove(self, name: str) -> bool:
        target, found = self.ns_path(name), False
        while is_mount_point(target):
            sc.umount2(target, sc.FLAGS["MNT_DETACH"])
            found = True
        for path in (target, self.run_path(name), self.meta_path(name)):
            try:
                os.unlink(path)
                found = True
            except FileNotFoundError:
                pass
        return found


def _test_kill(point: str) -> None:
    """Test-only: NSBUILD_TEST_KILL=POINT makes nsbuild SIGKILL itself there (crash recovery tests)."""
    if os.environ.get("NSBUILD_TEST_KILL") == point:
        import signal  # here, not at the top: it imports enum (~4 ms) on the `run` path

        os.kill(os.getpid(), signal.SIGKILL)


def _persist_error(e: sc.SyscallError, nsfd: int) -> NsbuildError:
    if e.errno in (errno.ELOOP, errno.EINVAL):
        try:
            with open("/proc/self/ns/mnt") as own:
                ours, theirs = sc.mntns_id(own.fileno()), sc.mntns_id(nsfd)
        except OSError:
            ours = theirs = 0
        if theirs and theirs < ours:
            err = NsbuildError(
                f"cannot persist the namespace: its id {theirs} is lower than that of the namespace "
                f"nsbuild runs in ({ours}), which the kernel refuses ({e.errname})",
                "run nsbuild from the initial mount namespace, or let it use more CPUs (taskset): "
                "ids come from per-CPU ranges")
            err.retry = True  # type: ignore[attr-defined]
            return err
    return NsbuildError(f"cannot persist the namespace: {e}",
                        "the state directory must be a private mount; see `nsbuild doctor`")
