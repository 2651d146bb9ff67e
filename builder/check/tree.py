"""The tree a recipe will produce, read from the host before anything is mounted (command.py checks a
command on it).

The view stacks what the builder stacks (plan.py), in its order: the layers merged as overlayfs merges
them (the top layer wins, a char device 0:0 is a whiteout, a directory with trusted.overlay.opaque="y"
hides the layers below it), a kept upper directory on top, then the [[path]] entries, then the [[mount]]s.
Like the builder (openat2 RESOLVE_IN_ROOT), it places entries where their parents resolve in the sandbox,
and every symlink is resolved inside the sandbox, never on the host.

A view caches what it reads: make a new one after changing a layer.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
import stat
from dataclasses import dataclass

from builder.check.view import HostView, Node, Resolved, SymlinkLoop, View, node_from_stat
from builder.errors import UsageError
from builder.plan.detached import DEV_LINKS, DEV_NODES
from builder.recipe.model import Mount, PathEntry, Recipe, is_under

OPAQUE_XATTR = "trusted.overlay.opaque"

# what a `dev` mount holds, relative to its target (plan.py's bwrap-like /dev)
_DEV: dict[str, Node] = {
    **{f"/{name}": Node("other", 0o666) for name, _, _ in DEV_NODES},
    **{f"/{name}": Node("symlink", 0o777, link=link) for name, link in DEV_LINKS},
    "/pts": Node("dir", 0o755), "/shm": Node("dir", 0o1777), "/pts/ptmx": Node("other", 0o666),
}


@dataclass(frozen=True)
class Entry:
    path: str               # canonical sandbox path
    kind: str               # "dir", "file", "symlink" (only when not followed) or "other"
    mode: int
    origin: str             # who supplies it: "layer[1]", "root.upper", "path[0]", "mount[2]", "root"
    host: str | None        # host path to read it from; None for a [[path]] file (see data) or a virtual entry
    data: bytes | None      # the content of a [[path]] file
    links: tuple[str, ...]  # sandbox symlinks followed on the way


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def opaque(host: str | int) -> bool:
    """Whether overlayfs treats this layer directory (a path, or an fd of it) as opaque (trusted.* as
    root, user.* rootless)."""
    for name in (OPAQUE_XATTR, "user.overlay.opaque"):  # root's store, a rootless one's (userxattr)
        try:
            if os.getxattr(host, name, follow_symlinks=isinstance(host, int)) == b"y":
                return True
        except OSError:
            pass
    return False


class SandboxTree(View):
    """The merged tree of `recipe`; `layer_dirs` stand in for its layers (bottom to top) when they are not
    directories themselves, e.g. images mounted somewhere."""

    def __init__(self, recipe: Recipe, layer_dirs: list[str] | None = None) -> None:
        self.recipe = recipe
        self.layers = _layers(recipe, layer_dirs)     # (origin, host dir), top first
        self._merged_cache: dict[str, tuple[Node | None, tuple[tuple[str, str], ...]]] = {}
        self._paths: dict[str, Node] = {}             # canonical path -> [[path]] entry
        self._made: dict[str, str] = {}               # directories made on the way (mkdir -p) -> origin
        self._mounts: list[tuple[str, Mount]] = []    # (canonical target, mount), parents first
        for p in recipe.paths:
            self._place(p)
        for m in recipe.mounts:
            self._mount(m)

    # -- building the view, as plan.py builds the tree --

    def _make_dirs(self, path: str, origin: str) -> str:
        """plan.dir_fd: each missing directory is made where its parent resolves; returns the canonical path."""
        here = "/"
        for name in path.split("/")[1:] if path != "/" else []:
            try:
                res = self.resolve(posixpath.join(here, name))
            except SymlinkLoop:  # the build fails there; keep the literal path
                res = Resolved(posixpath.join(here, name), None, (), here)
            if res.node is None:
                self._made.setdefault(res.path, origin)
            here = res.path
        return here

    def _place(self, p: PathEntry) -> None:
        parent = self._make_dirs(posixpath.dirname(p.path), p.origin)
        self._paths[posixpath.join(parent, posixpath.basename(p.path))] = Node(
            p.kind, p.mode, link=p.link, data=p.content if p.kind == "file" else None, origin=p.origin)

    def _mount(self, m: Mount) -> None:
        parent = self._make_dirs(posixpath.dirname(m.target), m.origin)
        target = posixpath.join(parent, posixpath.basename(m.target))
        try:
            target = self.resolve(target).path  # openat2 without O_NOFOLLOW: a link as target is followed
        except SymlinkLoop:
            pass
        self._mounts.append((target, m))

    # -- the View --

    def node(self, path: str) -> Node | None:
        held = self.mount_at(path)
        if held is not None:
            return _mount_node(*held, path)
        if path in self._paths:
            return self._paths[path]
        node = self._merged(path)[0]
        if node is None and path in self._made:
            return Node("dir", 0o755, origin=self._made[path])
        if node is None and path == "/":
            return Node("dir", 0o755, origin="root")  # no layers: the root is an empty tmpfs
        return node

    def names(self, path: str) -> list[str]:
        held = self.mount_at(path)
        found: set[str] = set()
        if held is None:
            for _, host in self._merged(path)[1]:
                found.update(_listdir(host))
        elif held[1].type == "bind":
            found.update(_listdir((held[1].source or "") + path[len(held[0]):]))
        elif held[1].type == "dev":
            rel = path[len(held[0]):]
            found.update(posixpath.basename(k) for k in _DEV if posixpath.dirname(k) == (rel or "/"))
        extra = [*self._paths, *self._made, *(t for t, _ in self._mounts)]
        found.update(posixpath.basename(p) for p in extra if p != "/" and posixpath.dirname(p) == path)
        return sorted(n for n in found if self.node(posixpath.join(path, n)) is not None)

    def lookup(self, path: str, follow: bool = True) -> Entry | None:
        """What `path` names in the sandbox, its symlinks followed inside the sandbox; None if nothing.
        Raises SymlinkLoop past 40 links."""
        res = self.resolve(path, follow)
        n = res.node
        if n is None:
            return None
        return Entry(res.path, n.kind, n.mode, n.origin, n.host, n.data, res.links)

    # -- the parts --

    def mount_at(self, path: str) -> tuple[str, Mount] | None:
        """The deepest mount holding `path`, with its canonical target (the last one wins when two share a
        target: they stack)."""
        best: tuple[str, Mount] | None = None
        for target, m in self._mounts:
            if is_under(path, target) and (best is None or len(target) >= len(best[0])):
                best = (target, m)
        return best

    def _merged(self, path: str) -> tuple[Node | None, tuple[tuple[str, str], ...]]:
        """overlayfs's lookup: the node the layers give `path`, and the (origin, host dir) pairs merged into it
        if it is a directory, top first."""
        if path in self._merged_cache:
            return self._merged_cache[path]
        if path == "/":
            dirs = tuple((o, d) for o, d in self.layers if os.path.isdir(d))
            top = dirs[0] if dirs else None
            result = (node_from_stat(top[1], os.stat(top[1]), top[0]) if top else None, dirs)
        else:
            result = _merge_child(self._merged(posixpath.dirname(path))[1], posixpath.basename(path))
        self._merged_cache[path] = result
        return result

    def hidden(self, path: str) -> str | None:
        """Why a layer's entry at canonical `path` is not in the tree (a whiteout, an opaque directory, a
        non-directory or a mount above it), or None."""
        for i, (origin, root) in enumerate(self.layers):
            if not _in_layer(root, path):
                continue
            held = self.mount_at(path)
            if held is not None:
                return f"{origin} has {path}, but {held[1].origin} mounts {held[1].type} on {held[0]}"
            for upper_origin, upper in self.layers[:i]:
                why = _hider(upper, path)
                if why:
                    return f"{origin} has {path}, but {why} in {upper_origin} hides it"
            return None
        return None

    def noexec(self, path: str) -> str | None:
        """The recipe entry that mounts canonical `path` noexec ("root" or "mount[2]"), if any."""
        held = self.mount_at(path)
        attrs, origin = (held[1].attrs, held[1].origin) if held else (self.recipe.root.attrs, "root")
        return origin if "noexec" in attrs else None

    def describe(self, path: str) -> str:
        """Where `path` comes from, for messages: "layer[1]", or "not in the sandbox"."""
        n = self.node(path)
        return n.origin if n else "not in the sandbox"


def _layers(recipe: Recipe, layer_dirs: list[str] | None) -> list[tuple[str, str]]:
    if layer_dirs is not None and len(layer_dirs) != len(recipe.layers):
        raise UsageError(f"{len(layer_dirs)} layer directories for {len(recipe.layers)} layers",
                         "give one directory per [[layer]], bottom to top")
    if layer_dirs is None:
        for layer in recipe.layers:
            if layer.kind != "dir":
                raise UsageError(f"{layer.origin} is a {layer.kind} layer", "unpack it and pass layer_dirs")
        layer_dirs = [layer.path for layer in recipe.layers]
    out = [(layer.origin, d.rstrip("/") or "/") for layer, d in zip(recipe.layers, layer_dirs)]
    if recipe.root.upper not in ("tmpfs", "none") and recipe.layers:
        out.append(("root.upper", recipe.root.upper))  # a kept upper holds what earlier runs wrote
    return out[::-1]


def _merge_child(parent: tuple[tuple[str, str], ...], name: str) -> tuple[Node | None, tuple[tuple[str, str], ...]]:
    node: Node | None = None
    dirs: list[tuple[str, str]] = []
    for origin, d in parent:
        host = posixpath.join(d, name)
        try:
            st = os.lstat(host)
        except OSError:
            continue  # absent here: look lower
        if _whiteout(st):
            break
        if not stat.S_ISDIR(st.st_mode):
            node = node or node_from_stat(host, st, origin)
            break  # a non-directory hides all below it; under a directory it is itself hidden
        node = node or node_from_stat(host, st, origin)
        dirs.append((origin, host))
        if opaque(host):
            break
    return node, tuple(dirs)


def _mount_node(target: str, m: Mount, path: str) -> Node | None:
    rel = path[len(target):] if target != "/" else path
    if m.type == "bind":
        assert m.source is not None
        try:  # open_tree follows the source path itself on the host; below it nothing is followed
            st = os.stat(m.source) if not rel else os.lstat(m.source + rel)
        except OSError:
            return None
        return node_from_stat(m.source + rel, st, m.origin)
    if not rel:
        return Node("dir", 0o755, origin=m.origin)
    if m.type == "dev" and rel in _DEV:
        return dataclasses.replace(_DEV[rel], origin=m.origin)
    return None  # a fresh filesystem: empty as far as a pre-flight can tell


def _listdir(host: str) -> list[str]:
    try:
        return os.listdir(host)
    except OSError:
        return []


def _in_layer(root: str, path: str) -> bool:
    """Whether one layer, on its own, has `path` (not a whiteout) with no symlink on the way."""
    res = HostView(root).resolve(path, follow=False)
    return res.node is not None and not res.links and not _whiteout(os.lstat(root + path))


def _hider(layer: str, path: str) -> str | None:
    """What in `layer` hides lower layers' `path`: a whiteout, a non-directory or an opaque directory on the way."""
    here = layer
    parts = path.split("/")[1:]
    for i, name in enumerate(parts):
        here = posixpath.join(here, name)
        try:
            st = os.lstat(here)
        except OSError:
            return None
        at = "/" + "/".join(parts[:i + 1])
        if _whiteout(st):
            return f"a whiteout at {at}"
        last = i == len(parts) - 1
        if not stat.S_ISDIR(st.st_mode):
            return None if last else f"a non-directory at {at}"
        if opaque(here) and not last:
            return f"the opaque directory {at}"
    return None
