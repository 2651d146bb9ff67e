"""What the running kernel can do, from side-effect-free probes, and strategy choice."""
from __future__ import annotations

import errno
import os
import re
from dataclasses import asdict, dataclass

from builder.errors import UsageError

STRATEGIES = ("fsmount-namespace", "open-tree-namespace", "unshare")


@dataclass(frozen=True)
class Features:
    release: str
    new_mount_api: bool        # fsopen & co (5.2+), mount_setattr (5.12+)
    fsmount_namespace: bool    # FSMOUNT_NAMESPACE (7.1+)
    open_tree_namespace: bool  # OPEN_TREE_NAMESPACE (7.0+)
    erofs_file: bool = False   # erofs mounts a regular file, no loop device (CONFIG_EROFS_FS_BACKED_BY_FILE)
    userns: str = ""           # built in a user namespace (rootless): "single" or "range" mapping, "" not
    probes: tuple[tuple[str, str], ...] = ()  # probe -> errno name, for `doctor`

    @property
    def version(self) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", self.release)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    @property
    def overlay_fd_layers(self) -> bool:
        """overlayfs takes lowerdir+/upperdir/workdir as fds (6.13+)."""
        return self.version >= (6, 13)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["probes"] = dict(self.probes)
        d["overlay_fd_layers"] = self.overlay_fd_layers
        return d


def probe(erofs: bool = False) -> Features:
    """Ask the kernel (KERNEL-NOTES.md): EBADF means the flag is known, EINVAL/EPERM/ENOSYS not.

    erofs=True also asks whether erofs mounts regular files (only recipes with erofs images
    need to know, and the probe loads the erofs module).
    """
    from builder.kernel import syscalls

    names = ("fsmount", "fsmount-namespace", "open-tree-namespace") + (("erofs-file",) if erofs else ())
    results = {name: syscalls.probe_errno(name) for name in names}
    names = tuple((k, errno.errorcode.get(v, str(v)) if v else "OK") for k, v in results.items())
    api = results["fsmount"] != errno.ENOSYS
    release = os.uname().release
    # Unknown flags fail with EINVAL before any permission check, so EPERM from open_tree means
    # "known". fsmount checks permission first: unprivileged, only the version can tell.
    fsmount_ns = results["fsmount-namespace"] == errno.EBADF or (
        results["fsmount-namespace"] == errno.EPERM and Features(release, api, False, False).version >= (7, 1))
    return Features(
        release=release,
        new_mount_api=api,
        fsmount_namespace=api and fsmount_ns,
        open_tree_namespace=api and results["open-tree-namespace"] in (errno.EBADF, errno.EPERM),
        # EINVAL: the file was read (and is no erofs image); ENOTBLK: only block devices
        erofs_file=erofs and results["erofs-file"] == errno.EINVAL,
        userns=userns_mapping(),
        probes=names,
    )


def userns_mapping() -> str:
    """The mapping of this process's user namespace: "" (the initial one), "single" (one id, as
    `unshare -Ur`) or "range" (subordinate ids too)."""
    try:
        with open("/proc/self/uid_map") as f:
            lines = [line.split() for line in f]
    except OSError:
        return ""
    if lines == [["0", "0", "4294967295"]]:
        return ""
    return "single" if sum(int(line[2]) for line in lines) == 1 else "range"


def supported(features: Features, strategy: str) -> bool:
    if strategy == "fsmount-namespace":
        return features.fsmount_namespace and features.open_tree_namespace
    if strategy == "open-tree-namespace":
        return features.open_tree_namespace
    return features.new_mount_api and features.version >= (5, 12)


def pick_strategy(features: Features, requested: str = "auto") -> str:
    """The best strategy the kernel supports, or the requested one if it is supported."""
    if requested == "auto":
        for strategy in STRATEGIES:
            if supported(features, strategy):
                return strategy
        raise UsageError(f"kernel {features.release} lacks the new mount API (mount_setattr, Linux 5.12+)",
                         "nsbuild needs Linux 5.12 or newer")
    if requested not in STRATEGIES:
        raise UsageError(f"unknown strategy '{requested}'", "use auto, " + ", ".join(STRATEGIES))
    if not supported(features, requested):
        need = {"fsmount-namespace": "7.1", "open-tree-namespace": "7.0", "unshare": "5.12"}[requested]
        raise UsageError(f"strategy '{requested}' needs Linux {need}+, but kernel {features.release} lacks it",
                         "use --strategy auto")
    return requested
