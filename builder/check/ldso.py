"""glibc ld.so's shared-library search over any filesystem view (view.py), and the host closure: what to
copy so that binaries run in an empty root (a binaries layer). pyelftools is imported only when an ELF file
is read (elf.py)."""
from __future__ import annotations

import os
import posixpath
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Union

from builder.check.elf import ARCHES, MAX_CONF_DEPTH, MAX_SCRIPTS, ElfInfo, Script, identify
from builder.check.view import HostView, Resolved, SymlinkLoop, View
from builder.errors import UsageError


@dataclass(frozen=True)
class Obj:
    """One object of the process image."""
    path: str                      # the path it was opened by (ld.so's l_name)
    real: Resolved                 # where that path leads
    info: ElfInfo
    loader: Obj | None = field(default=None, repr=False)  # who loaded it: DT_RPATH is inherited along this chain

    @property
    def origin(self) -> str:
        """$ORIGIN: the program's real directory (the kernel's /proc/self/exe), a library's opened directory."""
        return posixpath.dirname(self.real.path if self.loader is None else self.path)

    @property
    def source(self) -> str:
        """Who supplies the file: the view's Node.origin, e.g. "layer[1]"."""
        return self.real.node.origin if self.real.node else "?"


@dataclass(frozen=True)
class Missing:
    name: str                   # a soname, or the path of the ELF interpreter
    needed_by: Obj
    searched: tuple[str, ...]   # directories tried (or the one path)
    skipped: tuple[str, ...] = ()  # candidates ld.so passes over, with why
    interpreter: bool = False


@dataclass
class Deps:
    objects: list[Obj]          # the program, its interpreter, then libraries in load order
    missing: list[Missing]


Kind = Union[ElfInfo, Script, None]


