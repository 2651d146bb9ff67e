"""A process born in new namespaces, kept waiting: the way to a user namespace with a chosen mapping.

An idmapped mount (mount_setattr MOUNT_ATTR_IDMAP) takes an fd of a user namespace that carries the
mapping, and only a process can create one. As util-linux's libmount (hook_idmap.c) and the kernel's
mount_setattr selftests do it: a forked child unshares CLONE_NEWUSER and waits while its parent
writes /proc/PID/uid_map and gid_map and opens /proc/PID/ns/user; then the parent kills and reaps
it. The namespace lives on in the fd (and in the mounts idmapped with it).
"""
from __future__ import annotations

import _socket  # socket.py costs ~5 ms to import
import errno
import os

from builder.kernel import syscalls as sc


def spawn(flags: int) -> tuple[int, int]:
    """Fork a child that unshares `flags` (e.g. CLONE_NEWUSER) and then waits; return its pid and an
    fd that keeps it waiting: once that fd is closed (also when this process dies) the child exits,
    so it never outlives its parent. The caller reaps it (os.waitpid). Raises SyscallError("clone")
    with the child's errno when it could not unshare."""
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)  # close-on-exec, as Python makes them
    try:
        pid = os.fork()
    except BaseException:
        ours.close()
        theirs.close()
        raise
    if pid == 0:  # pragma: no cover - the child: single-threaded, so unshare(CLONE_NEWUSER) may work
        try:
            ours.close()
            try:
                sc.unshare(flags)
                theirs.send(b"\0")
            except OSError as e:
                theirs.send(bytes([min(e.errno or 5, 255)]))
            else:
                theirs.recv(1)  # until the parent closes its end or kills us
        finally:
            os._exit(0)
    theirs.close()
    try:
        answer = ours.recv(1)
    except BaseException:
        answer = b""
    if answer != b"\0":
        ours.close()
        os.waitpid(pid, 0)
        raise sc.SyscallError("clone", f"{flags:#x}", answer[0] if answer else errno.ECHILD)
    return pid, ours.detach()
