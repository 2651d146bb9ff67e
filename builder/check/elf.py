"""ELF facts, and the shared-library search of glibc's ld.so over any filesystem view.

One implementation serves two filesystems: the host (`closure`: what to copy so that binaries run in
an empty root) and a sandbox tree that is not mounted yet (tree.py: the pre-flight of a command).
A `View` only answers "what is at this canonical path, unfollowed"; path resolution, ld.so's
search order and ld.so.conf parsing are written once on top of it.

pyelftools costs ~40 ms to import, so it is imported only when an ELF file is read.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import BinaryIO

from builder.errors import UsageError

MAX_SYMLINKS = 40     # the kernel follows at most this many links in one path walk (ELOOP)
MAX_SCRIPTS = 4       # binfmt_script: nested #! interpreters (BINPRM_MAX_RECURSION)
SHEBANG_MAX = 256     # the kernel reads this much of a script for its #! line (BINPRM_BUF_SIZE)
MAX_CONF_DEPTH = 8    # nested ld.so.conf includes

# uname machines, ELF class, e_machine (as pyelftools names it), little-endian, Debian multiarch triplets
ARCHES: tuple[tuple[tuple[str, ...], int, str, bool, tuple[str, ...]], ...] = (
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
    for unames, elfclass, em, _, _ in ARCHES:
        if machine in unames:
            return elfclass, em
    raise UsageError(f"unknown machine '{machine}'", "nsbuild knows " + ", ".join(
        u for unames, *_ in ARCHES for u in unames))


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
