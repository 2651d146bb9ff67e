"""The calls a plan can contain: one entry per syscall, owning its parameters and their kinds, how
the executor makes the call, and how a step of it is shown (strace-like text, JSON) and exported
for bench/floor.c. A new syscall is one Call in CALLS plus its use in the planner.

Plain classes and functions: the executor imports this module on the warm-build path.
"""
from __future__ import annotations

import os
from _json import encode_basestring as _quote  # json.dumps's own quoting, without importing json (re)

from builder.kernel import syscalls as sc
from builder.plan.steps import Fd, FdPath, Flags, LoopPath, ProcPath, Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    from builder.plan.steps import Arg

# What each kind of parameter takes. Values are matched by exact type: Fd, FdPath, LoopPath, Value
# and ProcPath are str subclasses, resolved by the executor when the step runs.
KINDS: dict[str, tuple[type, ...]] = {
    "fd": (Fd,),                            # a symbolic fd ("%root") or AT_FDCWD
    "path": (str, FdPath, LoopPath, ProcPath),  # a path; "/proc/self/fd/N", "/dev/loopN", "/proc/PID/..."
    "pid": (Value,),                        # a process an earlier step made ("#userns0")
    "str": (str,),
    "str?": (str, type(None), FdPath, LoopPath),  # fsconfig's key and value
    "flags": (Flags,),                      # flag names, OR-ed
    "mode": (int,),                         # shown in octal
    "int": (int,),
    "aux": (int, Fd),                       # fsconfig's aux: an fd for FSCONFIG_SET_FD
    "bytes": (bytes,),
}


def show(value: object, kind: str = "") -> str:
    """One argument as strace would print it."""
    t = type(value)
    if t is Fd:
        return str(value)
    if t is FdPath:
        return f'"/proc/self/fd/{value}"'
    if t is LoopPath:
        return f'"/dev/loop{value}"'
    if t is ProcPath:
        return f'"/proc/{value}"'
    if t is Value:
        return str(value)
    if t is Flags:
        return "|".join(value) if value else "0"  # type: ignore[arg-type]
    if value is None:
        return "NULL"
    if t is bytes:
        more = "..." if len(value) > 40 else ""  # type: ignore[arg-type]
        return _quote(value[:40].decode(errors="replace")) + f"{more} ({len(value)} bytes)"  # type: ignore
    if t is str:
        return _quote(value)
    if kind == "mode" and value > 7:  # type: ignore[operator]
        return oct(value).replace("0o", "0")  # type: ignore[arg-type]
    return str(value)


def as_json(value: object) -> Any:
    t = type(value)
    if t is Fd:
        return {"fd": str(value)}
    if t is FdPath:
        return {"fd_path": str(value)}
    if t is LoopPath:
        return {"loop_path": str(value)}
    if t is ProcPath:
        return {"proc_path": str(value)}
    if t is Value:
        return {"value": str(value)}
    if t is Flags:
        return {"flags": list(value)}  # type: ignore[call-overload]
    if t is bytes:
        return {"bytes": value.decode(errors="replace")}  # type: ignore[union-attr]
    return value


def floor_arg(value: object, slot: Callable[[str], int]) -> str:
    """One argument in floor.c's line format (f:slot, p:slot, i:number, s:hex, n)."""
    t = type(value)
    if t is Fd:
        return f"f:{slot(value)}"  # type: ignore[arg-type]
    if t is FdPath:
        return f"p:{slot(value)}"  # type: ignore[arg-type]
    if t is Flags:
        return f"i:{sc.flags(value)}"  # type: ignore[arg-type]
    if value is None:
        return "n"
    if t in (str, bytes):
        return "s:" + (value.encode() if t is str else value).hex()  # type: ignore[union-attr]
    if t in (LoopPath, Value, ProcPath):
        raise ValueError("floor.c takes no loop devices or child processes")
    return f"i:{value}"


