"""The executor: one loop over a plan's steps with a table of open fds.

Host steps run in this process. A "fork" step marks the "child" steps, which
change namespaces (setns/unshare/pivot_root). A single-threaded process runs them
itself and then goes back to its own mount namespace, root and cwd: a fork of
Python costs ~2.5 ms. A process with threads cannot change namespaces, so there
a forked child runs them and sends back the fds the plan names. On any
failure everything done is unwound: fds closed (which frees detached mounts),
directories and nodes created on host paths removed; then BuildError is raised
naming the step, the recipe entry, the errno and the kernel's message.
"""
from __future__ import annotations

import _socket  # socket.py costs ~5 ms to import (its enums); send_fds/recv_fds are a few lines
import errno as errnos
import marshal
import os
import struct  # fd arrays for SCM_RIGHTS (array.array would import collections.abc, ~4 ms)

from builder.kernel import syscalls as sc
from builder.errors import BuildError
from builder.plan.steps import Fd, FdPath, Flags, LoopPath, Plan, ProcPath, Step, Value
from builder.plan.render import strace_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterator

    Undo = Callable[[], None]


class StepFailed(Exception):
    def __init__(self, index: int, error: sc.SyscallError) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


def _fault() -> tuple[int, int] | None:
    """Test-only fault injection: NSBUILD_TEST_FAULT="STEP:ERRNO" fails step STEP with ERRNO."""
    spec = os.environ.get("NSBUILD_TEST_FAULT")
    if not spec:
        return None
    index, _, name = spec.partition(":")
    return int(index), getattr(errnos, name or "EIO")


_CONST, _FD, _FDPATH, _LOOP, _VALUE, _PROC = range(6)


def _compiled(plan: Plan) -> list[tuple]:
    """Each step as (function, argument specs, errnos that count as success, out), made once per
    plan: flags OR-ed, AT_FDCWD resolved, only symbolic fds left to look up when the step runs."""
    if plan.compiled is None:
        steps = []
        for step in plan.steps:
            if step.call == "fork":  # its args name the fds the child sends back: run() reads them
                steps.append((None, (), frozenset(), None))
                continue
            spec = []
            for a in step.args:
                if isinstance(a, Fd):
                    spec.append((_CONST, sc.AT_FDCWD) if a == "AT_FDCWD" else (_FD, str(a)))
                elif isinstance(a, FdPath):
                    spec.append((_FDPATH, str(a)))
                elif isinstance(a, LoopPath):
                    spec.append((_LOOP, str(a)))
                elif isinstance(a, Value):
                    spec.append((_VALUE, str(a)))
                elif isinstance(a, ProcPath):
                    spec.append((_PROC, tuple(a.split("/", 1))))
                elif isinstance(a, Flags):
                    spec.append((_CONST, sc.flags(a)))
                else:
                    spec.append((_CONST, a))
            steps.append((CALLS[step.call], tuple(spec), frozenset(getattr(errnos, n) for n in step.ok), step.out))
        plan.compiled = steps
    return plan.compiled


def _single_threaded() -> bool:
    """setns(CLONE_NEWNS) and unshare need a process of one thread (KERNEL-NOTES.md)."""
    with open("/proc/self/status", "rb") as f:
        return b"\nThreads:\t1\n" in f.read()


class _Home:
    """Where this process was before it ran "child" steps itself: its mount namespace, root and cwd."""

    def __init__(self) -> None:
        flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        self.ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.root = os.open("/", flags)
            try:
                self.cwd = os.open(".", flags)
            except BaseException:
                os.close(self.root)
                raise
        except BaseException:
            os.close(self.ns)
            raise

    def restore(self) -> None:
        try:
            sc.setns(self.ns, sc.FLAGS["CLONE_NEWNS"])  # back home; this also resets root and cwd
            here, root = os.stat("/"), os.fstat(self.root)
            if (here.st_dev, here.st_ino) != (root.st_dev, root.st_ino):  # nsbuild ran chrooted
                os.fchdir(self.root)
                os.chroot(".")
            os.fchdir(self.cwd)
        finally:
            for fd in (self.ns, self.root, self.cwd):
                os.close(fd)


