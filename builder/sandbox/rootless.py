"""The user namespace of a rootless nsbuild: which ids it maps, and what cannot be built in it.

With ranges in /etc/subuid and /etc/subgid, the user is root of the namespace and the subordinate
ids are 1, 2, ... after it (podman's layout), written by newuidmap/newgidmap (Debian's uidmap),
the setuid helpers that check the ranges: nsbuild has no privileged helper of its own. Without a
range only the user is mapped (as root), as `unshare -Ur` does: files of other owners show as
nobody, and chown to any other id fails.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from builder.errors import NsbuildError, Problem, RecipeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from builder.recipe.model import Recipe

SUBID_FILES = {"uid": "/etc/subuid", "gid": "/etc/subgid"}
HELPERS = {"uid": "newuidmap", "gid": "newgidmap"}


def user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _names() -> tuple[str, ...]:
    """How the user may be named in /etc/subuid and /etc/subgid: by login name or by uid."""
    import pwd

    try:
        return (str(os.getuid()), pwd.getpwuid(os.getuid()).pw_name)
    except KeyError:
        return (str(os.getuid()),)


def subordinate_ranges(kind: str) -> list[tuple[int, int]]:
    """(first, count) ranges of subordinate ids of this user in /etc/subuid or /etc/subgid."""
    names = _names()
    ranges = []
    try:
        with open(SUBID_FILES[kind]) as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] in names and fields[1].isdigit() and fields[2].isdigit():
                    if int(fields[2]) > 0:
                        ranges.append((int(fields[1]), int(fields[2])))
    except OSError:
        pass
    return ranges


def mapping() -> str:
    """"range" when the user has subordinate uids and gids and the uidmap helpers are installed,
    else "single"."""
    if all(subordinate_ranges(k) and shutil.which(HELPERS[k], path="/usr/bin:/bin:/usr/sbin") for k in HELPERS):
        return "range"
    return "single"


def map_lines(kind: str, ranges: list[tuple[int, int]]) -> list[str]:
    """newuidmap's arguments: the user as 0, the ranges as 1, 2, ..."""
    outer = os.getuid() if kind == "uid" else os.getgid()
    args, inside = ["0", str(outer), "1"], 1
    for first, count in ranges:
        args += [str(inside), str(first), str(count)]
        inside += count
    return args


def write_range_maps(pid: int) -> None:
    """Map the user and its subordinate ranges into `pid`'s new user namespace (from outside it)."""
    for kind in ("uid", "gid"):
        helper = shutil.which(HELPERS[kind], path="/usr/bin:/bin:/usr/sbin") or HELPERS[kind]
        proc = subprocess.run([helper, str(pid)] + map_lines(kind, subordinate_ranges(kind)),
                              capture_output=True, text=True)
        if proc.returncode:
            raise NsbuildError(f"{HELPERS[kind]} failed: {proc.stderr.strip() or proc.returncode}",
                               f"check your ranges in {SUBID_FILES[kind]}, or remove them to map only yourself")


def write_single_maps(uid: int, gid: int) -> None:
    """Map only the user (outer ids `uid`, `gid`, taken before the unshare: after it they read as
    nobody), as root, into this process's new user namespace (what `unshare -Ur` does)."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")  # the kernel's condition for an unprivileged gid_map
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def refuse_unbuildable(recipe: Recipe) -> None:
    """What the kernel will not mount in a user namespace: one clear error (exit 2) naming each entry."""
    problems = [Problem(layer.origin, f"an {layer.fstype or 'image'} image cannot be mounted by a user who is "
                        "not root (the kernel mounts erofs, squashfs and ext4 only for the initial user namespace)",
                        "unpack the image into a directory or a tar archive layer, or build as root")
                for layer in recipe.layers if layer.kind == "image"]
    problems += [Problem(m.origin, f"a {m.type} mount needs its own {'network' if m.type == 'sysfs' else 'IPC'} "
                         "namespace when built by a user who is not root",
                         f"bind the host's {'/sys' if m.type == 'sysfs' else '/dev/mqueue'} instead, or build "
                         "as root")
                 for m in recipe.mounts if m.type in ("sysfs", "mqueue")]
    problems += [Problem(f"{m.origin}.idmap", "an idmapped bind needs privilege over the source's filesystem, "
                         "which a user who is not root does not have (the kernel refuses with EPERM)",
                         "drop idmap: rootless, your own files appear as root of the sandbox already")
                 for m in recipe.mounts if m.idmap]
    if problems:
        raise RecipeError(recipe.file, problems)


def report(holder: int | None, rootless: bool) -> dict[str, object]:
    """`nsbuild doctor`: which ids a rootless build maps, how to get a range of them, the holder's pid."""
    if not rootless:
        return {"mapping": None, "summary": "none: root builds in the initial user namespace", "hint": "",
                "uids": [], "gids": [], "holder": None}
    uids, gids = subordinate_ranges("uid"), subordinate_ranges("gid")
    if mapping() == "range":
        summary = ("range: you are root of the user namespace, subordinate ids 1... are "
                   + ", ".join(f"{a}-{a + n - 1}" for a, n in uids) + " (newuidmap/newgidmap)")
        hint = ""
    else:
        summary = ("single: only you are mapped (as root): files of other owners appear as nobody, "
                   "chown to other ids fails")
        missing = [f for f, r in (("/etc/subuid", uids), ("/etc/subgid", gids)) if not r]
        hint = ("for multi-owner trees get a range: sudo usermod --add-subuids 100000-165535 "
                f"--add-subgids 100000-165535 {user_name()}"
                + (f" (none in {' and '.join(missing)})" if missing else "; and install uidmap (newuidmap, newgidmap)"))
    return {"mapping": mapping(), "summary": summary, "hint": hint, "uids": uids, "gids": gids, "holder": holder}
