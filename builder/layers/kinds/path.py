"""path = "DIR": a host directory, an overlayfs lower layer as it is."""
from __future__ import annotations

import hashlib
import os
import stat

from builder.layers.kinds import always, never_moves, no_image, no_inputs, own_path
from builder.layers.resolved import ResolvedLayer
from builder.recipe.model import Layer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from builder.layers.resolve import Resolver
    from builder.recipe.checker import Checker

KIND, KEY, LOCKED = "dir", "path", "dir"
OPTIONS: tuple[str, ...] = ()


def parse(c: Checker, t: dict[str, Any], where: str, base: str, cwd: str, digest: str | None,
          devices: bool) -> Layer | None:
    value = c.typed(t, KEY, str, where)
    if value is None:
        return None
    host = c.host_path(value, base, cwd)
    if not os.path.isdir(host):
        c.add(f"{where}.path", f"'{value}' ({host}) is not a directory" if os.path.exists(host)
              else f"'{value}' ({host}) does not exist", "layer paths are relative to the recipe file")
        return None
    return Layer(where, KIND, host)


def tree_digest(root: str) -> str:
    """sha256 over a directory tree: every path (sorted, bytewise), its type, mode, owner, xattrs,
    and file contents, link targets or device numbers. Times are left out: a copy that keeps
    content is the same input."""
    h = hashlib.sha256()

    def walk(rel: bytes) -> None:
        path = os.path.join(os.fsencode(root), rel) if rel else os.fsencode(root)
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            child = os.path.join(rel, entry.name) if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            h.update(child + b"\0" + f"{st.st_mode:o} {st.st_uid} {st.st_gid}\0".encode())
            for name in sorted(os.listxattr(entry.path, follow_symlinks=False)):
                h.update(f"xattr {name}=".encode() + os.getxattr(entry.path, name, follow_symlinks=False) + b"\0")
            if stat.S_ISREG(st.st_mode):
                with open(entry.path, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(entry.path))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                h.update(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}".encode())
            h.update(b"\n")
            if stat.S_ISDIR(st.st_mode):
                walk(child)

    walk(b"")
    return h.hexdigest()


def needs_store(layer: Layer) -> bool:
    return False


def resolve(res: Resolver, file: str, layer: Layer, unpack: bool) -> list[ResolvedLayer]:
    return [ResolvedLayer(layer.origin, "dir", layer.path)]


def digest(res: Resolver, layer: Layer) -> str:
    return tree_digest(layer.path)


source = own_path
image = no_image
inputs = no_inputs
cacheable = always
moving = never_moves
