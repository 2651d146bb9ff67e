"""The per-user holder: a small process that owns the user namespace of a user's sandboxes.

An unprivileged user can pin a mount namespace (bind its nsfs file) only inside a mount namespace
that its own user namespace owns (KERNEL-NOTES.md), so sandboxes cannot be pinned on the host's
tree. As podman does with its pause process, a holder keeps a user namespace, a mount namespace
of its own (where the state directory's NAME.mnt pins live) and a PID namespace (whose /proc
builds may mount) alive between commands:

    .holder.lock   flock(2): shared while a command works inside, exclusive to start or stop it
    .holder.pid    the holder's pid (util-linux: nsenter -t PID -U -m ...)

Commands join it (setns user, then mount; and PID for the children of a build) and then work as
root does. It starts on the first build and is stopped when the user's last sandbox is removed; it
does nothing but wait, so it gives the user nothing `unshare -Ur` would not.
"""
from __future__ import annotations

import fcntl
import os
import sys

from builder.errors import NsbuildError
from builder.kernel import syscalls as sc
from builder.sandbox import paths

# pid 1 of the holder's PID namespace: orphans that end up here are reaped by the kernel (SIGCHLD
# ignored), SIGTERM ends it, nothing else (the terminal it was started from is not its own)
_LOOP = ("import os, signal\n"
         "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
         "signal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n"
         "for s in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT): signal.signal(s, signal.SIG_IGN)\n"
         "while True: signal.pause()\n")
NAME = "nsbuild-holder"


def lock_path(state: str) -> str:
    return os.path.join(state, ".holder.lock")


def pid_path(state: str) -> str:
    return os.path.join(state, ".holder.pid")


def wanted() -> bool:
    """Whether commands work through a holder: a user who is not root, not yet in a user namespace."""
    return os.geteuid() != 0 and paths.initial_userns()


def join(state: str, start: bool = True, fork: bool = False) -> bool:
    """enter() for a user who is not root (see wanted()); nothing for root. start=False: only a holder
    that runs, and only if the state directory exists."""
    if not wanted() or (not start and not os.path.isdir(state)):
        return False
    return enter(state, start, fork)


