"""The kernel log (/dev/kmsg), for the filesystems that report only there.

overlayfs gives an fs-context fd no messages (reading it is ENODATA), so after a failed
FSCONFIG_CMD_CREATE its reason is only in the kernel log. Reading it needs root (CAP_SYSLOG);
without it nsbuild falls back to pointing at dmesg.
"""
from __future__ import annotations

import errno
import os


def mark() -> int:
    """An fd positioned after the last record (-1 if the log cannot be read): what is read from it
    later was logged after this call."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        os.close(fd)
        return -1
    return fd


def since(fd: int, prefix: str) -> list[str]:
    """The messages logged since mark() that start with `prefix` (e.g. "overlayfs:"); closes fd."""
    if fd < 0:
        return []
    found = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except OSError as e:
                if e.errno == errno.EPIPE:
                    continue  # overwritten while we read: skip to the next record
                break  # EAGAIN: nothing more
            if not record:
                break
            # "PRIORITY,SEQ,USECS,FLAGS;MESSAGE\n" then continuation lines " KEY=VALUE"
            message = record.decode(errors="replace").partition(";")[2].split("\n", 1)[0]
            if message.startswith(prefix):
                found.append(message)
    finally:
        os.close(fd)
    return found
