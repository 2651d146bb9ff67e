"""Filesystem views: what is at a canonical path, unfollowed, on the host or in a sandbox tree that is not
mounted yet (tree.py); path resolution inside the view, symlinks included, is written once here."""
from __future__ import annotations

import errno
import fnmatch
import io
import os
import posixpath
import stat
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO

from builder.check.elf import MAX_SYMLINKS
from builder.errors import UsageError


@dataclass(frozen=True)
class Node:
    """What one path names, not followed."""
    kind: str                  # "dir", "file", "symlink" or "other" (devices, fifos, sockets)
    mode: int = 0o755          # permission bits
    link: str = ""             # a symlink's target
    host: str | None = None    # host path holding the content
    data: bytes | None = None  # the content of a file that exists only in a recipe
    origin: str = "host"       # who supplies it: "host", "layer[1]", "path[0]", "mount[2]", ...


@dataclass(frozen=True)
class Resolved:
    path: str               # canonical: no symlinks, ".", ".."; where it would be if missing
    node: Node | None       # None: nothing there
    links: tuple[str, ...]  # canonical paths of the symlinks followed, in order
    parent: str             # the deepest existing directory the walk reached


class SymlinkLoop(UsageError):
    def __init__(self, path: str, links: tuple[str, ...]) -> None:
        super().__init__(f"{path}: too many levels of symbolic links (more than {MAX_SYMLINKS})",
                         "a symlink points back at itself through " + ", ".join(dict.fromkeys(links)))
        self.path, self.links = path, links


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def node_from_stat(host: str, st: os.stat_result, origin: str) -> Node:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return Node("dir", mode, host=host, origin=origin)
    if stat.S_ISREG(st.st_mode):
        return Node("file", mode, host=host, origin=origin)
    if stat.S_ISLNK(st.st_mode):
        return Node("symlink", mode, link=os.readlink(host), host=host, origin=origin)
    return Node("other", mode, host=host, origin=origin)


class View:
    """A filesystem seen from its own root. Subclasses say what a canonical path names, unfollowed."""

    def node(self, path: str) -> Node | None:
        raise NotImplementedError

    def names(self, path: str) -> list[str]:
        """The entries of the directory at canonical `path`."""
        raise NotImplementedError

    def resolve(self, path: str, follow: bool = True) -> Resolved:
        """Walk `path` as the kernel does, inside this view: absolute link targets restart at its root and
        ".." stops at "/". A missing component or a non-directory in the middle ends the walk."""
        todo, here, links = deque(_parts(path)), "/", []
        while todo:
            name = todo.popleft()
            if name == "..":
                here = posixpath.dirname(here)
                continue
            nxt = posixpath.join(here, name)
            child = self.node(nxt)
            if child is not None and child.kind == "symlink" and (todo or follow):
                links.append(nxt)
                if len(links) > MAX_SYMLINKS:
                    raise SymlinkLoop(path, tuple(links))
                if child.link.startswith("/"):
                    here = "/"
                todo.extendleft(reversed(_parts(child.link)))
                continue
            if child is None or (todo and child.kind != "dir"):  # ENOENT, or ENOTDIR in the middle
                return Resolved(posixpath.normpath(posixpath.join(nxt, *todo)), None, tuple(links), here)
            here = nxt
        return Resolved(here, self.node(here), tuple(links), posixpath.dirname(here))

    def open(self, node: Node) -> BinaryIO:
        if node.data is not None:
            return io.BytesIO(node.data)
        if node.host is None:
            raise OSError(errno.ENOENT, "no content")
        return open(node.host, "rb")

    def glob(self, pattern: str) -> list[str]:
        """glob(3) inside the view, sorted like it; for ld.so.conf's include."""
        matches = ["/"]
        for part in _parts(pattern):
            if not any(c in part for c in "*?["):
                matches = [posixpath.join(m, part) for m in matches]
                continue
            found = []
            for m in matches:
                res = self.resolve(m)
                if res.node is not None and res.node.kind == "dir":
                    found += [posixpath.join(m, n) for n in self.names(res.path)
                              if fnmatch.fnmatchcase(n, part) and (part.startswith(".") or not n.startswith("."))]
            matches = found
        return sorted(m for m in matches if self.resolve(m).node is not None)


class HostView(View):
    """A host directory seen as a root: "/" by default. Links resolve inside it."""

    def __init__(self, root: str = "/") -> None:
        self.root = root.rstrip("/")

    def node(self, path: str) -> Node | None:
        host = self.root + path  # root is "" for "/"
        try:
            return node_from_stat(host, os.lstat(host), "host")
        except OSError:
            return None

    def names(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self.root + path))
        except OSError:
            return []


