"""The run's own /proc and what it must not show: pid 1 mounts a proc of the new PID namespace over the
sandbox's (only a process inside the namespace can), then makes /proc's kernel knobs and /sys read-only
and hides what podman hides. Every mount is made in the run's private copy of the sandbox's mount
namespace, never in the persisted one."""
from __future__ import annotations

import errno
import os

from builder.kernel import syscalls as sc

# /proc entries podman makes read-only, and those it hides (an empty read-only tmpfs or file over them)
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
MASKED = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats",
          "/proc/acpi", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap")

_RO = ("MOUNT_ATTR_RDONLY", "MOUNT_ATTR_NOSUID", "MOUNT_ATTR_NODEV", "MOUNT_ATTR_NOEXEC")


def own_proc() -> None:
    """A /proc of this PID namespace in place of the sandbox's (which shows the host's processes)."""
    if not _is_dir("/proc"):
        return  # a tree without /proc: nothing shows the host's processes either
    try:
        proc = _new_mount("proc", (), sc.flags(("MOUNT_ATTR_NOSUID", "MOUNT_ATTR_NODEV", "MOUNT_ATTR_NOEXEC")))
    except OSError as e:
        if e.errno != errno.EPERM:
            raise
        # rootless, the kernel lends a new proc only where one is visible already (mount_too_revealing);
        # a recipe without a [[mount]] of /proc has none, and its /proc, a plain directory, shows nothing
        if os.stat("/proc").st_dev == os.stat("/").st_dev:
            return
        raise
    try:
        try:  # private first, so the unmount is this run's alone whatever the recipe made /proc
            sc.mount_setattr(sc.AT_FDCWD, "/proc", 0, propagation=sc.FLAGS["MS_PRIVATE"])
            sc.umount2("/proc", sc.FLAGS["MNT_DETACH"])
        except OSError:
            pass  # /proc is a plain directory, not a mount
        sc.move_mount(proc, "", sc.AT_FDCWD, "/proc", sc.FLAGS["MOVE_MOUNT_F_EMPTY_PATH"])
    finally:
        os.close(proc)


def mask() -> None:
    """/proc's kernel knobs read-only and its revealing files hidden, as podman does; /sys read-only."""
    ro = sc.flags(_RO)
    for name in PROC_READONLY:
        path = "/proc/" + name
        try:
            fd = sc.open_tree(sc.AT_FDCWD, path, sc.FLAGS["OPEN_TREE_CLONE"] | sc.FLAGS["OPEN_TREE_CLOEXEC"])
        except OSError:
            continue  # not on this kernel (e.g. no /proc/bus), or no /proc at all
        try:
            sc.mount_setattr(fd, "", sc.FLAGS["AT_EMPTY_PATH"], ro)
            sc.move_mount(fd, "", sc.AT_FDCWD, path, sc.FLAGS["MOVE_MOUNT_F_EMPTY_PATH"])
        finally:
            os.close(fd)
    try:  # sysfs writes reach the host's devices and kernel: read-only in every run
        sc.mount_setattr(sc.AT_FDCWD, "/sys", sc.FLAGS["AT_RECURSIVE"], ro)
    except OSError:
        pass  # no sysfs mounted at /sys
    present = [p for p in MASKED if os.path.lexists(p)]
    if not present:
        return
    empty = _new_mount("tmpfs", (("size", "4k"), ("mode", "0555")), ro & ~sc.FLAGS["MOUNT_ATTR_RDONLY"])
    try:
        os.close(os.open("file", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o444, dir_fd=empty))
        sc.mount_setattr(empty, "", sc.FLAGS["AT_EMPTY_PATH"], ro)  # its clones are read-only too
        for path in present:
            is_dir = _is_dir(path)
            clone = sc.open_tree(empty, "" if is_dir else "file", sc.FLAGS["OPEN_TREE_CLONE"]
                                 | sc.FLAGS["OPEN_TREE_CLOEXEC"] | (sc.FLAGS["AT_EMPTY_PATH"] if is_dir else 0))
            try:
                sc.move_mount(clone, "", sc.AT_FDCWD, path, sc.FLAGS["MOVE_MOUNT_F_EMPTY_PATH"])
            finally:
                os.close(clone)
    finally:
        os.close(empty)


def _new_mount(fstype: str, options: tuple[tuple[str, str], ...], attrs: int) -> int:
    """A new filesystem as a detached mount fd (fsopen, fsconfig, fsmount), for pid 1's own mounts."""
    fs = sc.fsopen(fstype, sc.FLAGS["FSOPEN_CLOEXEC"])
    try:
        for key, value in options:
            sc.fsconfig(fs, sc.FSCONFIG_SET_STRING, key, value)
        sc.fsconfig(fs, sc.FSCONFIG_CMD_CREATE)
        return sc.fsmount(fs, sc.FLAGS["FSMOUNT_CLOEXEC"], attrs)
    finally:
        os.close(fs)


def _is_dir(path: str) -> bool:
    try:
        return os.stat(path).st_mode & 0o170000 == 0o040000
    except OSError:
        return False
