"""binaries = [PROGRAMS], files = [PATHS]: host programs with their shared-library closure (check/ldso.py)
and host files, copied into the content store ("-bin" entries)."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat

from builder import progress
from builder.layers.kinds import check_pin, never_moves, no_image, no_inputs
from builder.layers.resolved import ResolvedLayer
from builder.recipe.model import Layer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from builder.layers.resolve import Resolver
    from builder.recipe.checker import Checker

KIND, KEY, LOCKED = "binaries", "binaries", "binaries"
OPTIONS = ("sha256", "files")


def parse(c: Checker, t: dict[str, Any], where: str, base: str, cwd: str, digest: str | None,
          devices: bool) -> Layer | None:
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("binaries", "files"):
        items = c.typed(t, key, list, where, [])
        paths = []
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                c.add(f"{where}.{key}[{i}]", "must be a non-empty string", "give a host path")
                continue
            host = c.host_path(item, base, cwd)
            if not (os.path.isfile(host) if key == "binaries" else os.path.exists(host)):
                c.add(f"{where}.{key}[{i}]", f"'{item}' ({host}) is not a file on this host" if key == "binaries"
                      else f"'{item}' ({host}) does not exist on this host",
                      "give the path of an installed program" if key == "binaries" else
                      "give an existing file or directory")
                continue
            paths.append(host)
        lists[key] = tuple(paths)
    if t.get("binaries") == []:
        c.add(f"{where}.binaries", "is empty", "list host programs, e.g. [\"/bin/sh\"]")
    return Layer(where, KIND, "", digest, binaries=lists["binaries"], files=lists["files"])


def needs_store(layer: Layer) -> bool:
    return True


def resolve(res: Resolver, file: str, layer: Layer, unpack: bool) -> list[ResolvedLayer]:
    found, paths = closure(res, layer)
    check_pin(file, layer, found)
    path = res.store.entry(found + "-bin", False)
    if unpack:
        res.store.fill(layer.origin, "host binaries", path, lambda tmp: copy_host_paths(paths, tmp))
    return [ResolvedLayer(layer.origin, "dir", path, stored=True)]


def digest(res: Resolver, layer: Layer) -> str:
    return closure(res, layer)[0]


def source(layer: Layer) -> str:
    return " ".join(layer.binaries + layer.files)


image = no_image
inputs = no_inputs


def cacheable(layer: Layer) -> bool:
    return False  # the closure can change with any library on the host


moving = never_moves


def closure(res: Resolver, layer: Layer) -> tuple[str, list[str]]:
    """The host paths a binaries layer copies (programs with their shared-library closure, extra
    files and directories, every symlink on the way) and the digest of what it copies: paths,
    types, modes, owners, link targets and contents. Computed once per command (lock asks twice)."""
    return res.once(("binaries", layer), lambda: _closure(res, layer))


def _closure(res: Resolver, layer: Layer) -> tuple[str, list[str]]:
    from builder.check import elf, ldso, view as views

    search = ldso.Search(views.HostView())  # one for both closures: libc & co. are parsed once
    view = search.view
    paths: set[str] = set(ldso.closure(list(layer.binaries), search))
    elves: list[str] = []
    for item in layer.files:
        found = view.resolve(item)
        paths.update(found.links)
        for path in _walk(found.path):
            paths.add(path)
            # a library among the files (Python's extension modules) brings its own libraries
            is_lib = ".so" in os.path.basename(path) and os.path.isfile(path) and not os.path.islink(path)
            if is_lib and isinstance(search.identify(view.resolve(path)), elf.ElfInfo):
                elves.append(path)
    if elves:
        paths.update(ldso.closure(elves, search))
    ordered = sorted(paths, key=lambda p: p.split("/"))  # parents first
    h = hashlib.sha256()
    for path in ordered:
        st = os.lstat(path)
        h.update(f"{path}\0{st.st_mode:o} {st.st_uid}:{st.st_gid}\0".encode())
        if os.path.islink(path):
            h.update(os.fsencode(os.readlink(path)))
        elif os.path.isfile(path):
            h.update(res.store.digest(path).encode())
        h.update(b"\n")
    return h.hexdigest(), ordered


def _walk(path: str) -> list[str]:
    """`path` and, for a directory, everything under it (symlinks not followed)."""
    out = [path]
    if os.path.isdir(path) and not os.path.islink(path):
        for top, dirs, files in os.walk(path):
            out += [os.path.join(top, n) for n in dirs + files]
    return out


def copy_host_paths(paths: list[str], dest: str) -> None:
    """Copy host paths (parents listed before children) into dest, keeping links, modes and owners."""
    total = sum(os.lstat(p).st_size for p in paths if os.path.isfile(p) and not os.path.islink(p))
    with progress.bar("copying host binaries", total) as advance:
        for path in paths:
            target = dest + path
            parent = os.path.dirname(target)
            if not os.path.isdir(parent):  # a parent not listed itself: made like the host's
                _copy_parents(os.path.dirname(path), dest)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(path), target)
            elif stat.S_ISDIR(st.st_mode):
                os.makedirs(target, exist_ok=True)  # a parent made earlier for a file below it
                os.chmod(target, stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(path, target, follow_symlinks=False)
                os.chmod(target, stat.S_IMODE(st.st_mode))
                advance(st.st_size)
            else:
                continue  # sockets, fifos, devices: not programs
            _chown(target, st, follow_symlinks=False)


def _chown(path: str, st: os.stat_result, follow_symlinks: bool = True) -> None:
    """The host file's owner; in a user namespace that does not map it (rootless with a single
    mapping: host root shows as nobody), the file stays the user's."""
    try:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=follow_symlinks)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: an id this user namespace does not map
            raise


def _copy_parents(path: str, dest: str) -> None:
    if path == "/" or os.path.isdir(dest + path):
        return
    _copy_parents(os.path.dirname(path), dest)
    st = os.stat(path)
    os.mkdir(dest + path)
    os.chmod(dest + path, stat.S_IMODE(st.st_mode))
    _chown(dest + path, st)
