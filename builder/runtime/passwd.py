"""The users of a sandbox: its own /etc/passwd and /etc/group, read safely by nsbuild as root.

Runs inside the sandbox's mount namespace (contain.enter), where the files are hostile input:
nothing here imports, follows magic links, opens devices, or raises on what the files say.
"""
from __future__ import annotations

import os

from builder.kernel import syscalls as sc
from builder.errors import UsageError


def _read_db(path: str, host_proc: int | None) -> list[list[str]]:
    """/etc/passwd or /etc/group of the sandbox (this process's root is the sandbox's), parsed here,
    never through NSS (which would load the sandbox's libnss modules into this root process).

    Resolved in the sandbox's root without magic links (its /proc shows the host's processes, whose
    /proc/PID/root leads to the host), opened O_PATH first and read only if it is a regular file:
    a device node is never opened. The reopen goes through the host's /proc, held from before setns."""
    if host_proc is None:
        return []
    try:
        root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = sc.openat2(root, path.lstrip("/"), os.O_PATH | os.O_CLOEXEC,
                            sc.flags(("RESOLVE_IN_ROOT", "RESOLVE_NO_MAGICLINKS")))
        finally:
            os.close(root)
        try:
            if os.fstat(fd).st_mode & 0o170000 != 0o100000:
                return []
            data_fd = os.open(f"self/fd/{fd}", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=host_proc)
        finally:
            os.close(fd)
        try:
            data = os.read(data_fd, 1 << 20)
        finally:
            os.close(data_fd)
    except OSError:
        return []
    return rows(data)


def rows(data: bytes) -> list[list[str]]:
    """The entries of a passwd or group file, split at ':'."""
    return [line.split(":") for line in data.decode(errors="replace").splitlines()
            if line and not line.startswith("#")]


def _id(text: str) -> int | None:
    """A uid or gid as written in a passwd or group file; None unless plain ASCII digits in range
    (str.isdigit() takes "²", which int() refuses)."""
    if text.isascii() and text.isdigit() and len(text) <= 10 and int(text) < 0xFFFFFFFF:
        return int(text)
    return None


def resolve_user(user: str, where: str, host_proc: int | None) -> tuple[int, int, list[int], str | None, str | None]:
    """'root', a NAME of the sandbox's /etc/passwd or 'UID[:GID]' -> uid, gid, groups, home, name.
    Total: the sandbox's files are hostile input, and nothing after setns may raise unplanned."""
    found = account(user, _read_db("/etc/passwd", host_proc))
    if found is None:
        if user == "root":
            return 0, 0, [0], "/root", "root"
        raise UsageError(f"{where}: no user '{user}' in the sandbox's /etc/passwd",
                         "name a user the sandbox has, or give UID[:GID]")
    uid, gid, name, home = found
    groups = [gid]
    if name:
        for e in _read_db("/etc/group", host_proc):
            group = _id(e[2]) if len(e) >= 4 else None
            if group is not None and name in e[3].split(",") and group not in groups and len(groups) < 65536:
                groups.append(group)
    return uid, gid, groups, home, name


def account(user: str, passwd: list[list[str]]) -> tuple[int, int, str | None, str | None] | None:
    """uid, gid, name and home of 'root', a NAME or 'UID[:GID]' in the entries of a passwd file;
    None for a name it lacks. Shared with the build (idmap.run_ids), which resolves [run] user too."""
    valid = [e for e in passwd if len(e) >= 7 and _id(e[2]) is not None and _id(e[3]) is not None]
    uid_text, colon, gid_text = user.partition(":")
    uid_given, gid_given = _id(uid_text), _id(gid_text)
    if uid_given is not None and (not colon or gid_given is not None):
        entry = next((e for e in valid if _id(e[2]) == uid_given), None)
        gid = gid_given if gid_given is not None else _id(entry[3]) if entry else uid_given
        return uid_given, gid, entry[0] if entry else None, entry[5] if entry else None  # type: ignore[return-value]
    entry = next((e for e in valid if e[0] == user), None)
    if entry is None:
        return None
    return _id(entry[2]), _id(entry[3]), entry[0], entry[5]  # type: ignore[return-value]
