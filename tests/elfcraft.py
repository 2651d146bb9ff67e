"""Write small ELF objects for tests: just what ld.so's search reads (program headers, PT_INTERP, a dynamic
segment with its string table). They cannot run, but any ELF reader sees a well-formed file."""
from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

EM = {"EM_386": 3, "EM_ARM": 40, "EM_X86_64": 62, "EM_AARCH64": 183, "EM_RISCV": 243}
DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 1, 5, 10, 14, 15, 29


def make_elf(path: Path, *, needed: tuple[str, ...] = (), rpath: str | None = None, runpath: str | None = None,
             soname: str | None = None, interp: str | None = None, elfclass: int = 64,
             machine: str = "EM_X86_64") -> Path:
    wide = elfclass == 64
    ehsize, phentsize, dynsize = (64, 56, 16) if wide else (52, 32, 8)
    phnum = 3 if interp else 2
    strtab = bytearray(b"\0")

    def string(s: str) -> int:
        strtab.extend(s.encode() + b"\0")
        return len(strtab) - len(s) - 1

    dyn = [(DT_NEEDED, string(n)) for n in needed]
    dyn += [(tag, string(v)) for tag, v in ((DT_RPATH, rpath), (DT_RUNPATH, runpath), (DT_SONAME, soname)) if v]
    interp_off = ehsize + phnum * phentsize
    interp_bytes = interp.encode() + b"\0" if interp else b""
    str_off = interp_off + len(interp_bytes)
    dyn_off = (str_off + len(strtab) + 7) & ~7
    dyn += [(DT_STRTAB, str_off), (DT_STRSZ, len(strtab)), (0, 0)]
    size = dyn_off + len(dyn) * dynsize

    # segments: (type, offset, size); addresses equal offsets, one PT_LOAD maps the whole file
    segs = [(1, 0, size), (2, dyn_off, len(dyn) * dynsize)] + ([(3, interp_off, len(interp_bytes))] if interp else [])
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1, 1, 0]) + bytes(8)
    if wide:
        out = struct.pack("<16sHHIQQQIHHHHHH", ident, 3, EM[machine], 1, 0, ehsize, 0, 0, ehsize, phentsize,
                          phnum, 64, 0, 0)
        phdrs = b"".join(struct.pack("<IIQQQQQQ", t, 4, o, o, o, n, n, 8) for t, o, n in segs)
        dyns = b"".join(struct.pack("<qQ", t, v) for t, v in dyn)
    else:
        out = struct.pack("<16sHHIIIIIHHHHHH", ident, 3, EM[machine], 1, 0, ehsize, 0, 0, ehsize, phentsize,
                          phnum, 40, 0, 0)
        phdrs = b"".join(struct.pack("<IIIIIIII", t, o, o, o, n, n, 4, 4) for t, o, n in segs)
        dyns = b"".join(struct.pack("<iI", t, v) for t, v in dyn)
    data = out + phdrs + interp_bytes + bytes(strtab)
    data += bytes(dyn_off - len(data)) + dyns
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o755)
    return path


def foreign_copy(src: str, dst: Path, machine: str) -> Path:
    """A copy of a real ELF with its e_machine patched (little-endian files): an ELF of another architecture."""
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o755)
    with open(dst, "r+b") as f:
        f.seek(18)
        f.write(struct.pack("<H", EM[machine]))
    return dst
