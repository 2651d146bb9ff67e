"""How a failed step is told: the recipe entry, the step, the syscall, the errno, the kernel's
message and a hint where one helps; for a persist step also whether a retry can help."""
from __future__ import annotations

import errno

from builder.errors import BuildError, PersistError
from builder.kernel import syscalls as sc
from builder.plan.render import strace_line
from builder.plan.steps import Plan, Step


def detail(step: Step) -> str:
    """The step's arguments as strace shows them, for a SyscallError made from a bare OSError."""
    line = strace_line(step)
    return line[line.index("(") + 1:line.rindex(")")] if "(" in line else ""


def build_error(plan: Plan, index: int, err: sc.SyscallError) -> BuildError:
    step = plan.steps[index]
    origin = _overlay_key(step, err.kmsg) or step.origin
    where = f"{origin} " if origin else ""
    message = f"{where}(step {index + 1}, {strace_line(step)}) failed: {err.errname} ({err.strerror})"
    if err.kmsg:
        message += f"; kernel says: {err.kmsg}"
    return BuildError(message, _hint(step, err), step=index, errno=err.errno)


# overlayfs's words for a problem with the upper directory (its workdir is a sibling of it)
_UPPER_WORDS = ("upper", "workdir", "conflicting", "overlapping")


def _overlay_key(step: Step, kmsg: str) -> str | None:
    """The recipe key an overlayfs complaint is about: root.upper where it names the upper (or a
    layer that overlaps it), else None (the step's own origin)."""
    if step.call == "fsconfig" and kmsg.startswith("overlayfs:") and any(w in kmsg for w in _UPPER_WORDS):
        return "root.upper"
    return None


def _hint(step: Step, err: sc.SyscallError) -> str:
    name = err.errname
    if _overlay_key(step, err.kmsg) and ("conflicting" in err.kmsg or "overlapping" in err.kmsg):
        return ("a layer and the upper directory are the same directory or inside one another (also through "
                "a bind mount or a symlink): keep the upper outside every layer")
    if step.call == "fsconfig" and name == "EINVAL" and not err.kmsg:
        return "overlayfs logs its reason to the kernel log only, which nsbuild cannot read here: see `dmesg | tail`"
    if step.call == "openat" and step.args[1] == "/dev/loop-control" and name == "ENOENT":
        return "image layers need loop devices: load the driver with `modprobe loop`"
    if step.call == "openat2" and name == "ENOENT":
        return "the mount point does not exist inside the sandbox and cannot be created there"
    if step.call == "mount_setattr" and len(step.args) > 6 and name in ("EINVAL", "EPERM"):  # idmapped
        return ("the filesystem of this bind's source (or, with recursive, of a mount under it) cannot be idmapped: "
                "ext4, xfs, btrfs, tmpfs and overlayfs can; drop idmap, or set recursive = false" if name == "EINVAL"
                else "the source is an idmapped mount already, or this user may not idmap its filesystem")
    if step.call == "clone" and name in ("ENOSPC", "EPERM", "EUSERS"):
        return "user namespaces are limited here: see sysctl user.max_user_namespaces"
    if name == "EPERM":
        return "nsbuild needs root (CAP_SYS_ADMIN)"
    if name == "ENODEV":
        return "the kernel does not know this filesystem type; is its module available?"
    return ""


# errnos after which the same persist may succeed: the kernel was short of something for a moment
_TRANSIENT = (errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ENOMEM)


def persist_error(e: BuildError, nsfd: int) -> PersistError:
    """A failed persist step, told with whether to retry (`retry`, and in the hint)."""
    if e.errno in (errno.ELOOP, errno.EINVAL):
        try:
            with open("/proc/self/ns/mnt") as own:
                ours, theirs = sc.mntns_id(own.fileno()), sc.mntns_id(nsfd)
        except OSError:
            ours = theirs = 0
        if theirs and theirs < ours:
            name = errno.errorcode.get(e.errno, e.errno)
            return PersistError(
                f"cannot persist the namespace: its id {theirs} is lower than that of the namespace "
                f"nsbuild runs in ({ours}), which the kernel refuses ({name})",
                "a retry can help, made on another CPU: run nsbuild from the initial mount namespace, or let it "
                "use more CPUs (taskset): ids come from per-CPU ranges", e.step, e.errno, retry=True)
    retry = e.errno in _TRANSIENT
    hint = e.hint or "the state directory must be a private mount; see `nsbuild doctor`"
    hint = ("a retry can help (the kernel was short of resources): " if retry else "a retry will not help: ") + hint
    return PersistError(str(e), hint, e.step, e.errno, retry)