class _Run:
    def __init__(self, plan: Plan, inline: bool | None = None) -> None:
        self.plan = plan
        # run "child" steps in this process, then go back (no fork: a fork of Python costs ~2.5 ms);
        # a process with threads cannot change namespaces, so it forks (None: decide by that)
        self.inline = inline
        self.home: _Home | None = None
        self.fds: dict[str, int] = {}
        self.values: dict[str, int] = {}  # results that are not fds ("#loop0": a loop device number)
        self.children: dict[int, int] = {}  # pid -> the fd that keeps it waiting, of clone steps not yet reaped
        self.undo: list[Undo] = []
        self.fault = _fault()
        self.compiled = _compiled(plan)

    def step(self, index: int, step: Step) -> None:
        if self.fault and self.fault[0] == index:
            raise StepFailed(index, sc.SyscallError(step.call, "injected fault", self.fault[1]))
        call, spec, ok, out = self.compiled[index]
        fds = self.fds
        values = self.values
        args = [v if k == _CONST else fds[v] if k == _FD else f"/proc/self/fd/{fds[v]}" if k == _FDPATH
                else f"/dev/loop{values[v]}" if k == _LOOP else values[v] if k == _VALUE
                else f"/proc/{values[v[0]]}/{v[1]}" for k, v in spec]
        try:
            result = call(self, *args)
        except OSError as e:
            if e.errno in ok:
                return
            err = e if isinstance(e, sc.SyscallError) else sc.SyscallError(step.call, _detail(step), e.errno or 0)
            raise StepFailed(index, err) from None
        if out is None:
            return
        if out[0] == "#":
            self.values[out] = result  # type: ignore[assignment]
            return
        if out in fds:  # a step run again (see Step.again)
            os.close(fds[out])
        fds[out] = result  # type: ignore[assignment]

    def run(self) -> int:
        steps = self.plan.steps
        old_umask = os.umask(0)  # modes in the plan are exact
        try:
            i = tries = 0
            while i < len(steps):
                if steps[i].call == "fork" and self.inline is None:
                    self.inline = _single_threaded()
                if steps[i].call == "fork" and self.inline:
                    self.home = self.home or _Home()
                    i += 1
                elif steps[i].call == "fork":
                    end = i + 1
                    while end < len(steps) and steps[end].where == "child":
                        end += 1
                    self.child(i + 1, end, [str(f) for f in steps[i].args[0]])  # type: ignore[union-attr]
                    i = end
                else:
                    try:
                        self.step(i, steps[i])
                    except StepFailed as e:
                        if not (steps[i].again and e.error.errno == errnos.EBUSY and tries < 8):
                            raise
                        tries += 1
                        i -= steps[i].again
                        continue
                    i += 1
            return self.fds.pop(self.plan.result)
        except BaseException as e:
            self.go_home()  # first: undoing what was made on host paths needs the host's namespace
            self.unwind()
            if isinstance(e, StepFailed):
                raise _build_error(self.plan, e) from None
            raise
        finally:
            for fd in self.fds.values():
                os.close(fd)
            os.umask(old_umask)
            self.go_home()

    def go_home(self) -> None:
        if self.home:
            home, self.home = self.home, None
            home.restore()

    def unwind(self) -> None:
        for undo in reversed(self.undo):
            try:
                undo()
            except OSError:
                pass
        self.undo = []

    def child(self, start: int, end: int, returns: list[str]) -> None:
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reported over the socket
            try:
                ours.close()
                self.undo = []
                try:
                    for i in range(start, end):
                        self.step(i, self.plan.steps[i])
                    _send_fds(theirs, b"ok", [self.fds[r] for r in returns])
                except BaseException as e:  # noqa: BLE001 - reported to the parent, not raised
                    self.unwind()
                    if isinstance(e, StepFailed):
                        info = {"index": e.index, "call": e.error.call, "detail": e.error.detail,
                                "errno": e.error.errno, "kmsg": e.error.kmsg}
                    else:
                        info = {"index": start, "call": "child", "detail": repr(e), "errno": errnos.EIO, "kmsg": ""}
                    theirs.send(marshal.dumps(info))
            finally:
                os._exit(0)
        theirs.close()
        try:
            msg, fds = _recv_fds(ours, max(len(returns), 1))
        finally:
            ours.close()
            os.waitpid(pid, 0)
        if msg == b"ok" and len(fds) == len(returns):
            for name, fd in zip(returns, fds):
                os.set_inheritable(fd, False)
                self.fds[name] = fd
            return
        for fd in fds:
            os.close(fd)
        if not msg:
            raise StepFailed(start, sc.SyscallError("fork", "child died", errnos.ECHILD))
        info = marshal.loads(msg)
        raise StepFailed(info["index"], sc.SyscallError(info["call"], info["detail"], info["errno"], info["kmsg"]))

    def created(self, dfd: int, name: str, is_dir: bool) -> None:
        """Undone on failure. Inside the sandbox never recursively: by then a mount may cover
        the directory, and deleting through it would reach the host (or detach host mounts on
        what it deletes). A host directory nsbuild made (a kept upper, its work dir) holds only
        what this build wrote through overlayfs, and goes with it, staying on its filesystem."""
        fd = _dirfd(dfd)
        if not is_dir:
            self.undo.append(lambda: os.unlink(name, dir_fd=fd))
        elif fd is None:
            self.undo.append(lambda: remove_tree(name))
        else:
            self.undo.append(lambda: os.rmdir(name, dir_fd=fd))


