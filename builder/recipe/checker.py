"""The recipe loader's checker: collects every problem with its key path, and the small checks of
values (paths, modes, attributes, sizes, options) that load.py applies to each table."""
from __future__ import annotations

import difflib
import os
import posixpath
import re
from functools import lru_cache
from typing import Any

from builder.errors import Problem
from builder.recipe.model import ATIME, NEGATIONS, ATTRS

class Checker:
    """Collects problems while walking the TOML document."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.inputs: list[str] = []  # every host path the recipe names

    def host_path(self, value: str, base: str, cwd: str) -> str:
        path = host_path(value, base, cwd)
        self.inputs.append(path)
        return path

    def add(self, key: str, message: str, hint: str = "") -> None:
        self.problems.append(Problem(key, message, hint))

    def keys(self, table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for k in table:
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(allowed)
                self.add(f"{where}.{k}" if where else k, "unknown key", hint)

    def typed(self, table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str,
              default: Any = None) -> Any:
        if key not in table:
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            value = None  # TOML booleans are not integers here
        if not isinstance(value, kinds):
            names = " or ".join(toml_type(k) for k in kinds)
            self.add(f"{where}.{key}" if where else key, f"must be {names}, not {toml_type(type(table[key]))}")
            return default
        return value

    def sandbox_path(self, value: str, key: str, allow_root: bool = False) -> str | None:
        """An absolute, normalized path inside the sandbox."""
        problem = length_problem(value)
        if problem:
            self.add(key, problem, "use a shorter path")
            return None
        if not value.startswith("/"):
            self.add(key, f"'{value}' must be an absolute path inside the sandbox", "start it with '/'")
            return None
        parts = value.split("/")[1:]
        if ".." in parts:
            self.add(key, f"'{value}' must not contain '..'", "name the target directly")
            return None
        if "\x00" in value or posixpath.normpath(value) != value or value.startswith("//"):
            self.add(key, f"'{value}' is not a normalized path",
                     f"write '{posixpath.normpath(value)}'" if "\x00" not in value else "")
            return None
        if value == "/" and not allow_root:
            self.add(key, "'/' is the root; describe it in [root]")
            return None
        return value


PATH_MAX = 4096  # bytes, with the terminating NUL (linux/limits.h)
NAME_MAX = 255   # bytes per path component


def length_problem(path: str) -> str | None:
    """Paths the kernel would refuse with ENAMETOOLONG, caught before anything is mounted."""
    size = len(path.encode())
    if size >= PATH_MAX:
        return f"'{short(path)}' is {size} bytes long; a path has at most {PATH_MAX - 1}"
    for part in path.split("/"):
        if len(part.encode()) > NAME_MAX:
            return f"'{short(part)}', a part of '{short(path)}', is {len(part.encode())} bytes long; " \
                   f"a file name has at most {NAME_MAX}"
    return None


def toml_type(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "a boolean", list: "an array",
            dict: "a table", float: "a float"}.get(kind, kind.__name__)


def host_path(value: str, base: str, cwd: str) -> str:
    """Host paths are relative to the recipe file; $CWD means nsbuild's working directory."""
    if value == "$CWD" or value.startswith("$CWD/"):
        value = cwd + value[4:]
    elif value == "~" or value.startswith("~/"):
        value = os.path.expanduser(value)
    return posixpath.normpath(posixpath.join(base, value))


def mode(c: Checker, table: dict[str, Any], key: str, where: str, default: int) -> int:
    value = c.typed(table, "mode", (str, int), where)
    if value is None:
        return default
    if isinstance(value, str):
        if not re.fullmatch(r"0?[0-7]{3,4}", value):
            c.add(f"{where}.mode", f"'{value}' is not an octal mode", "write e.g. \"0644\" or \"1777\"")
            return default
        value = int(value, 8)
    if not 0 <= value <= 0o7777:
        c.add(f"{where}.mode", f"{value} is out of range", "use 0 to 0o7777")
        return default
    return value


def attrs(c: Checker, raw: Any, where: str, defaults: tuple[str, ...]) -> tuple[str, ...]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        c.add(f"{where}.attrs", "must be an array of strings", 'e.g. attrs = ["ro", "noexec"]')
        return defaults
    chosen: set[str] = set(defaults)
    atimes: list[str] = []
    given: set[str] = set()
    for i, word in enumerate(raw):
        key = f"{where}.attrs[{i}]"
        if not isinstance(word, str):
            c.add(key, "must be a string")
            continue
        if word in NEGATIONS or word in ATTRS:
            given.add(word)
        if word in NEGATIONS:
            chosen.discard(NEGATIONS[word])
        elif word in ATTRS:
            chosen.add(word)
            if word in ATIME:
                atimes.append(word)
        else:
            close = difflib.get_close_matches(word, ATTRS + tuple(NEGATIONS), n=1)
            c.add(key, f"unknown attribute '{word}'",
                  f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(ATTRS))
    for lift, word in NEGATIONS.items():
        if lift in given and word in given:  # else the later one would win silently
            c.add(f"{where}.attrs", f"conflicting attributes: {word} and {lift}", f"keep one of {word}, {lift}")
    if len(set(atimes)) > 1:
        c.add(f"{where}.attrs", f"conflicting atime attributes: {', '.join(sorted(set(atimes)))}",
              "keep one of noatime, relatime, strictatime")
    return tuple(a for a in ATTRS if a in chosen)


@lru_cache(maxsize=1)
def known_filesystems() -> frozenset[str]:
    try:
        with open("/proc/filesystems") as f:
            return frozenset(line.split()[-1] for line in f if line.strip())
    except OSError:
        return frozenset()


def array_of_tables(c: Checker, doc: dict[str, Any], key: str) -> list[tuple[str, dict[str, Any]]]:
    items = doc.get(key, [])
    if not isinstance(items, list):
        c.add(key, "must be an array of tables", f"write [[{key}]] for each entry")
        return []
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            c.add(f"{key}[{i}]", "must be a table", f"write [[{key}]] for each entry")
        else:
            out.append((f"{key}[{i}]", item))
    return out


SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "%": 1}
MAX_SIZE = (1 << 63) - 1  # tmpfs parses the size into 64 bits and wraps silently beyond


def size_problem(size: str) -> str | None:
    """What is wrong with a tmpfs size, or None."""
    m = re.fullmatch(r"([0-9]+)([kmgKMG%]?)", size)
    if not m:
        return f"'{short(size)}' is not a tmpfs size"
    number, unit = int(m.group(1)), m.group(2).lower()
    if unit == "%":
        return None if number <= 100 else f"'{size}' is more than 100% of memory"
    if number * SIZE_UNITS[unit] > MAX_SIZE:
        return f"'{short(size)}' is too large (at most 8 EiB)"
    return None


def short(value: str, limit: int = 40) -> str:
    """A value as messages quote it: long ones cut, so one error stays one line."""
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"


def options(c: Checker, raw: Any, where: str) -> tuple[tuple[str, str | bool], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        c.add(f"{where}.options", "must be a table", 'e.g. options = { size = "64m", mode = "1777" }')
        return ()
    out: list[tuple[str, str | bool]] = []
    for k, v in raw.items():
        if k == "source":
            c.add(f"{where}.options.source", "set the source with the mount's own 'source' key")
        elif isinstance(v, bool):
            if v:
                out.append((k, True))
        elif isinstance(v, (str, int)):
            out.append((k, str(v)))
        else:
            c.add(f"{where}.options.{k}", "must be a string, an integer or a boolean")
    return tuple(out)
