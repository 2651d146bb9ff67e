"""The executor: one loop over a plan's blocks of steps, with a table of open fds.

HOST steps run in this process. NAMESPACE steps change namespaces (setns/unshare/pivot_root):
a single-threaded process runs them itself and then goes back to its own mount namespace, root
and cwd (a fork of Python costs ~2.5 ms); a process with threads cannot change namespaces, so
there a forked child runs them and sends back the fds the block hands back. A RETRY block runs
again while its last step fails with EBUSY. The PERSIST block runs only through pin(), under
the state directory's lock. On any failure everything done is unwound: fds closed (which frees
detached mounts), directories and nodes created on host paths removed, mounts attached to host
paths by the PERSIST block detached; then BuildError is raised naming the step, the recipe
entry, the errno and the kernel's message (failure.py).
"""
from __future__ import annotations

import _socket  # socket.py costs ~5 ms to import (its enums); send_fds/recv_fds are a few lines
import errno as errnos
import marshal
import os
import struct  # fd arrays for SCM_RIGHTS (array.array would import collections.abc, ~4 ms)

from builder.kernel import syscalls as sc
from builder.plan.calls import CALLS
from builder.plan.steps import (HOST, NAMESPACE, PERSIST, RETRIES, RETRY, Fd, FdPath, Flags, LoopPath, Plan, ProcPath,
                                Step, Value, persist_inputs)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

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


def _compile(step: Step) -> tuple:
    spec = []
    for a in step.args:
        t = type(a)
        if t is Fd:
            spec.append((_CONST, sc.AT_FDCWD) if a == "AT_FDCWD" else (_FD, str(a)))
        elif t is FdPath:
            spec.append((_FDPATH, str(a)))
        elif t is LoopPath:
            spec.append((_LOOP, str(a)))
        elif t is Value:
            spec.append((_VALUE, str(a)))
        elif t is ProcPath:
            spec.append((_PROC, tuple(a.split("/", 1))))
        elif t is Flags:
            spec.append((_CONST, sc.flags(a)))  # type: ignore[arg-type]
        else:
            spec.append((_CONST, a))
    return (CALLS[step.call].run, tuple(spec), frozenset(getattr(errnos, n) for n in step.ok), step.out)


def _compiled(plan: Plan, start: int, end: int) -> list[tuple]:
    """Each step as (function, argument specs, errnos that count as success, out), made once per
    plan and only for the steps that run (the persist segment alone, in a batch's parent): flags
    OR-ed, AT_FDCWD resolved, only symbolic fds left to look up when the step runs. A plan with a
    new persist segment (steps.with_persist) keeps the compiled steps before it."""
    done = plan.compiled
    if done is None or len(done) != len(plan.steps):
        done = plan.compiled = ((done or []) + [None] * len(plan.steps))[:len(plan.steps)]
    if start < end and done[start] is None:  # a range is compiled whole: the build's, or the persist segment's
        done[start:end] = [_compile(s) for s in plan.steps[start:end]]
    return done  # type: ignore[return-value]


def _single_threaded() -> bool:
    """setns(CLONE_NEWNS) and unshare need a process of one thread (KERNEL-NOTES.md)."""
    with open("/proc/self/status", "rb") as f:
        return b"\nThreads:\t1\n" in f.read()


class _Home:
    """Where this process was before it ran NAMESPACE steps itself: its mount namespace, root and cwd."""

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