def _send_fds(sock: _socket.socket, msg: bytes, fds: list[int]) -> None:
    sock.sendmsg([msg], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])


def _recv_fds(sock: _socket.socket, maxfds: int) -> tuple[bytes, list[int]]:
    msg, ancdata, _, _ = sock.recvmsg(65536, _socket.CMSG_LEN(maxfds * 4), _socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(data) // 4}i", data[:len(data) - len(data) % 4])
    return msg, fds


def _detail(step: Step) -> str:
    line = strace_line(step)
    return line[line.index("(") + 1:line.rindex(")")] if "(" in line else ""


def remove_tree(path: str, dir_fd: int | None = None, dev: int | None = None) -> None:
    """rm -r that never crosses into another filesystem (a mount) and never follows symlinks."""
    dev = os.lstat(path, dir_fd=dir_fd).st_dev if dev is None else dev
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        for entry in os.scandir(fd):
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.name, dir_fd=fd)
            elif entry.stat(follow_symlinks=False).st_dev == dev:
                remove_tree(entry.name, fd, dev)
    finally:
        os.close(fd)
    os.rmdir(path, dir_fd=dir_fd)  # fails if a mount stayed inside: left alone, not crossed


def _clone(r: _Run, flags: int) -> int:
    """A child in new namespaces, waiting (kernel/userns.py); reaped by a waitpid step, or on failure."""
    from builder.kernel import userns

    pid, hold = userns.spawn(flags)
    r.children[pid] = hold
    r.undo.append(lambda: _reap(r, pid, kill=True))
    return pid


def _reap(r: _Run, pid: int, kill: bool = False) -> None:
    if pid in r.children:  # an unreaped child keeps its pid: it cannot have gone to another process
        if kill:
            os.kill(pid, sc.FLAGS["SIGKILL"])
        os.waitpid(pid, 0)
        os.close(r.children.pop(pid))


def _dirfd(fd: int) -> int | None:
    return None if fd == sc.AT_FDCWD else fd


def _mkdirat(r: _Run, dfd: int, name: str, mode: int) -> None:
    os.mkdir(name, mode, dir_fd=_dirfd(dfd))
    r.created(dfd, name, True)


def _mknodat(r: _Run, dfd: int, name: str, kind: int, mode: int, major: int, minor: int) -> None:
    os.mknod(name, kind | mode, os.makedev(major, minor), dir_fd=_dirfd(dfd))
    r.created(dfd, name, False)


