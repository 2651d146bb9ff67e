"""The flag values the plan names (linux/mount.h, linux/openat2.h, sched.h, KERNEL-NOTES.md), and the
constants of the calls that take them: plain data, re-exported by syscalls.py as sc.FLAGS and sc.flags."""
from __future__ import annotations

import os

FLAGS: dict[str, int] = {
    "FSOPEN_CLOEXEC": 0x1,
    "FSMOUNT_CLOEXEC": 0x1,
    "FSMOUNT_NAMESPACE": 0x2,
    "OPEN_TREE_CLONE": 0x1,
    "OPEN_TREE_NAMESPACE": 0x2,
    "OPEN_TREE_CLOEXEC": os.O_CLOEXEC,
    "AT_EMPTY_PATH": 0x1000,
    "AT_RECURSIVE": 0x8000,
    "AT_SYMLINK_NOFOLLOW": 0x100,
    "AT_REMOVEDIR": 0x200,
    "MOVE_MOUNT_F_EMPTY_PATH": 0x4,
    "MOVE_MOUNT_T_EMPTY_PATH": 0x40,
    "MOVE_MOUNT_BENEATH": 0x200,
    "MOUNT_ATTR_RDONLY": 0x1,
    "MOUNT_ATTR_NOSUID": 0x2,
    "MOUNT_ATTR_NODEV": 0x4,
    "MOUNT_ATTR_NOEXEC": 0x8,
    "MOUNT_ATTR__ATIME": 0x70,
    "MOUNT_ATTR_RELATIME": 0x0,
    "MOUNT_ATTR_NOATIME": 0x10,
    "MOUNT_ATTR_STRICTATIME": 0x20,
    "MOUNT_ATTR_NODIRATIME": 0x80,
    "MOUNT_ATTR_NOSYMFOLLOW": 0x200000,
    "MOUNT_ATTR_IDMAP": 0x100000,
    "MS_PRIVATE": 1 << 18,
    "MS_SLAVE": 1 << 19,
    "MS_SHARED": 1 << 20,
    "MS_UNBINDABLE": 1 << 17,
    "CLONE_NEWNS": 0x20000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "MNT_DETACH": 0x2,
    "O_PATH": os.O_PATH,
    "O_DIRECTORY": os.O_DIRECTORY,
    "O_CLOEXEC": os.O_CLOEXEC,
    "O_RDONLY": os.O_RDONLY,
    "O_WRONLY": os.O_WRONLY,
    "O_CREAT": os.O_CREAT,
    "O_EXCL": os.O_EXCL,
    "O_TRUNC": os.O_TRUNC,
    "O_NOFOLLOW": os.O_NOFOLLOW,
    "RESOLVE_NO_XDEV": 0x01,
    "RESOLVE_NO_MAGICLINKS": 0x02,
    "RESOLVE_NO_SYMLINKS": 0x04,
    "RESOLVE_BENEATH": 0x08,
    "RESOLVE_IN_ROOT": 0x10,
    "O_RDWR": os.O_RDWR,
    "LO_FLAGS_READ_ONLY": 1,
    "LO_FLAGS_AUTOCLEAR": 4,
    "S_IFCHR": 0o020000,
    "S_IFREG": 0o100000,
    "SIGKILL": 9,
}

# fsconfig commands
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_SET_FD, FSCONFIG_CMD_CREATE = 0, 1, 5, 6
FLAGS.update(FSCONFIG_SET_FLAG=FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING=FSCONFIG_SET_STRING,
             FSCONFIG_SET_FD=FSCONFIG_SET_FD, FSCONFIG_CMD_CREATE=FSCONFIG_CMD_CREATE)

AT_FDCWD = -100
NS_GET_NSTYPE = 0xB703
NS_GET_MNTNS_ID = 0x8008B705  # _IOR(0xb7, 5, __u64), 6.8+
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82


def flags(names: tuple[str, ...] | list[str]) -> int:
    """OR together symbolic flag names, as the plan stores them."""
    value = 0
    for name in names:
        value |= FLAGS[name]
    return value
