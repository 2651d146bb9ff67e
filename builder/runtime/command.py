"""Starting CMD inside a sandbox: exec or posix_spawn, searched in the run's PATH, and one clear
message when it cannot start (naming a missing #! or ELF interpreter).

This runs inside the sandbox's mount namespace: no module may be imported here (it would be read
from the sandbox's files), so everything it needs is imported at the top.
"""
from __future__ import annotations

import os
import struct
import sys


def exec_command(argv: list[str], env: dict[str, str]) -> None:
    """exec argv[0] (searched in env's PATH); on failure say which file is missing, and exit."""
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        _failed(argv, env, e)


def spawn_command(argv: list[str], env: dict[str, str], defaulted: tuple[int, ...]) -> int:
    """posix_spawn argv[0] (searched in env's PATH, as execvpe does) with an empty signal mask and
    `defaulted` signals at their default action; its pid. On failure say why, and exit."""
    program = argv[0]
    paths = [program] if "/" in program else [os.path.join(d or ".", program)
                                              for d in env.get("PATH", os.defpath).split(os.pathsep)]
    first: OSError | None = None
    last: OSError = FileNotFoundError(2, "No such file or directory")
    for path in paths:
        try:
            return os.posix_spawn(path, argv, env, setsigmask=(), setsigdef=defaulted)
        except (FileNotFoundError, NotADirectoryError) as e:
            last = e
        except OSError as e:
            last = e
            first = first or e
    _failed(argv, env, first or last)
    return -1  # not reached


def _failed(argv: list[str], env: dict[str, str], error: OSError) -> None:
    if isinstance(error, FileNotFoundError):
        program = _which(argv[0], env.get("PATH", ""))
        missing = _interpreter(program) if program else None
        if missing:  # the program is there: the kernel's ENOENT is about its interpreter
            print(f"nsbuild: error: {argv[0]}: its interpreter {missing} is missing in the sandbox",
                  file=sys.stderr)
        else:
            print(f"nsbuild: error: {argv[0]}: command not found in the sandbox", file=sys.stderr)
        os._exit(127)
    print(f"nsbuild: error: {argv[0]}: {error.strerror}", file=sys.stderr)
    os._exit(126)


def _which(program: str, path: str) -> str | None:
    if "/" in program:
        return program if os.path.lexists(program) else None
    for d in path.split(os.pathsep):
        if d and os.path.exists(os.path.join(d, program)):
            return os.path.join(d, program)
    return None


def _interpreter(program: str) -> str | None:
    """The #! interpreter or ELF PT_INTERP of `program`, if that file is missing.

    Read by hand, not with elf.py/pyelftools: this runs inside the sandbox, where importing a
    module would load the sandbox's files."""
    try:
        with open(program, "rb") as f:
            head = f.read(256)
            if head.startswith(b"#!"):
                words = head[2:].split(b"\n", 1)[0].split()
                interp = os.fsdecode(words[0]) if words else ""
            elif head[:4] == b"\x7fELF" and head[4] == 2 and head[5] == 1:  # 64-bit little-endian
                phoff, = struct.unpack_from("<Q", head, 32)
                phentsize, phnum = struct.unpack_from("<HH", head, 54)
                f.seek(phoff)
                table = f.read(phentsize * phnum)
                interp = ""
                for i in range(phnum):
                    kind, _, offset, _, _, size = struct.unpack_from("<IIQQQQ", table, i * phentsize)
                    if kind == 3:  # PT_INTERP
                        f.seek(offset)
                        interp = os.fsdecode(f.read(size).rstrip(b"\0"))
            else:
                return None
    except (OSError, struct.error, IndexError):
        return None
    return interp if interp and not os.path.exists(interp) else None