def _write(r: _Run, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _ioctl(r: _Run, fd: int, request: str, *args: object) -> int | None:
    if request == "LOOP_CTL_GET_FREE":
        return sc.loop_get_free(fd)
    if request == "LOOP_CONFIGURE":
        backing, lo_flags = args
        sc.loop_configure(fd, backing, lo_flags, os.readlink(f"/proc/self/fd/{backing}"))  # type: ignore[arg-type]
        return None
    raise ValueError(f"unknown ioctl {request}")


def _fsconfig(r: _Run, fd: int, cmd: int, key: str | None, value: str | None, aux: int) -> None:
    if cmd != sc.FSCONFIG_CMD_CREATE:
        return sc.fsconfig(fd, cmd, key, value, aux)
    from builder.kernel import kmsg

    log = kmsg.mark()  # overlayfs tells why CMD_CREATE failed only in the kernel log
    try:
        sc.fsconfig(fd, cmd, key, value, aux)
    except sc.SyscallError as e:
        if not e.kmsg:
            e.kmsg = "; ".join(kmsg.since(log, "overlayfs:"))
            log = -1
        raise
    finally:
        if log >= 0:
            os.close(log)
    return None


CALLS: dict[str, Callable[..., object]] = {  # type: ignore[name-defined]
    "fsopen": lambda r, name, fl: sc.fsopen(name, fl),
    "fsconfig": _fsconfig,
    "fsmount": lambda r, fd, fl, attrs: sc.fsmount(fd, fl, attrs),
    "open_tree": lambda r, dfd, path, fl: sc.open_tree(dfd, path, fl),
    "move_mount": lambda r, f, fp, t, tp, fl: sc.move_mount(f, fp, t, tp, fl),
    "mount_setattr": lambda r, dfd, path, fl, aset, aclr, prop, userns=0: sc.mount_setattr(dfd, path, fl, aset, aclr,
                                                                                           prop, userns),
    "openat": lambda r, dfd, path, fl, mode: os.open(path, fl, mode, dir_fd=_dirfd(dfd)),
    "openat2": lambda r, dfd, path, fl, resolve: sc.openat2(dfd, path, fl, resolve),
    "mkdirat": _mkdirat,
    "mknodat": _mknodat,
    "symlinkat": lambda r, link, dfd, name: os.symlink(link, name, dir_fd=_dirfd(dfd)),
    "unlinkat": lambda r, dfd, name, fl: os.unlink(name, dir_fd=_dirfd(dfd)),
    "fchownat": lambda r, dfd, name, uid, gid, fl: os.chown(name, uid, gid, dir_fd=_dirfd(dfd),
                                                             follow_symlinks=False),
    "fchmod": lambda r, fd, mode: os.fchmod(fd, mode),
    "fchown": lambda r, fd, uid, gid: os.fchown(fd, uid, gid),
    "write": _write,
    "ioctl": _ioctl,
    "setns": lambda r, fd, fl: sc.setns(fd, fl),
    "unshare": lambda r, fl: sc.unshare(fl),
    "fchdir": lambda r, fd: os.fchdir(fd),
    "chdir": lambda r, path: os.chdir(path),
    "pivot_root": lambda r, new, old: sc.pivot_root(new, old),
    "umount2": lambda r, target, fl: sc.umount2(target, fl),
    "clone": _clone,
    "kill": lambda r, pid, sig: os.kill(pid, sig),
    "waitpid": lambda r, pid, options: _reap(r, pid),
}


def _build_error(plan: Plan, failure: StepFailed) -> BuildError:
    step = plan.steps[failure.index]
    err = failure.error
    origin = _overlay_key(step, err.kmsg) or step.origin
    where = f"{origin} " if origin else ""
    message = f"{where}(step {failure.index + 1}, {strace_line(step)}) failed: {err.errname} ({err.strerror})"
    if err.kmsg:
        message += f"; kernel says: {err.kmsg}"
    error = BuildError(message, _hint(step, err))
    error.step = failure.index  # type: ignore[attr-defined]
    error.errno = err.errno  # type: ignore[attr-defined]
    return error


# overlayfs's words for a problem with the upper directory (its workdir is a sibling of it)
_UPPER_WORDS = ("upper", "workdir", "conflicting", "overlapping")


def _overlay_key(step: Step, kmsg: str) -> str | None:
    """The recipe key an overlayfs complaint is about: root.upper where it names the upper (or a
    layer that overlaps it), else None (the step's own origin)."""
    if step.call == "fsconfig" and kmsg.startswith("overlayfs:") and any(w in kmsg for w in _UPPER_WORDS):
        return "root.upper"
    return None


def _hint(step: Step, err: sc.SyscallError) -> str:
    name = err.errname
    if _overlay_key(step, err.kmsg) and ("conflicting" in err.kmsg or "overlapping" in err.kmsg):
        return ("a layer and the upper directory are the same directory or inside one another (also through "
                "a bind mount or a symlink): keep the upper outside every layer")
    if step.call == "fsconfig" and name == "EINVAL" and not err.kmsg:
        return "overlayfs logs its reason to the kernel log only, which nsbuild cannot read here: see `dmesg | tail`"
    if step.call == "openat" and step.args[1] == "/dev/loop-control" and name == "ENOENT":
        return "image layers need loop devices: load the driver with `modprobe loop`"
    if step.call == "openat2" and name == "ENOENT":
        return "the mount point does not exist inside the sandbox and cannot be created there"
    if step.call == "mount_setattr" and len(step.args) > 6 and name in ("EINVAL", "EPERM"):  # idmapped
        return ("the filesystem of this bind's source (or, with recursive, of a mount under it) cannot be idmapped: "
                "ext4, xfs, btrfs, tmpfs and overlayfs can; drop idmap, or set recursive = false" if name == "EINVAL"
                else "the source is an idmapped mount already, or this user may not idmap its filesystem")
    if step.call == "clone" and name in ("ENOSPC", "EPERM", "EUSERS"):
        return "user namespaces are limited here: see sysctl user.max_user_namespaces"
    if name == "EPERM":
        return "nsbuild needs root (CAP_SYS_ADMIN)"
    if name == "ENODEV":
        return "the kernel does not know this filesystem type; is its module available?"
    return ""


def execute(plan: Plan) -> int:
    """Run `plan`; return the fd of its result (the mount namespace), close-on-exec."""
    return _Run(plan).run()


def execute_many(plan: Plan, count: int, workers: int = 0) -> Iterator[int]:
    """Run `plan` `count` times; yield each result fd (close-on-exec) as it is made.

    Forked workers (one per allowed CPU unless `workers` says) each run every step themselves,
    host and child steps alike, and go back to the host's mount namespace (setns also resets
    root and cwd) before their next round: a fork per worker instead of one per namespace. The
    first failure ends the batch with the BuildError a single build would raise.
    """
    workers = max(1, min(count, workers or len(os.sched_getaffinity(0))))
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    socks, pids = [], []
    try:
        for share in shares:
            ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - a worker; reports over the socket
                ours.close()
                for other in socks:
                    other.close()
                _worker(plan, share, theirs)
            theirs.close()
            socks.append(ours)
            pids.append(pid)
        left = list(shares)
        while any(left):
            for i, sock in enumerate(socks):  # round robin: the workers go at the same pace
                if left[i]:
                    left[i] -= 1
                    yield _receive(sock)
    finally:
        for sock in socks:
            sock.close()  # a worker still sending gets EPIPE and stops
        for pid in pids:
            os.waitpid(pid, 0)


def _worker(plan: Plan, count: int, sock: _socket.socket) -> None:  # pragma: no cover - runs forked
    try:
        for _ in range(count):
            fd = _Run(plan, inline=True).run()  # returns to the host's namespace after each round
            _send_fds(sock, b"ok", [fd])
            os.close(fd)
    except BuildError as e:
        sock.send(marshal.dumps({"message": str(e), "hint": e.hint, "step": getattr(e, "step", None)}))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        sock.send(marshal.dumps({"message": f"batch worker: {e!r}", "hint": "", "step": None}))
    finally:
        os._exit(0)


def _receive(sock: _socket.socket) -> int:
    msg, fds = _recv_fds(sock, 1)
    if msg == b"ok" and len(fds) == 1:
        return fds[0]
    for fd in fds:
        os.close(fd)
    info = marshal.loads(msg) if msg else {"message": "a batch worker died", "hint": "", "step": None}
    error = BuildError(info["message"], info["hint"])
    error.step = info["step"]  # type: ignore[attr-defined]
    raise error
