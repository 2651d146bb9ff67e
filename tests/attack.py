"""Escape attempts, run *inside* a contained sandbox by test_contain.py, as an attacker would try.

Usage: python3 attack.py SECRET HOST_PID HOST_DIR
  SECRET    a host file the sandbox must not see (it is bound nowhere)
  HOST_PID  a host process the sandbox must not reach
  HOST_DIR  a host directory the sandbox must not write
Prints one JSON object: attack -> "blocked: ..." or "ESCAPED: ...".
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys

libc = ctypes.CDLL(None, use_errno=True)
NR = {"open_by_handle_at": 304, "init_module": 175, "finit_module": 313, "delete_module": 176,
      "reboot": 169, "kexec_load": 246, "kexec_file_load": 320, "fsopen": 430, "open_tree": 428,
      "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
      "request_key": 249, "swapon": 167, "swapoff": 168, "unshare": 272, "setns": 308, "mount": 165,
      "ptrace": 101, "io_uring_setup": 425}
EPERM = errno.EPERM
results: dict[str, str] = {}


def syscall(name: str, *args: int) -> int:
    res = libc.syscall(NR[name], *[ctypes.c_long(a) for a in args])
    return 0 if res >= 0 else ctypes.get_errno()


def record(name: str, escaped: bool, detail: str) -> None:
    results[name] = ("ESCAPED: " if escaped else "blocked: ") + detail


def must_fail(name: str, fn, expect: int | None = None) -> None:  # type: ignore[no-untyped-def]
    """fn() must fail (raise OSError, or return a raw syscall's errno); with `expect`, with that errno:
    a refused syscall says EPERM, where another errno would mean the kernel looked at the call."""
    try:
        value = fn()
    except OSError as e:
        value = e.errno or -1
    else:
        if not (isinstance(value, int) and value != 0):
            record(name, True, f"succeeded: {value!r}")
            return
    code = errno.errorcode.get(value, str(value))
    record(name, expect is not None and value != expect, code)


def _nsenter(target: str) -> int:
    """nsenter into every namespace of process `target`: its exit status, 0 if it got in."""
    return subprocess.run(["nsenter", "-t", target, "-a", "true"], stderr=subprocess.DEVNULL).returncode


def read_kcore() -> int:
    with open("/proc/kcore", "rb") as f:
        if f.read(16):
            return 0  # read kernel memory
    raise OSError(errno.ENODATA, "masked: empty")


def main(secret: str, host_pid: int, host_dir: str) -> None:
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    results["visible_pids"] = f"{len(pids)} (pid 1: {open('/proc/1/comm').read().strip()})"

    # the host's files through other processes' /proc entries
    for pid in pids + [host_pid]:
        for link in ("root", "cwd"):
            path = f"/proc/{pid}/{link}{secret}"
            try:
                if os.path.exists(path):
                    record(f"read /proc/{pid}/{link}", True, path)
                else:
                    record(f"read /proc/{pid}/{link}", False, "the host's file is not there")
            except OSError as e:
                record(f"read /proc/{pid}/{link}", False, e.strerror or "")
            must_fail(f"write /proc/{pid}/{link}", lambda: open(f"/proc/{pid}/{link}{host_dir}/pwned", "w").close())

    # setns into every namespace any visible process (or the host's) has
    for pid in pids + [host_pid, 1]:
        for ns in ("mnt", "pid", "net", "user", "uts", "ipc", "cgroup"):
            def enter() -> int:
                fd = os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY)
                try:
                    return 0 if libc.setns(fd, 0) == 0 else ctypes.get_errno()
                finally:
                    os.close(fd)
            must_fail(f"setns /proc/{pid}/ns/{ns}", enter)
    for target in ("1", str(host_pid)):  # util-linux, as a user would type it
        must_fail(f"nsenter -t {target} -a", lambda: _nsenter(target))
    must_fail("unshare(CLONE_NEWUSER)", lambda: syscall("unshare", 0x10000000), EPERM)
    must_fail("unshare(CLONE_NEWNS)", lambda: syscall("unshare", 0x20000), EPERM)

    # host processes
    must_fail("kill host process", lambda: os.kill(host_pid, 0))
    must_fail("ptrace host process", lambda: syscall("ptrace", 16, host_pid, 0, 0))  # PTRACE_ATTACH
    must_fail("ptrace pid 1", lambda: syscall("ptrace", 16, 1, 0, 0))
    must_fail("read /proc/1/environ", lambda: open("/proc/1/environ").read())
    must_fail("open pid 1's fds", lambda: [os.close(os.open(f"/proc/1/fd/{fd}", os.O_RDONLY))
                                          for fd in os.listdir("/proc/1/fd")] or 0)
    must_fail("readlink /proc/1/root", lambda: os.readlink("/proc/1/root"))

    # mounts
    for where in ("/work", "/tmp"):
        target = f"{where}/mnt-attack"
        os.makedirs(target, exist_ok=True)
        must_fail(f"mount tmpfs on {where}",
                  lambda: 0 if libc.mount(b"none", target.encode(), b"tmpfs", 0, None) == 0 else ctypes.get_errno(),
                  EPERM)
    must_fail("fsopen", lambda: syscall("fsopen", ctypes.addressof(ctypes.create_string_buffer(b"tmpfs")), 0), EPERM)
    must_fail("open_tree", lambda: syscall("open_tree", -100, ctypes.addressof(ctypes.create_string_buffer(b"/")), 1), EPERM)

    # the syscalls the default filter refuses
    must_fail("open_by_handle_at", lambda: syscall("open_by_handle_at", -100, 0, 0), EPERM)
    must_fail("init_module", lambda: syscall("init_module", 0, 0, 0), EPERM)
    must_fail("finit_module", lambda: syscall("finit_module", 0, 0, 0), EPERM)
    must_fail("delete_module", lambda: syscall("delete_module", ctypes.addressof(ctypes.create_string_buffer(b"loop")), 0), EPERM)
    # bad magic: EINVAL, harmless, if it ever got through
    must_fail("reboot", lambda: syscall("reboot", 0, 0, 0), EPERM)
    must_fail("kexec_load", lambda: syscall("kexec_load", 0, 0, 0, 0), EPERM)
    must_fail("kexec_file_load", lambda: syscall("kexec_file_load", -1, -1, 0, 0, 0), EPERM)
    for name in ("bpf", "userfaultfd", "keyctl", "add_key", "request_key", "swapoff"):
        must_fail(name, lambda: syscall(name, 0, 0, 0), EPERM)
    must_fail("io_uring_setup", lambda: syscall("io_uring_setup", 8, 0), EPERM)
    must_fail("perf_event_open", lambda: syscall("perf_event_open", 0, 0, -1, -1, 0), EPERM)

    # kernel knobs
    for path in ("/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches", "/proc/sysrq-trigger"):
        must_fail(f"write {path}", lambda: open(path, "w").write("1\n"))
    if os.path.isdir("/sys/kernel"):
        must_fail("write /sys/kernel/uevent_helper", lambda: open("/sys/kernel/uevent_helper", "w").write(""))
        must_fail("create a file under /sys", lambda: open("/sys/pwned", "w").close())
    must_fail("read /proc/kcore", read_kcore)

    # devices, hostname, terminal
    must_fail("mknod /dev/sda-like", lambda: os.mknod("/tmp/disk", 0o600 | 0o060000, os.makedev(8, 0)), EPERM)
    must_fail("mknod /dev/mem-like", lambda: os.mknod("/tmp/mem", 0o600 | 0o020000, os.makedev(1, 1)), EPERM)
    must_fail("sethostname", lambda: socket.sethostname("pwned"), EPERM)
    must_fail("TIOCSTI", lambda: 0 if libc.ioctl(0, 0x5412, ctypes.c_char_p(b"x")) == 0 else ctypes.get_errno(), EPERM)
    # the kernel reads the request as 32 bits: high bits set must not slip past the filter (CVE-2019-10063)
    must_fail("TIOCSTI, high bits set", lambda: 0 if libc.ioctl(0, ctypes.c_ulong(0x100005412),
                                                                ctypes.c_char_p(b"x")) == 0 else ctypes.get_errno(),
              EPERM)

    # chroot out of the root (CAP_SYS_CHROOT is kept): ".." from a nested chroot stops at the ns root
    def chroot_escape() -> str:
        pid = os.fork()
        if pid == 0:
            try:
                os.makedirs("/tmp/jail", exist_ok=True)
                fd = os.open("/", os.O_RDONLY)
                os.chroot("/tmp/jail")
                os.fchdir(fd)
                for _ in range(64):
                    os.chdir("..")
                os.chroot(".")
                os._exit(3 if os.path.exists(secret) else 0)
            except OSError:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 3:
            return "escaped"
        raise OSError(errno.ENOENT, "the host's root is not above the sandbox's")
    must_fail("chroot escape", chroot_escape)

    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    record("inherited fds", fds[3:-1] != [], f"open fds: {fds}")  # 0-2, and the listing's own
    print(json.dumps(results))


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