class Run:
    def __init__(self, plan: Plan, inline: bool | None = None) -> None:
        self.plan = plan
        # run NAMESPACE steps in this process, then go back (no fork: a fork of Python costs ~2.5 ms);
        # a process with threads cannot change namespaces, so it forks (None: decide by that)
        self.inline = inline
        self.home: _Home | None = None
        self.fds: dict[str, int] = {}
        self.values: dict[str, int] = {}  # results that are not fds ("#loop0": a loop device number)
        self.children: dict[int, int] = {}  # pid -> the fd that keeps it waiting, of clone steps not yet reaped
        self.undo: list[Undo] = []
        self.persisting = False  # in the PERSIST block: mounts attached to host paths are undone too
        self.fault = _fault()
        self.compiled: list[tuple] = []
        self.kept: dict[str, int] = {}  # fds run() leaves open for the PERSIST block (execute_for_persist)

    def step(self, index: int) -> None:
        if self.fault and self.fault[0] == index:
            raise StepFailed(index, sc.SyscallError(self.plan.steps[index].call, "injected fault", self.fault[1]))
        call, spec, ok, out = self.compiled[index]
        fds, values = self.fds, self.values
        args = [v if k == _CONST else fds[v] if k == _FD else f"/proc/self/fd/{fds[v]}" if k == _FDPATH
                else f"/dev/loop{values[v]}" if k == _LOOP else values[v] if k == _VALUE
                else f"/proc/{values[v[0]]}/{v[1]}" for k, v in spec]
        try:
            result = call(self, *args)
        except OSError as e:
            if e.errno in ok:
                return
            step = self.plan.steps[index]
            if not isinstance(e, sc.SyscallError):
                from builder.plan.failure import detail  # failure.py and render.py only on failure

                e = sc.SyscallError(step.call, detail(step), e.errno or 0)
            err = e
            raise StepFailed(index, err) from None
        if out is None:
            return
        if out[0] == "#":
            self.values[out] = result  # type: ignore[assignment]
            return
        if out in fds:  # a RETRY block's second round
            os.close(fds[out])
        fds[out] = result  # type: ignore[assignment]

    def steps(self, start: int, end: int) -> None:
        for i in range(start, end):
            self.step(i)

    def retried(self, start: int, end: int, errno_name: str) -> None:
        """The block again while its last step fails with `errno_name`: a race lost, not an error."""
        errno = getattr(errnos, errno_name)
        for round_ in range(RETRIES):
            try:
                return self.steps(start, end)
            except StepFailed as e:
                if e.index != end - 1 or e.error.errno != errno or round_ == RETRIES - 1:
                    raise

    def in_namespace(self, start: int, end: int, hands_back: tuple[str, ...]) -> None:
        if self.inline is None:
            self.inline = _single_threaded()
        if not self.inline:
            return self.child(start, end, list(hands_back))
        self.home = _Home()
        try:
            self.steps(start, end)
        finally:
            self.go_home()

    def run(self, keep: tuple[str, ...] = ()) -> int:
        """Every block up to the PERSIST block; returns the result fd. The fds named in `keep` stay open
        too, in self.kept."""
        self.compiled = _compiled(self.plan, 0, self.plan.persist_start())
        old_umask = os.umask(0)  # modes in the plan are exact
        try:
            for kind, start, end, extra in self.plan.blocks:
                if kind == HOST:
                    self.steps(start, end)
                elif kind == NAMESPACE:
                    self.in_namespace(start, end, extra)
                elif kind == RETRY:
                    self.retried(start, end, extra[0])
                elif kind == PERSIST:
                    break
            self.kept = {name: self.fds.pop(name) for name in keep if name in self.fds}
            return self.fds.pop(self.plan.result)
        except BaseException as e:
            self.fail(e)
            raise
        finally:
            self.close()
            os.umask(old_umask)

    def pin(self, nsfd: int, after: dict[int, Callable[[], None]], kept: dict[str, int]) -> None:
        """The PERSIST block, with the result already made (`nsfd`) and the other fds it uses (`kept`,
        from run()); they stay the caller's."""
        self.fds[self.plan.result] = nsfd
        self.fds.update(kept)
        self.persisting = True
        start = self.plan.persist_start()
        self.compiled = _compiled(self.plan, start, len(self.plan.steps))
        try:
            for i in range(start, len(self.plan.steps)):
                self.step(i)
                if i in after:
                    after[i]()
        except BaseException as e:
            self.fail(e)
            raise
        finally:
            for name in (self.plan.result, *kept):
                self.fds.pop(name, None)
            self.close()

    def fail(self, e: BaseException) -> None:
        self.go_home()  # first: undoing what was made on host paths needs the host's namespace
        self.unwind()
        if isinstance(e, StepFailed):
            from builder.plan.failure import build_error

            raise build_error(self.plan, e.index, e.error) from None

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
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
                    self.steps(start, end)
                    send_fds(theirs, b"ok", [self.fds[r] for r in returns])
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
            msg, fds = recv_fds(ours, max(len(returns), 1))
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
        fd = None if dfd == sc.AT_FDCWD else dfd
        if not is_dir:
            self.undo.append(lambda: os.unlink(name, dir_fd=fd))
        elif fd is None:
            self.undo.append(lambda: remove_tree(name))
        else:
            self.undo.append(lambda: os.rmdir(name, dir_fd=fd))

    def attached(self, path: str) -> None:
        """A mount the PERSIST block attached on a host path, detached on failure."""
        self.undo.append(lambda: sc.umount2(path, sc.FLAGS["MNT_DETACH"]))


def send_fds(sock: _socket.socket, msg: bytes, fds: list[int]) -> None:
    sock.sendmsg([msg], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])


def recv_fds(sock: _socket.socket, maxfds: int) -> tuple[bytes, list[int]]:
    msg, ancdata, _, _ = sock.recvmsg(65536, _socket.CMSG_LEN(maxfds * 4), _socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(data) // 4}i", data[:len(data) - len(data) % 4])
    return msg, fds


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


def execute(plan: Plan) -> int:
    """Run `plan`; return the fd of its result (the mount namespace), close-on-exec."""
    return Run(plan).run()


def execute_for_persist(plan: Plan) -> tuple[int, dict[str, int]]:
    """execute(), and the fds that `plan`'s PERSIST block uses besides the result (steps.persist_inputs),
    by name: the caller closes them."""
    run = Run(plan)
    nsfd = run.run(persist_inputs(plan))
    return nsfd, run.kept


def pin(plan: Plan, nsfd: int, after: dict[int, Callable[[], None]] | None = None,
        kept: dict[str, int] | None = None) -> None:
    """Run `plan`'s PERSIST block on `nsfd`, the namespace execute() made (it stays open: the
    caller's), with `kept` from execute_for_persist. `after`: test hooks, called after the step of their index."""
    Run(plan).pin(nsfd, after or {}, kept or {})