class Search:
    """ld.so's dependency search over a View. No LD_LIBRARY_PATH unless given (the host closure has none).

    `proc`: whether /proc is mounted where the program runs. ld.so takes the program's own $ORIGIN from
    /proc/self/exe and drops the entries using it when that fails (a libraries' $ORIGIN needs no /proc).
    """

    def __init__(self, view: View, ld_library_path: str = "", proc: bool = True) -> None:
        self.view = view
        self.proc = proc
        self.env_dirs = tuple(d for d in re.split("[:;]", ld_library_path) if d)
        self._conf: tuple[str, ...] | None = None
        self._kinds: dict[str, Kind] = {}

    def identify(self, res: Resolved) -> Kind:
        """What the file at `res` is; cached, since every program of a tree shares libc."""
        if res.path not in self._kinds:
            assert res.node is not None
            with self.view.open(res.node) as f:
                self._kinds[res.path] = identify(f)
        return self._kinds[res.path]

    def load(self, path: str, real: Resolved, info: ElfInfo) -> Deps:
        """Breadth first, like _dl_map_object_deps: each name is loaded once, by its first needer."""
        top = Obj(path, real, info)
        deps = Deps([top], [])
        known: set[str] = set()  # names (requested or DT_SONAME) and real paths already loaded
        if info.interp:
            self._interpreter(top, deps, known)
        queue = deque(deps.objects)
        while queue:
            obj = queue.popleft()
            for name in obj.info.needed:
                if name in known:
                    continue
                known.add(name)  # once per name, found or not: one problem per cause
                found = self._find(name, obj, deps)
                if found is None or found.real.path in known:
                    continue
                known.update(n for n in (found.real.path, found.info.soname) if n)
                deps.objects.append(found)
                queue.append(found)
        return deps

    def _interpreter(self, top: Obj, deps: Deps, known: set[str]) -> None:
        """The kernel maps PT_INTERP; as ld.so it then satisfies DT_NEEDED entries naming its soname."""
        name = top.info.interp or ""
        known.add(posixpath.basename(name))  # if it is missing, that is the one problem to report
        skipped: list[str] = []
        found = self._try(name, top, skipped)
        if found is None:
            deps.missing.append(Missing(name, top, (name,), tuple(skipped), interpreter=True))
            return
        known.update(n for n in (found.real.path, found.info.soname) if n)
        deps.objects.append(found)

    def _find(self, name: str, obj: Obj, deps: Deps) -> Obj | None:
        if "/" in name:  # DT_NEEDED with a slash is a path (DSTs expanded), not searched
            searched = tuple(self._expand(name, obj))
            candidates = list(searched)
        else:
            searched = tuple(self.dirs(obj))
            candidates = [posixpath.join(d, name) for d in searched]
        skipped: list[str] = []
        for candidate in candidates:
            found = self._try(candidate, obj, skipped)
            if found is not None:
                return found
        deps.missing.append(Missing(name, obj, searched, tuple(skipped)))
        return None

    def _try(self, path: str, loader: Obj, skipped: list[str]) -> Obj | None:
        """The object at `path` if ld.so would take it for `loader`; else None (noting why in `skipped`)."""
        try:
            res = self.view.resolve(path)
        except SymlinkLoop:
            skipped.append(f"{path} (symlink loop)")
            return None
        if res.node is None or res.node.kind != "file":
            return None
        try:
            kind = self.identify(res)
        except OSError as e:
            skipped.append(f"{path} ({e.strerror})")
            return None
        if not isinstance(kind, ElfInfo) or not loader.info.loads(kind):
            skipped.append(f"{path} ({kind.describe() if isinstance(kind, ElfInfo) else 'not ELF'})")
            return None
        return Obj(path, res, kind, loader)

    def dirs(self, obj: Obj) -> list[str]:
        """ld.so's order: DT_RPATH of the loading chain (unless this object has DT_RUNPATH),
        LD_LIBRARY_PATH, the object's own DT_RUNPATH, ld.so.conf (the cache), the default dirs."""
        out: list[str] = []
        if not obj.info.runpath:
            link: Obj | None = obj
            while link is not None:
                if not link.info.runpath:  # an object with DT_RUNPATH has its DT_RPATH ignored
                    out += [d for entry in link.info.rpath for d in self._expand(entry, link)]
                link = link.loader
        out += self.env_dirs
        out += [d for entry in obj.info.runpath for d in self._expand(entry, obj)]
        out += self.conf_dirs()
        out += default_dirs(obj.info)
        # relative entries are relative to the cwd at run time: not modelled
        return [d for d in dict.fromkeys(p.rstrip("/") or "/" for p in out) if d.startswith("/")]

    def _expand(self, entry: str, obj: Obj) -> list[str]:
        """Dynamic string tokens; $LIB has one compiled-in value that depends on the distribution."""
        origin = [obj.origin] if obj.loader is not None or self.proc else []
        values = {"ORIGIN": origin, "PLATFORM": [os.uname().machine], "LIB": lib_names(obj.info)}
        out = [""]
        pos = 0
        for m in _DST.finditer(entry):
            out = [o + entry[pos:m.start()] + v for o in out for v in values[m.group(1) or m.group(2)]]
            pos = m.end()
        return [o + entry[pos:] for o in out] if entry else []

    def conf_dirs(self) -> tuple[str, ...]:
        if self._conf is None:
            out: list[str] = []
            self._read_conf("/etc/ld.so.conf", out, set(), 0)
            self._conf = tuple(out)
        return self._conf

    def _read_conf(self, path: str, out: list[str], seen: set[str], depth: int) -> None:
        """ldconfig's format: one directory per line, `include GLOB...` (relative to the file), `hwcap`."""
        if path in seen or depth > MAX_CONF_DEPTH:
            return
        seen.add(path)
        for line in self._text(path).splitlines():
            line = line.split("#", 1)[0].strip()
            words = line.split()
            if words and words[0] == "include":
                for pattern in words[1:]:
                    try:
                        confs = self.view.glob(posixpath.join(posixpath.dirname(path), pattern))
                    except SymlinkLoop:
                        continue  # ldconfig skips what it cannot open
                    for conf in confs:
                        self._read_conf(conf, out, seen, depth + 1)
            elif line.startswith("/"):
                out.append(line)

    def _text(self, path: str) -> str:
        try:
            res = self.view.resolve(path)
            if res.node is None or res.node.kind != "file":
                return ""
            with self.view.open(res.node) as f:
                return f.read(1 << 20).decode(errors="replace")
        except (OSError, SymlinkLoop):
            return ""


