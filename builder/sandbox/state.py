"""Persisted sandboxes: a private state directory of nsfs bind mounts and metadata.

Layout of the state directory (bound onto itself and made unbindable once: a
mount-namespace file cannot be bound on a shared mount, and recursive binds of
a parent directory must not carry the nsfs mounts into sandboxes):

    .lock          flock(2) held while the directory changes
    NAME.mnt       the sandbox's mount namespace (an nsfs bind mount)
    NAME.upper     its tmpfs upper, if it has one (read-only, nosuid, nodev, noexec): what export reads
    NAME.json      metadata, replaced atomically (write, fsync, rename)
    NAME.run       [run] of NAME.json in marshal format: `nsbuild run` reads it without
                   importing json (whose regexes cost ~8 ms of a ~12 ms budget)
"""
from __future__ import annotations

import fcntl
import marshal
import os
import sys

from builder.kernel import syscalls as sc
from builder.errors import BuildError, NsbuildError
from builder.sandbox.mounts import is_mount_point, mount_points, mount_table, mountinfo_entry, mounts_on, pin_setup

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from builder.plan.steps import Pin, Plan

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
        """Create the directory (0700). Making it a private, unbindable mount of its own is the
        work of the first persist segment that pins a namespace here (steps.Pin)."""
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            os.chmod(self.path, 0o700)
        except OSError as e:
            raise NsbuildError(f"cannot create the state directory {self.path}: {e.strerror}",
                               "use --state-dir or NSBUILD_STATE_DIR to choose another") from None

    def setup(self) -> str:
        """What the directory still needs before a namespace can be pinned in it (steps.Pin.setup)."""
        return pin_setup(mountinfo_entry(self.path) if os.path.isdir(self.path) else None)

    def pin_for(self, name: str) -> Pin:
        """How a build would persist sandbox `name` now (`nsbuild plan` shows it; a build derives it
        again under the lock)."""
        from builder.plan.steps import Pin  # not on the `run` path

        target = self.ns_path(name)
        points = mount_points() if os.path.isdir(self.path) else set()
        return Pin(target, target in points, self.setup(), self.upper_path(name) in points)

    def ns_path(self, name: str) -> str:
        return os.path.join(self.path, name + ".mnt")

    def upper_path(self, name: str) -> str:
        return os.path.join(self.path, name + ".upper")

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
            elif entry.endswith(".upper") and entry[:-6] + ".json" not in entries:
                self._remove(entry[:-6])
                cleaned.append(f"removed abandoned upper {entry}")
            elif entry.endswith(".json") and self.ns_path(entry[:-5]) not in mounted:
                self._remove(entry[:-5])
                cleaned.append(f"removed sandbox {entry[:-5]}: its namespace was gone")
        return cleaned

    def persist(self, name: str, nsfd: int, meta: dict[str, object], replace: bool, plan: Plan | None = None,
                kept: dict[str, int] | None = None) -> str:
        """Run `plan`'s persist segment (made for this directory as it is now) to pin `nsfd` on
        NAME.mnt (and a tmpfs upper, if `kept` has its fd, on NAME.upper), and write NAME.json; atomic
        with respect to readers."""
        return self.persist_many(((name, nsfd),), meta, replace, plan, kept)[0]

    def persist_many(self, items: Iterable[tuple[str, int]], meta: dict[str, object], replace: bool,
                     plan: Plan | None = None, kept: dict[str, int] | None = None) -> list[str]:
        """persist() for each (name, nsfd), under one lock and one read of the mount table (a batch:
        `items` may be a generator that makes the namespaces as they are asked for, and `kept` is None)."""
        done: list[str] = []
        with self.locked():
            mounted, entry = mount_table(self.path)  # read once: with many sandboxes mountinfo is long
            cleaned = self.recover(mounted)
            self.report(cleaned)
            if cleaned:
                mounted = mount_points()
            setup = pin_setup(entry)
            for name, nsfd in items:
                done.append(self._persist_one(plan, name, nsfd, meta, replace, mounted, setup, kept, bool(done)))
                mounted.add(done[-1])
                setup = ""
        return done

    def _persist_one(self, plan: Plan | None, name: str, nsfd: int, meta: dict[str, object], replace: bool,
                     mounted: set[str], setup: str, kept: dict[str, int] | None, fast_json: bool = False) -> str:
        from builder.plan.steps import Pin

        target = self.ns_path(name)
        stacked = target in mounted
        if (stacked or os.path.exists(self.meta_path(name))) and not replace:
            raise NsbuildError(f"a sandbox named '{name}' exists already",
                               f"use --replace, or remove it with `nsbuild rm {name}`")
        from builder.plan.steps import UPPER

        upper = self.upper_path(name) in mounted if kept and UPPER in kept else None
        self._bind(plan, nsfd, Pin(target, stacked, setup, upper), kept)
        _test_kill("after-mount")
        try:
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

    def _bind(self, plan: Plan | None, nsfd: int, pin: Pin, kept: dict[str, int] | None = None) -> None:
        """Pin a namespace as `pin` says, by the persist segment of `plan` (of a plan of nothing
        else, without one). A failure leaves nothing of it: the segment unwinds."""
        from builder.plan import executor
        from builder.plan.steps import pin_only, with_persist

        plan = with_persist(plan, pin) if plan else pin_only(pin)
        after = {}
        if os.environ.get("NSBUILD_TEST_KILL") == "after-create":
            after = {i: lambda: _test_kill("after-create") for i, s in enumerate(plan.steps)
                     if s.call == "mknodat" and s.origin == "persist"}
        try:
            executor.pin(plan, nsfd, after, kept)
        except BuildError as e:
            from builder.plan.failure import persist_error

            name = os.path.basename(pin.target)[:-4]
            if pin.upper and kept and not self._only_old_upper(pin.upper_target, kept):
                self._drop_upper(name)  # the new upper went in, the new namespace did not: pin neither
            if pin.stacked and mounts_on(pin.target) != 1:  # the new one is beneath the old one
                self._remove(name)
                e.args = (f"{e}; the sandbox '{name}' it was to replace is gone as well",)
            raise persist_error(e, nsfd) from None

    @staticmethod
    def _only_old_upper(target: str, kept: dict[str, int]) -> bool:
        """Whether `target` still holds the old upper alone, not the new one (kept's: another tmpfs)."""
        from builder.plan.steps import UPPER

        return mounts_on(target) == 1 and os.stat(target).st_dev != os.fstat(kept[UPPER]).st_dev

    def _drop_upper(self, name: str) -> None:
        """The sandbox stays, its upper is no longer pinned (export says so)."""
        upper = self.upper_path(name)
        while is_mount_point(upper):
            sc.umount2(upper, sc.FLAGS["MNT_DETACH"])
        try:
            os.rmdir(upper)
        except FileNotFoundError:
            pass

    @property
    def template_path(self) -> str:
        return os.path.join(self.path, ".template.mnt")

    def template(self) -> str | None:
        """The template namespace file, if one is pinned here (see plan.unshare_into_root)."""
        return self.template_path if os.path.isdir(self.path) and self.template_path in mount_points() else None

    def pin_template(self, nsfd: int, plan: Plan | None = None) -> str:
        """Pin `nsfd` (made by `plan`) as the template namespace, unless one is pinned already."""
        from builder.plan.steps import Pin

        with self.locked():
            if self.template_path not in mount_points():
                self._bind(plan, nsfd, Pin(self.template_path, False, self.setup()))
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
        while is_mount_point(self.path):  # the self-bind of the first persist segment (once, but be thorough)
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
        target, found = self.ns_path(name), os.path.lexists(self.upper_path(name))
        self._drop_upper(name)
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
