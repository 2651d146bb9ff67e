"""The syscall layer: the only module that touches FFI.

Thin wrappers over the new mount API and its neighbours. Each raises
SyscallError (an OSError) naming the call, its key arguments and the errno;
fsconfig failures also carry the kernel's own message from the fs-context fd.
glibc (2.36+) wrappers are used where the symbol exists, syscall(2) otherwise.
"""
from __future__ import annotations

import errno as _errno
import os
TYPE_CHECKING = False  # typing and collections.abc cost ~4 ms on the `nsbuild run` path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

try:  # generated at install time (setup.py cffi_modules); imports in <1 ms
    from builder.kernel._ffi import ffi
    GENERATED = True
except ImportError:  # bare checkout: parse the declarations now (~35 ms)
    from builder.kernel._ffi_build import ffibuilder as ffi
    GENERATED = False

lib = ffi.dlopen(None)

from builder.kernel.flags import (AT_FDCWD, FLAGS, FSCONFIG_CMD_CREATE, FSCONFIG_SET_FD,  # noqa: E402,F401 - as sc.*
                                  FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, LOOP_CONFIGURE, LOOP_CTL_GET_FREE,
                                  NS_GET_MNTNS_ID, NS_GET_NSTYPE, flags)

# Syscall numbers, used where glibc has no wrapper. The mount API's (424+) are the same on every
# architecture; older calls are not, so only architectures listed here get raw syscalls.
_NUMBERS = {
    "x86_64": {"pivot_root": 155},
    "aarch64": {"pivot_root": 41},
}
_UNIFIED = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
            "openat2": 437, "mount_setattr": 442}
MACHINE = os.uname().machine
NR: dict[str, int] = {**_UNIFIED, **_NUMBERS[MACHINE]} if MACHINE in _NUMBERS else {}


def _nr(name: str) -> int:
    """The number of syscall `name` here; an architecture nsbuild has no table for is refused."""
    try:
        return NR[name]
    except KeyError:
        from builder.errors import NsbuildError

        raise NsbuildError(f"nsbuild has no syscall numbers for this architecture ({MACHINE}) and cannot "
                           f"call {name}()", "supported: " + ", ".join(_NUMBERS)) from None


class SyscallError(OSError):
    """A failed syscall: call name, key arguments, errno and kernel message."""

    def __init__(self, call: str, detail: str, err: int, kmsg: str = "") -> None:
        super().__init__(err, os.strerror(err))
        self.call = call
        self.detail = detail
        self.kmsg = kmsg

    @property
    def errname(self) -> str:
        return _errno.errorcode.get(self.errno or 0, str(self.errno))

    def __str__(self) -> str:
        text = f"{self.call}({self.detail}) failed: {self.errname} ({self.strerror})"
        if self.kmsg:
            text += f"; kernel says: {self.kmsg}"
        return text


def _call(name: str) -> Callable[..., int]:
    """The glibc wrapper if present, else a syscall(2) shim."""
    try:
        return getattr(lib, name)
    except AttributeError:
        def shim(*args: object) -> int:
            cargs = [ffi.cast("long", a) if isinstance(a, int) else a for a in args]
            return lib.syscall(_nr(name), *cargs)

        return shim


def _check(result: int, call: str, detail: str) -> int:
    if result < 0:
        raise SyscallError(call, detail, ffi.errno)
    return result


def _p(path: str | None) -> object:
    return ffi.NULL if path is None else path.encode()


_fsopen = _call("fsopen")
_fsconfig = _call("fsconfig")
_fsmount = _call("fsmount")
_open_tree = _call("open_tree")
_move_mount = _call("move_mount")
_mount_setattr = _call("mount_setattr")


def fsopen(fstype: str, flag: int) -> int:
    return _check(_fsopen(fstype.encode(), flag), "fsopen", repr(fstype))


_SEVERITY = {"e": "", "w": "warning: ", "i": "info: "}  # the fs-context log's line prefixes


def fs_messages(fsfd: int) -> str:
    """Drain the fs-context log: "e ..." (shown as it is), "w ..." and "i ..." messages."""
    lines = []
    while True:
        try:
            chunk = os.read(fsfd, 1024)
        except OSError:  # ENODATA: log empty (overlay logs to dmesg only)
            break
        if not chunk:
            break
        line = chunk.decode(errors="replace").strip()
        severity, _, text = line.partition(" ")
        lines.append(_SEVERITY[severity] + text if severity in _SEVERITY and text else line)
    return "; ".join(lines)


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | None = None,
             aux: int = 0) -> None:
    """For FSCONFIG_SET_FD the fd goes in `aux`, as in the kernel ABI."""
    cvalue = value.encode() if isinstance(value, str) else ffi.NULL
    if _fsconfig(fd, cmd, _p(key), cvalue, aux) < 0:
        err = ffi.errno
        shown = f"{key}={value!r}" if key else "CMD_CREATE"
        raise SyscallError("fsconfig", shown, err, fs_messages(fd))


