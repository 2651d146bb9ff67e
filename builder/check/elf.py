"""ELF facts, and the shared-library search of glibc's ld.so over any filesystem view.

One implementation serves two filesystems: the host (`closure`: what to copy so that binaries run in
an empty root) and a sandbox tree that is not mounted yet (tree.py: the pre-flight of a command).
A `View` only answers "what is at this canonical path, unfollowed"; path resolution, ld.so's
search order and ld.so.conf parsing are written once on top of it.

pyelftools costs ~40 ms to import, so it is imported only when an ELF file is read.
"""
from __future__ import annotations

import errno
import fnmatch
import io
import os
import posixpath
import re
import stat
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import BinaryIO, Union

from builder.errors import UsageError

MAX_SYMLINKS = 40     # the kernel follows at most this many links in one path walk (ELOOP)
MAX_SCRIPTS = 4       # binfmt_script: nested #! interpreters (BINPRM_MAX_RECURSION)
SHEBANG_MAX = 256     # the kernel reads this much of a script for its #! line (BINPRM_BUF_SIZE)
MAX_CONF_DEPTH = 8    # nested ld.so.conf includes

# uname machines, ELF class, e_machine (as pyelftools names it), little-endian, Debian multiarch triplets
_ARCHES: tuple[tuple[tuple[str, ...], int, str, bool, tuple[str, ...]], ...] = (
    (("x86_64", "amd64"), 64, "EM_X86_64", True, ("x86_64-linux-gnu",)),
    (("i386", "i486", "i586", "i686"), 32, "EM_386", True, ("i386-linux-gnu",)),
    (("aarch64", "arm64"), 64, "EM_AARCH64", True, ("aarch64-linux-gnu",)),
    (("armv7l", "armv6l", "armv8l", "arm"), 32, "EM_ARM", True, ("arm-linux-gnueabihf", "arm-linux-gnueabi")),
    (("riscv64",), 64, "EM_RISCV", True, ("riscv64-linux-gnu",)),
    (("ppc64le",), 64, "EM_PPC64", True, ("powerpc64le-linux-gnu",)),
    (("ppc64",), 64, "EM_PPC64", False, ("powerpc64-linux-gnu",)),
    (("s390x",), 64, "EM_S390", False, ("s390x-linux-gnu",)),
    (("loongarch64",), 64, "EM_LOONGARCH", True, ("loongarch64-linux-gnu",)),
    ((), 32, "EM_X86_64", True, ("x86_64-linux-gnux32",)),  # x32 has no uname of its own
)
# 64-bit kernels that also run their 32-bit sibling (IA32 emulation is on in every distro kernel)
_COMPAT = {"EM_X86_64": (32, "EM_386")}


def host_arch(machine: str | None = None) -> tuple[int, str]:
    """(ELF class, e_machine) of programs this host runs natively, from `os.uname().machine`."""
    machine = machine or os.uname().machine
    for unames, elfclass, em, _, _ in _ARCHES:
        if machine in unames:
            return elfclass, em
    raise UsageError(f"unknown machine '{machine}'", "nsbuild knows " + ", ".join(
        u for unames, *_ in _ARCHES for u in unames))


# -- what a file is ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ElfInfo:
    elfclass: int                  # 32 or 64
    machine: str                   # e_machine, e.g. "EM_X86_64" (a number for machines pyelftools lacks)
    little_endian: bool
    interp: str | None = None      # PT_INTERP
    needed: tuple[str, ...] = ()   # DT_NEEDED, in order
    rpath: tuple[str, ...] = ()    # DT_RPATH entries
    runpath: tuple[str, ...] = ()  # DT_RUNPATH entries
    soname: str | None = None      # DT_SONAME

    @property
    def arch(self) -> tuple[int, str]:
        return self.elfclass, self.machine

    def describe(self) -> str:
        return f"ELF{self.elfclass} {self.machine}{'' if self.little_endian else ' big-endian'}"

    def loads(self, other: ElfInfo) -> bool:
        """Whether ld.so, running this object, would accept `other` as a library (else it keeps searching)."""
        return (self.elfclass, self.machine, self.little_endian) == (
            other.elfclass, other.machine, other.little_endian)

    def runs_on_host(self) -> bool:
        host = host_arch()
        native = self.little_endian == (sys.byteorder == "little")
        return native and (self.arch == host or self.arch == _COMPAT.get(host[1]))


@dataclass(frozen=True)
class Script:
    interpreter: str          # the first word after "#!"
    arg: str | None = None    # the rest of the line: the kernel passes it as one argument


def identify(f: BinaryIO) -> ElfInfo | Script | None:
    """An ELF file, a #! script, or None (the kernel would say ENOEXEC)."""
    head = f.read(SHEBANG_MAX)
    if head.startswith(b"\x7fELF"):
        f.seek(0)
        return _read_elf(f)
    if head.startswith(b"#!"):
        return _shebang(head)
    return None


def identify_file(path: str) -> ElfInfo | Script | None:
    with open(path, "rb") as f:
        return identify(f)


def _shebang(head: bytes) -> Script | None:
    m = re.match(rb"[ \t]*([^ \t\n]*)[ \t]*([^\n]*)", head[2:])
    interp, arg = (m.group(1), m.group(2).rstrip(b" \t")) if m else (b"", b"")
    if not interp:
        return None
    return Script(os.fsdecode(interp), os.fsdecode(arg) if arg else None)


def _read_elf(f: BinaryIO) -> ElfInfo | None:
    """Facts ld.so reads, taken from program headers only: section headers may be stripped."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile
    from elftools.elf.segments import InterpSegment

    try:
        elf = ELFFile(f)
        interp = None
        tags: dict[str, list[str]] = {"needed": [], "rpath": [], "runpath": [], "soname": []}
        for seg in elf.iter_segments():
            if isinstance(seg, InterpSegment):
                interp = seg.get_interp_name()
            elif isinstance(seg, DynamicSegment):
                for tag in seg.iter_tags():
                    name = tag.entry.d_tag[3:].lower() if isinstance(tag.entry.d_tag, str) else ""
                    if name in tags:
                        tags[name].append(getattr(tag, name))
        return ElfInfo(
            elfclass=elf.elfclass, machine=str(elf["e_machine"]), little_endian=elf.little_endian,
            interp=interp, needed=tuple(tags["needed"]),
            rpath=tuple(p for v in tags["rpath"] for p in v.split(":")),
            runpath=tuple(p for v in tags["runpath"] for p in v.split(":")),
            soname=tags["soname"][0] if tags["soname"] else None)
    except (ELFError, ValueError, KeyError, AttributeError):  # truncated or garbled: not loadable
        return None


# -- filesystem views ---------------------------------------------------------------------------


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


# -- ld.so's search ----------------------------------------------------------------------------


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
    return tuple(t for _, c, em, le, trips in _ARCHES
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