class Call:
    """One syscall: its parameters ("name:kind ..."), the function the executor makes it with
    (called with the run, then the resolved arguments), and optional custom text and floor export."""

    __slots__ = ("name", "spec", "run", "text", "floor", "more")

    def __init__(self, name: str, params: str, run: Callable[..., object],
                 text: Callable[[tuple], str] | None = None,
                 floor: Callable[[tuple, Callable[[str], int]], list[str]] | None = None,
                 more: dict[str, str] | None = None) -> None:
        self.name, self.spec, self.run, self.text, self.floor = name, params, run, text, floor
        self.more = more or {}  # ioctl: the parameters that follow, by request

    def params_for(self, args: tuple) -> tuple[tuple[str, str], ...]:
        """(name, kind) of each parameter; parsed when asked (a warm build only runs calls)."""
        params = _params(self.spec)
        if not self.more or len(args) < len(params):
            return params
        request = args[len(params) - 1]
        if request not in self.more:
            raise TypeError(f"{self.name}(): unknown request {request!r}")
        return params + _params(self.more[request])  # type: ignore[index]

    def check(self, args: tuple) -> None:
        """A planner mistake, caught when the step is made, not when it runs."""
        params = self.params_for(args)
        least = len(params) - self.spec.count("[")  # "[name:kind]": a last parameter that may be left out
        if not least <= len(args) <= len(params):
            raise TypeError(f"{self.name}() takes {len(params)} arguments, the planner gave {len(args)}")
        for (name, kind), arg in zip(params, args):
            if type(arg) not in KINDS[kind]:
                raise TypeError(f"{self.name}(): {name} ({kind}) cannot be {arg!r}")

    def strace(self, args: tuple) -> str:
        if self.text:
            return self.text(args)
        shown = [show(a, kind) for (_, kind), a in zip(self.params_for(args), args)]
        return f"{self.name}({', '.join(shown)})"

    def json(self, args: tuple) -> list:
        return [as_json(a) for a in args]

    def floor_args(self, args: tuple, slot: Callable[[str], int]) -> list[str]:
        return self.floor(args, slot) if self.floor else [floor_arg(a, slot) for a in args]


_PARSED: dict[str, tuple[tuple[str, str], ...]] = {}


def _params(spec: str) -> tuple[tuple[str, str], ...]:
    if spec not in _PARSED:
        _PARSED[spec] = tuple(tuple(p.strip("[]").split(":")) for p in spec.split())  # type: ignore[misc]
    return _PARSED[spec]


def _dirfd(fd: int) -> int | None:
    return None if fd == sc.AT_FDCWD else fd


# -- how the executor makes each call: fn(run, *args); `run` records what to undo on failure --------

def _mkdirat(r: Any, dfd: int, name: str, mode: int) -> None:
    os.mkdir(name, mode, dir_fd=_dirfd(dfd))
    r.created(dfd, name, True)


def _mknodat(r: Any, dfd: int, name: str, kind: int, mode: int, major: int, minor: int) -> None:
    os.mknod(name, kind | mode, os.makedev(major, minor), dir_fd=_dirfd(dfd))
    r.created(dfd, name, False)