def fsmount(fsfd: int, flag: int, attrs: int) -> int:
    if (fd := _fsmount(fsfd, flag, attrs)) < 0:
        err = ffi.errno
        raise SyscallError("fsmount", f"flags={flag:#x}, attrs={attrs:#x}", err, fs_messages(fsfd))
    return fd


def open_tree(dfd: int, path: str, flag: int) -> int:
    return _check(_open_tree(dfd, path.encode(), flag), "open_tree", repr(path))


def move_mount(from_dfd: int, from_path: str, to_dfd: int, to_path: str, flag: int) -> None:
    _check(_move_mount(from_dfd, from_path.encode(), to_dfd, to_path.encode(), flag),
           "move_mount", f"to {to_path!r}" if to_path else f"to fd {to_dfd}")


def mount_setattr(dfd: int, path: str, flag: int, attr_set: int = 0, attr_clr: int = 0,
                  propagation: int = 0, userns_fd: int = 0) -> None:
    attr = ffi.new("struct mount_attr *")
    attr.attr_set, attr.attr_clr = attr_set, attr_clr
    attr.propagation, attr.userns_fd = propagation, userns_fd
    _check(_mount_setattr(dfd, path.encode(), flag, attr, ffi.sizeof("struct mount_attr")),
           "mount_setattr", repr(path) if path else f"fd {dfd}")


def openat2(dfd: int, path: str, flag: int, resolve: int, mode: int = 0) -> int:
    how = ffi.new("struct open_how *")
    how.flags, how.mode, how.resolve = flag, mode, resolve
    res = lib.syscall(_nr("openat2"), ffi.cast("int", dfd), ffi.new("char[]", path.encode()), how,
                      ffi.cast("size_t", ffi.sizeof("struct open_how")))
    return _check(res, "openat2", repr(path))


def unshare(flag: int) -> None:
    _check(lib.unshare(flag), "unshare", f"{flag:#x}")


def setns(fd: int, nstype: int) -> None:
    _check(lib.setns(fd, nstype), "setns", f"fd {fd}")


def pivot_root(new_root: str, put_old: str) -> None:
    res = lib.syscall(_nr("pivot_root"), ffi.new("char[]", new_root.encode()),
                      ffi.new("char[]", put_old.encode()))
    _check(res, "pivot_root", f"{new_root!r}, {put_old!r}")


def umount2(target: str, flag: int) -> None:
    _check(lib.umount2(target.encode(), flag), "umount2", repr(target))


def ns_type(fd: int) -> int:
    return _check(lib.ioctl(fd, ffi.cast("unsigned long", NS_GET_NSTYPE)), "ioctl", "NS_GET_NSTYPE")


def mntns_id(fd: int) -> int:
    """The 64-bit id of a mount namespace (NS_GET_MNTNS_ID, Linux 6.8+)."""
    out = ffi.new("uint64_t *")
    _check(lib.ioctl(fd, ffi.cast("unsigned long", NS_GET_MNTNS_ID), out), "ioctl", "NS_GET_MNTNS_ID")
    return int(out[0])


def loop_get_free(ctl_fd: int) -> int:
    """The number of a free loop device (LOOP_CTL_GET_FREE on /dev/loop-control)."""
    return _check(lib.ioctl(ctl_fd, ffi.cast("unsigned long", LOOP_CTL_GET_FREE)), "ioctl", "LOOP_CTL_GET_FREE")


def loop_configure(dev_fd: int, backing_fd: int, lo_flags: int, name: str) -> None:
    """Attach a backing file to a loop device in one call (LOOP_CONFIGURE, 5.8+)."""
    config = ffi.new("struct loop_config *")
    config.fd = backing_fd
    config.info.lo_flags = lo_flags
    shown = name.encode()[:63]  # what losetup shows as the backing file
    ffi.memmove(config.info.lo_file_name, shown, len(shown))
    _check(lib.ioctl(dev_fd, ffi.cast("unsigned long", LOOP_CONFIGURE), config), "ioctl",
           f"LOOP_CONFIGURE {name!r}")


