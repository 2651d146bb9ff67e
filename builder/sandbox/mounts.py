"""The mount table as the state directory needs it: /proc/self/mountinfo read once, mount points
unescaped, and what a state directory still needs before it can pin a namespace (steps.Pin.setup)."""
from __future__ import annotations


def mountinfo_entry(path: str) -> list[str] | None:
    """The last (topmost) mountinfo line whose mount point is `path`."""
    return mount_table(path)[1]


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    if "\\" not in field:
        return field
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_on(path: str) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(_unescape(line.split()[4]) == path for line in f)


def mount_points() -> set[str]:
    return mount_table("")[0]


def mount_table(path: str) -> tuple[set[str], list[str] | None]:
    """Every mount point, and the topmost mountinfo entry of `path`: one read of a table that is long
    where there are many sandboxes."""
    points, entry = set(), None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = _unescape(fields[4])
            points.add(point)
            if point == path:
                entry = fields
    return points, entry


def pin_setup(entry: list[str] | None) -> str:
    """What a state directory with mountinfo `entry` still needs before it can pin (steps.Pin.setup)."""
    if entry is None:
        return "bind"
    return "" if "unbindable" in entry[6:entry.index("-")] else "unbindable"


def is_mount_point(path: str) -> bool:
    return mountinfo_entry(path) is not None
