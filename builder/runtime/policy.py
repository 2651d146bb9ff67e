"""What a contained run may do: its capabilities and its seccomp filter. Pure data, no syscalls.

The defaults follow podman's and Docker's: root keeps a small set of capabilities (podman 4's
eleven), any other user none; the filter refuses the syscalls that reach beyond a container
(kernel modules, kexec, reboot, swap, keyrings, bpf, perf, userfaultfd, file handles, the mount
API, namespaces), the last two only while CAP_SYS_ADMIN is not granted, as Docker does.
"""
from __future__ import annotations

import errno

# linux/capability.h, in number order: CAPS[n] is capability n
CAPS = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
        "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
        "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
        "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL",
        "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON",
        "BPF", "CHECKPOINT_RESTORE")

# podman's default for root (containers.conf, podman 4+)
ROOT_DEFAULT = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETFCAP", "SETGID",
                "SETPCAP", "SETUID", "SYS_CHROOT")


def cap_word(word: str) -> tuple[bool, str] | None:
    """'+CAP_NET_RAW', 'net_raw', '-CAP_CHOWN', 'ALL', '-all' -> (add?, NAME); None if unknown."""
    add = not word.startswith("-")
    name = word.lstrip("+-").upper()
    name = name[4:] if name.startswith("CAP_") else name
    return (add, name) if name == "ALL" or name in CAPS else None


def capabilities(uid: int, changes: tuple[str, ...] | list[str]) -> int:
    """The capability mask of a run as `uid`, after [run] capabilities / --cap changes, in order."""
    kept = set(ROOT_DEFAULT) if uid == 0 else set()
    for word in changes:
        parsed = cap_word(word)
        if parsed is None:
            raise ValueError(word)
        add, name = parsed
        names = set(CAPS) if name == "ALL" else {name}
        kept = kept | names if add else kept - names
    return sum(1 << CAPS.index(name) for name in kept)


def has(mask: int, name: str) -> bool:
    return bool(mask >> CAPS.index(name) & 1)


NETWORKS = ("host", "none")


def valid_hostname(name: str) -> bool:
    """RFC 1123 labels, at most 64 bytes (the kernel's limit)."""
    labels = name.split(".")
    return 0 < len(name) <= 64 and all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label) for label in labels)


def valid_user(user: str) -> bool:
    """'root', a passwd NAME or 'UID[:GID]' (ids in ASCII digits, below 2**32 - 1)."""
    uid, colon, gid = user.partition(":")
    if _is_id(uid):
        return not colon or _is_id(gid)
    return bool(user) and not colon and all(c.isascii() and (c.isalnum() or c in "._-") for c in user) \
        and user[0] != "-"


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 10 and int(text) < 0xFFFFFFFF


EPERM = errno.EPERM
# (syscall, the capability that lifts the refusal, or None: always refused)
DENIED: tuple[tuple[str, str | None], ...] = (
    ("open_by_handle_at", None),
    ("kexec_load", None), ("kexec_file_load", None), ("reboot", None),
    ("init_module", None), ("finit_module", None), ("delete_module", None),
    ("swapon", None), ("swapoff", None), ("acct", None), ("quotactl", None), ("quotactl_fd", None),
    ("keyctl", None), ("add_key", None), ("request_key", None),
    ("bpf", None), ("perf_event_open", None), ("userfaultfd", None), ("lookup_dcookie", None),
    # io_uring: a large kernel surface behind few syscalls, and a frequent way to escalate (Docker refuses it)
    ("io_uring_setup", None), ("io_uring_enter", None), ("io_uring_register", None),
    ("iopl", None), ("ioperm", None), ("uselib", None), ("vm86", None), ("vm86old", None),
    ("settimeofday", None), ("clock_settime", None), ("clock_adjtime", None), ("adjtimex", None),
    ("syslog", None), ("kcmp", None), ("process_vm_readv", None), ("process_vm_writev", None),
    ("_sysctl", None), ("nfsservctl", None), ("ustat", None), ("sysfs", None),
    # the mount API and namespaces: a container's root has no business with them (Docker: SYS_ADMIN)
    ("mount", "SYS_ADMIN"), ("umount", "SYS_ADMIN"), ("umount2", "SYS_ADMIN"), ("pivot_root", "SYS_ADMIN"),
    ("fsopen", "SYS_ADMIN"), ("fsconfig", "SYS_ADMIN"), ("fsmount", "SYS_ADMIN"), ("fspick", "SYS_ADMIN"),
    ("open_tree", "SYS_ADMIN"), ("open_tree_attr", "SYS_ADMIN"), ("move_mount", "SYS_ADMIN"),
    ("mount_setattr", "SYS_ADMIN"), ("unshare", "SYS_ADMIN"), ("setns", "SYS_ADMIN"),
)

# clone flags that make namespaces: refused on clone (one rule per flag: the filter compares
# (arg0 & flag) == flag); clone3 passes its flags in memory the filter cannot read, so it says
# ENOSYS, which makes glibc fall back to clone (as Docker's profile does)
NS_CLONE_FLAGS = (0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
# terminal ioctls that type into, or read from, the caller's terminal (bwrap CVE-2017-5226,
# flatpak CVE-2023-28100): refused whatever the capabilities
TTY_IOCTLS = (("TIOCSTI", 0x5412), ("TIOCLINUX", 0x541C))


def seccomp_rules(caps: int, errno_action: int, enosys_action: int) -> list[tuple[str, int, tuple]]:
    """The default filter as (syscall, action, ((arg, mask, value), ...)) for syscalls.seccomp_program."""
    rules: list[tuple[str, int, tuple]] = [(name, errno_action, ()) for name, cap in DENIED
                                           if cap is None or not has(caps, cap)]
    if not has(caps, "SYS_ADMIN"):
        rules += [("clone", errno_action, ((0, flag, flag),)) for flag in NS_CLONE_FLAGS]
        rules.append(("clone3", enosys_action, ()))
    rules += [("ioctl", errno_action, ((1, 0xFFFFFFFF, value),)) for _, value in TTY_IOCTLS]
    return rules