def _write(r: Any, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _ioctl(r: Any, fd: int, request: str, *args: Any) -> int | None:
    if request == "LOOP_CTL_GET_FREE":
        return sc.loop_get_free(fd)
    backing, lo_flags, name = args  # LOOP_CONFIGURE; `name` is what losetup shows as the backing file
    sc.loop_configure(fd, backing, lo_flags, name)
    return None


def _fsconfig(r: Any, fd: int, cmd: int, key: str | None, value: str | None, aux: int) -> None:
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


def _clone(r: Any, flags: int) -> int:
    """A child in new namespaces, waiting (kernel/userns.py); reaped by a waitpid step, or on failure."""
    from builder.kernel import userns

    pid, hold = userns.spawn(flags)
    r.children[pid] = hold
    r.undo.append(lambda: _reap(r, pid, kill=True))
    return pid


def _reap(r: Any, pid: int, kill: bool = False) -> None:
    if pid in r.children:  # an unreaped child keeps its pid: it cannot have gone to another process
        if kill:
            os.kill(pid, sc.FLAGS["SIGKILL"])
        os.waitpid(pid, 0)
        os.close(r.children.pop(pid))


def _move_mount(r: Any, f: int, fp: str, t: int, tp: str, fl: int) -> None:
    sc.move_mount(f, fp, t, tp, fl)
    # the persist segment attaches to host paths: detached again if a later step fails. Not a
    # mount slid beneath another: no path reaches it alone (state.py removes the pair instead)
    if r.persisting and not fl & sc.FLAGS["MOVE_MOUNT_BENEATH"]:
        r.attached(tp)


# -- custom renderings ----------------------------------------------------------------------------

def _mknodat_text(args: tuple) -> str:  # mknodat(dfd, name, S_IFCHR|0666, makedev(1, 3))
    dfd, name, kind, mode, major, minor = args
    return f"mknodat({show(dfd)}, {show(name)}, {show(kind)}|{mode:04o}, makedev({major!r}, {minor!r}))"


def _mknodat_floor(args: tuple, slot: Callable[[str], int]) -> list[str]:
    dfd, name, kind, mode, major, minor = args
    return [floor_arg(dfd, slot), floor_arg(name, slot), f"i:{sc.flags(kind) | mode}",
            f"i:{os.makedev(major, minor)}"]


def _mount_setattr_text(args: tuple) -> str:
    dfd, path, flags, aset, aclr, prop, *userns = args
    idmap = f", userns_fd={show(userns[0])}" if userns else ""  # MOUNT_ATTR_IDMAP
    attr = f"{{attr_set={show(aset)}, attr_clr={show(aclr)}, propagation={show(prop)}{idmap}}}"
    return f"mount_setattr({show(dfd)}, {show(path)}, {show(flags)}, {attr})"


CALLS: dict[str, Call] = {c.name: c for c in (
    Call("fsopen", "fstype:str flags:flags", lambda r, name, fl: sc.fsopen(name, fl)),
    Call("fsconfig", "fd:fd cmd:flags key:str? value:str? aux:aux", _fsconfig),
    Call("fsmount", "fd:fd flags:flags attrs:flags", lambda r, fd, fl, attrs: sc.fsmount(fd, fl, attrs)),
    Call("open_tree", "dfd:fd path:path flags:flags", lambda r, dfd, path, fl: sc.open_tree(dfd, path, fl)),
    Call("move_mount", "from:fd from_path:path to:fd to_path:path flags:flags", _move_mount),
    Call("mount_setattr", "dfd:fd path:path flags:flags attr_set:flags attr_clr:flags propagation:flags [userns_fd:fd]",
         lambda r, dfd, path, fl, aset, aclr, prop, userns=0: sc.mount_setattr(dfd, path, fl, aset, aclr, prop, userns),
         text=_mount_setattr_text),
    Call("openat", "dfd:fd path:path flags:flags mode:mode",
         lambda r, dfd, path, fl, mode: os.open(path, fl, mode, dir_fd=_dirfd(dfd))),
    Call("openat2", "dfd:fd path:path flags:flags resolve:flags",
         lambda r, dfd, path, fl, resolve: sc.openat2(dfd, path, fl, resolve)),
    Call("mkdirat", "dfd:fd name:path mode:mode", _mkdirat),
    Call("mknodat", "dfd:fd name:path type:flags mode:mode major:int minor:int", _mknodat,
         text=_mknodat_text, floor=_mknodat_floor),
    Call("symlinkat", "target:str dfd:fd name:path",
         lambda r, link, dfd, name: os.symlink(link, name, dir_fd=_dirfd(dfd))),
    Call("unlinkat", "dfd:fd name:path flags:flags", lambda r, dfd, name, fl: os.unlink(name, dir_fd=_dirfd(dfd))),
    Call("fchownat", "dfd:fd name:path uid:int gid:int flags:flags",
         lambda r, dfd, name, uid, gid, fl: os.chown(name, uid, gid, dir_fd=_dirfd(dfd), follow_symlinks=False)),
    Call("fchmod", "fd:fd mode:mode", lambda r, fd, mode: os.fchmod(fd, mode)),
    Call("fchown", "fd:fd uid:int gid:int", lambda r, fd, uid, gid: os.fchown(fd, uid, gid)),
    Call("write", "fd:fd data:bytes", _write),
    Call("ioctl", "fd:fd request:str", _ioctl,
         more={"LOOP_CTL_GET_FREE": "", "LOOP_CONFIGURE": "backing:fd lo_flags:flags name:path"}),
    Call("setns", "fd:fd nstype:flags", lambda r, fd, fl: sc.setns(fd, fl)),
    Call("unshare", "flags:flags", lambda r, fl: sc.unshare(fl)),
    Call("fchdir", "fd:fd", lambda r, fd: os.fchdir(fd)),
    Call("chdir", "path:path", lambda r, path: os.chdir(path)),
    Call("pivot_root", "new_root:path put_old:path", lambda r, new, old: sc.pivot_root(new, old)),
    Call("umount2", "target:path flags:flags", lambda r, target, fl: sc.umount2(target, fl)),
    Call("clone", "flags:flags", _clone),
    Call("kill", "pid:pid signal:flags", lambda r, pid, sig: os.kill(pid, sig)),
    Call("waitpid", "pid:pid options:int", lambda r, pid, options: _reap(r, pid)),
)}


def strace_line(call: str, args: tuple[Arg, ...], out: str | None, ok: tuple[str, ...]) -> str:
    text = CALLS[call].strace(args)
    text = f"{text} = {out}" if out else text
    return text + f" /* {'|'.join(ok)} ok */" if ok else text