def running(state: str) -> int | None:
    """The pid of the holder of `state`, if it is alive (its pid file, its command line, its owner)."""
    try:
        with open(pid_path(state)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_holder(pid, state) else None


def _is_holder(pid: int, state: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return False
    return argv[:1] == [NAME.encode()] and os.fsencode(state) in argv and owner == os.getuid()


def _lock(state: str, how: int) -> int:
    fd = os.open(lock_path(state), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, how)
    return fd


def enter(state: str, start: bool = True, fork: bool = False) -> bool:
    """Join the holder of `state` (started if `start`; the directory exists otherwise); False when
    there is none to join.

    fork: the rest of the command runs in a child that is in the holder's PID namespace too (a
    build mounts proc, which the kernel allows only there); this process waits for it, stops the
    holder if the user has no sandbox left, and exits with the child's status."""
    store = paths.store_dir()
    if start:
        _make_dir(state)
    try:
        lock = _lock(state, fcntl.LOCK_EX)
    except PermissionError:
        raise NsbuildError(f"cannot use the state directory {state}: permission denied",
                           "it is another user's: use your own (the default, see `nsbuild doctor`), "
                           "or run nsbuild as that user") from None
    try:
        pid = running(state)
        if pid is None and start:
            pid = _spawn(state)
        fcntl.flock(lock, fcntl.LOCK_SH)  # working inside: nobody stops it meanwhile
        if pid is None:
            os.close(lock)
            return False
        nsfds = [os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in ("user", "mnt", "pid")]
    except PermissionError as e:
        os.close(lock)
        raise NsbuildError(f"cannot join the holder of {state}: {e.strerror} ({e.filename})",
                           "the state directory is another user's: use your own (the default)") from None
    except BaseException:
        os.close(lock)
        raise
    # later code resolves the paths again, as root of the user namespace: keep the user's
    os.environ["NSBUILD_STATE_DIR"], os.environ["NSBUILD_STORE"] = state, store
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        cwd = "/"
    try:
        sc.setns(nsfds[0], sc.FLAGS["CLONE_NEWUSER"])
        sc.setns(nsfds[1], sc.FLAGS["CLONE_NEWNS"])
        if fork:
            sc.setns(nsfds[2], sc.FLAGS["CLONE_NEWPID"])
    finally:
        for fd in nsfds:
            os.close(fd)
    try:
        os.chdir(cwd)  # setns(CLONE_NEWNS) moved us to "/": the same path in the holder's copy of the tree
    except OSError as e:
        raise NsbuildError(f"cannot change to {cwd} in the holder's mount namespace: {e.strerror}",
                           "run nsbuild from a directory that existed when the holder started") from None
    if not fork:
        os.close(lock)  # joined: the namespaces are held by this process now
        return True
    _fork_and_wait(state, lock, pid)
    return True


def _make_dir(state: str) -> None:
    try:
        os.makedirs(state, mode=0o700, exist_ok=True)
    except OSError as e:
        raise NsbuildError(f"cannot create the state directory {state}: {e.strerror}",
                           "use --state-dir or NSBUILD_STATE_DIR to choose another") from None


def _fork_and_wait(state: str, lock: int, pid: int) -> None:
    """Returns in the child; the parent waits, then exits with the child's status."""
    import signal

    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        return
    forward = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
    for sig in forward:
        signal.signal(sig, lambda s, _f: os.kill(child, s))
    for sig in (signal.SIGINT, signal.SIGQUIT):  # the terminal sends these to the child too
        signal.signal(sig, signal.SIG_IGN)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            status = 1 << 8
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    fcntl.flock(lock, fcntl.LOCK_UN)
    _stop_if_idle(state, lock, pid)  # the same lock file: `rm --all` may have removed the directory
    os.close(lock)
    sys.stdout.flush()
    os._exit(code if code >= 0 else 128 - code)


def _stop_if_idle(state: str, lock: int, pid: int) -> bool:
    """Stop holder `pid` when no sandbox is left and no other command works inside it."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # another command is inside: it stops the holder when it is done, if need be
    try:
        if any(e.endswith(".json") and not e.startswith(".") for e in os.listdir(state)):
            return False
    except FileNotFoundError:
        pass  # `rm --all` released the directory
    stop(state, pid)
    return True


def stop(state: str, pid: int) -> None:
    """SIGKILL the holder through a pidfd (no pid reuse in between), wait until it is gone."""
    import select
    import signal

    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if _is_holder(pid, state):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            select.select([pidfd], [], [], 5.0)  # readable once it has exited
    finally:
        os.close(pidfd)
    if running(state) is None:
        try:
            os.unlink(pid_path(state))
        except FileNotFoundError:
            pass


def _spawn(state: str) -> int:
    """Start a holder for `state` (the caller holds .holder.lock exclusively); its pid."""
    from builder.sandbox import rootless

    ranged = rootless.mapping() == "range"
    uid, gid = os.geteuid(), os.getegid()
    up_r, up_w = os.pipe()      # the new process -> us
    down_r, down_w = os.pipe()  # us -> the new process
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs forked
        os.close(up_r)
        os.close(down_w)
        try:
            os.setsid()  # no controlling terminal: Ctrl-C at the user's shell does not reach it
            sc.unshare(sc.FLAGS["CLONE_NEWUSER"])
            if not ranged:
                rootless.write_single_maps(uid, gid)
            os.write(up_w, b"u")
            if os.read(down_r, 1) != b"m":
                os._exit(1)
            cpus = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {lowest_id_cpu(cpus)})
            sc.unshare(sc.FLAGS["CLONE_NEWNS"] | sc.FLAGS["CLONE_NEWPID"])
            os.sched_setaffinity(0, cpus)
            holder = os.fork()
            if holder == 0:
                _become_holder(state)
            os.write(up_w, b"p" + str(holder).encode())
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - reported by the parent
            os.write(up_w, b"E" + str(e).encode(errors="replace"))
            os._exit(1)
    os.close(up_w)
    os.close(down_r)
    try:
        said = os.read(up_r, 1)
        if said == b"u":
            try:
                if ranged:
                    rootless.write_range_maps(pid)
            finally:
                os.write(down_w, b"m")
            said = b""
        while chunk := os.read(up_r, 4096):
            said += chunk
    finally:
        os.close(up_r)
        os.close(down_w)
        os.waitpid(pid, 0)
    if not said.startswith(b"p"):
        reason = said[1:].decode(errors="replace") if said.startswith(b"E") else "it exited"
        raise NsbuildError(f"cannot start the holder of the user namespace: {reason}",
                           "unprivileged user namespaces must be allowed (sysctl user.max_user_namespaces, "
                           "kernel.apparmor_restrict_unprivileged_userns); or run nsbuild as root")
    holder = int(said[1:])
    tmp = pid_path(state) + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{holder}\n")
    os.rename(tmp, pid_path(state))
    return holder


def lowest_id_cpu(cpus: set[int]) -> int:
    """The CPU on which a new mount namespace gets the lowest id. Ids come from per-CPU ranges, and
    the kernel pins only namespaces newer than the one they are pinned in (KERNEL-NOTES.md): made
    there, the holder's namespace (or the tests' scratch one) is older than every sandbox's,
    whichever CPU builds them."""
    if len(cpus) == 1:
        return next(iter(cpus))
    ids = {}
    for cpu in cpus:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:  # pragma: no cover - the child
                os.sched_setaffinity(0, {cpu})
                sc.unshare(sc.FLAGS["CLONE_NEWNS"])
                with open("/proc/self/ns/mnt") as f:
                    os.write(w, str(sc.mntns_id(f.fileno())).encode())
            finally:
                os._exit(0)
        os.close(w)
        said = os.read(r, 32)
        os.close(r)
        os.waitpid(pid, 0)
        ids[cpu] = int(said) if said.isdigit() else 1 << 64
    return min(ids, key=ids.__getitem__)


def _become_holder(state: str) -> None:  # pragma: no cover - runs forked, never returns
    """pid 1 of the new PID namespace: nothing of the caller's (fds, cwd, terminal), then wait."""
    try:
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 2**31 - 1)
        os.chdir("/")
        os.execve(sys.executable, [NAME, "-I", "-S", "-c", _LOOP, state], {})
    finally:
        os._exit(127)