def probe_errno(call: str) -> int:
    """Run one side-effect-free probe (KERNEL-NOTES.md) and return its errno (0: succeeded)."""
    if call == "fsmount":  # does the new mount API exist at all
        res = _fsmount(-1, 0, 0)
    elif call == "fsmount-namespace":
        res = _fsmount(-1, FLAGS["FSMOUNT_NAMESPACE"], 0)
    elif call == "open-tree-namespace":
        res = _open_tree(-1, b"", FLAGS["OPEN_TREE_NAMESPACE"] | FLAGS["AT_EMPTY_PATH"])
    elif call == "erofs-file":  # erofs on a regular file: ENOTBLK without CONFIG_EROFS_FS_BACKED_BY_FILE
        try:  # this module is no erofs image: EINVAL says the file was read, so files are supported
            fd = fsopen("erofs", FLAGS["FSOPEN_CLOEXEC"])
            try:
                fsconfig(fd, FSCONFIG_SET_STRING, "source", __file__)
                fsconfig(fd, FSCONFIG_CMD_CREATE)
            finally:
                os.close(fd)
            return 0
        except SyscallError as e:
            return e.errno or _errno.EIO
    else:
        raise ValueError(call)
    if res >= 0:
        os.close(res)
        return 0
    return ffi.errno


# prctl options (linux/prctl.h)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_KEEPCAPS, PR_CAPBSET_DROP = 1, 4, 8, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 2, 4
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    long = ffi.cast
    _check(lib.prctl(option, long("unsigned long", arg2), long("unsigned long", arg3), long("unsigned long", 0),
                     long("unsigned long", 0)), "prctl", f"{option}, {arg2}")


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """This process's capability sets (bit N is capability N; 64 bits, two 32-bit halves)."""
    header = ffi.new("struct cap_header *", {"version": _LINUX_CAPABILITY_VERSION_3, "pid": 0})
    data = ffi.new("struct cap_data[2]")
    for i in (0, 1):
        data[i].effective = (effective >> 32 * i) & 0xFFFFFFFF
        data[i].permitted = (permitted >> 32 * i) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> 32 * i) & 0xFFFFFFFF
    _check(lib.capset(header, data), "capset", f"{effective:#x}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(lib.sethostname(raw, len(raw)), "sethostname", repr(name))


# libseccomp (seccomp.h): actions and comparison operators
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7


def scmp_act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


_scmp: object = None


def seccomp_open() -> None:
    """Load the host's libseccomp. Call it before entering a sandbox: there, dlopen would load the
    sandbox's own copy, which its content controls. (Only needed to compile a program.)"""
    global _scmp
    if _scmp is None:
        try:
            _scmp = ffi.dlopen("libseccomp.so.2")
        except OSError:
            raise SyscallError("dlopen", "'libseccomp.so.2' (Debian: apt-get install libseccomp2)",
                               _errno.ENOENT) from None


def seccomp_program(default: int, rules: list[tuple[str, int, tuple[tuple[int, int, int], ...]]]) -> bytes:
    """Compile a filter with libseccomp (seccomp_open() first) into its BPF program.

    `rules` are (syscall name, action, ((arg index, mask, value), ...)): the action applies when
    (arg & mask) == value for every comparison. Syscalls this architecture lacks are skipped.
    """
    scmp: Any = _scmp
    ctx = scmp.seccomp_init(default)
    if ctx == ffi.NULL:
        raise SyscallError("seccomp_init", f"{default:#x}", _errno.ENOMEM)
    try:
        for name, action, cmps in rules:
            nr = scmp.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # __NR_SCMP_ERROR: not a syscall here (e.g. no kexec_file_load on some arches)
                continue
            array = ffi.new("struct scmp_arg_cmp[]", [{"arg": a, "op": SCMP_CMP_MASKED_EQ, "datum_a": m,
                                                       "datum_b": v} for a, m, v in cmps] or 1)
            if (res := scmp.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)) < 0:
                raise SyscallError("seccomp_rule_add", name, -res)
        fd = os.memfd_create("nsbuild-seccomp", os.MFD_CLOEXEC)
        try:
            if (res := scmp.seccomp_export_bpf(ctx, fd)) < 0:
                raise SyscallError("seccomp_export_bpf", "", -res)
            return os.pread(fd, 1 << 20, 0)
        finally:
            os.close(fd)
    finally:
        scmp.seccomp_release(ctx)


def seccomp_install(program: bytes) -> None:
    """Load a BPF program made by seccomp_program() into this process (no_new_privs must be set)."""
    if not program or len(program) % 8:
        raise SyscallError("prctl", "PR_SET_SECCOMP: not a BPF program", _errno.EINVAL)
    buf = ffi.from_buffer("struct sock_filter[]", program)
    prog = ffi.new("struct sock_fprog *", {"len": len(program) // 8, "filter": buf})
    _check(lib.prctl(PR_SET_SECCOMP, ffi.cast("unsigned long", SECCOMP_MODE_FILTER), prog,
                     ffi.cast("unsigned long", 0), ffi.cast("unsigned long", 0)), "prctl", "PR_SET_SECCOMP")