_DST = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")


def _triplets(info: ElfInfo) -> tuple[str, ...]:
    return tuple(t for _, c, em, le, trips in ARCHES
                 if (c, em, le) == (info.elfclass, info.machine, info.little_endian) for t in trips)


def lib_names(info: ElfInfo) -> list[str]:
    """Candidates for $LIB: Debian's lib/<triplet>, Fedora's lib64, Arch's lib."""
    return [f"lib/{t}" for t in _triplets(info)] + (["lib64"] if info.elfclass == 64 else []) + ["lib"]


def default_dirs(info: ElfInfo) -> list[str]:
    """ld.so's trusted directories for an object of this class and machine; wrong-class ones are skipped
    anyway, so listing both lib64 and lib is harmless."""
    multiarch = [f"{p}/{t}" for t in _triplets(info) for p in ("/lib", "/usr/lib")]
    wordsize = ["/lib64", "/usr/lib64"] if info.elfclass == 64 else ["/lib32", "/usr/lib32"]
    return multiarch + wordsize + ["/lib", "/usr/lib"]


# -- the host closure ---------------------------------------------------------------------------


class MissingLibrary(UsageError):
    """ld.so would refuse to start a program: a library (or the ELF interpreter) is not found."""

    def __init__(self, missing: Missing) -> None:
        self.soname = missing.name
        self.needed_by = missing.needed_by.real.path
        self.searched = missing.searched
        what = "the ELF interpreter" if missing.interpreter else "the shared library"
        skipped = f"; skipped {', '.join(missing.skipped)}" if missing.skipped else ""
        super().__init__(f"{what} {self.soname}, needed by {self.needed_by}, is not found",
                         f"searched {', '.join(self.searched)}{skipped}")


def closure(paths: list[str], search: Search | None = None) -> list[str]:
    """Every host path needed to run `paths` in an empty root: the files, their #! and ELF interpreters,
    their libraries, and every symlink met on the way (directory links such as /lib -> usr/lib too).

    Each listed path's parent directory is a real directory, so a copier can go down the list, in
    order, creating parents, copying files and recreating links with os.readlink. `search`: a host
    Search to share, so that files it identified already are not parsed again.
    """
    search = search or Search(HostView())
    found: set[str] = set()
    for path in paths:
        if not path.startswith("/"):
            raise UsageError(f"'{path}' is not an absolute host path")
        _add_program(search, path, found, 0)
    return sorted(found, key=lambda p: p.split("/"))  # parents before children, independent of input order


def _add_program(search: Search, path: str, found: set[str], depth: int) -> None:
    real = search.view.resolve(path)  # SymlinkLoop is a UsageError already
    if real.node is None or real.node.kind != "file":
        raise UsageError(f"{path} is not a file on the host" if real.node else f"{path} does not exist",
                         "give the path of an executable or a library")
    found.update(real.links)
    found.add(real.path)
    kind = search.identify(real)
    if isinstance(kind, Script):
        if depth >= MAX_SCRIPTS or not kind.interpreter.startswith("/"):
            raise UsageError(f"{path}: cannot follow its #! interpreter '{kind.interpreter}'",
                             "scripts may nest 4 deep, with absolute interpreter paths")
        _add_program(search, kind.interpreter, found, depth + 1)
    elif isinstance(kind, ElfInfo):
        deps = search.load(path, real, kind)
        if deps.missing:
            raise MissingLibrary(deps.missing[0])
        for obj in deps.objects:
            found.update(obj.real.links)
            found.add(obj.real.path)
    else:
        raise UsageError(f"{path} is neither an ELF file nor a #! script")
