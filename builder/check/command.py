"""Does a command start in the sandbox? Checked on the tree view (tree.py) before anything is mounted:
the program exists (in PATH) and is executable, its #! interpreters, the ELF architecture, the ELF
interpreter and every needed library resolve in the tree, nothing sits on a noexec mount."""
from __future__ import annotations

import os
import posixpath
import re

from builder.check.elf import ElfInfo, MAX_SCRIPTS, Script, host_arch
from builder.check.ldso import Missing, Obj, Search
from builder.check.view import Resolved, SymlinkLoop
from builder.check.tree import SandboxTree
from builder.errors import Problem
from builder.recipe.model import DEFAULT_PATH

_DST_ORIGIN = re.compile(r"\$(ORIGIN\b|\{ORIGIN\})")


def check_command(tree: SandboxTree, argv: tuple[str, ...], env: dict[str, str], *, cwd: str = "/",
                  key: str = "run.command") -> list[Problem]:
    """What would stop `argv` from starting in the sandbox: a missing or non-executable program, a #!
    interpreter, an ELF of another architecture, a missing ELF interpreter or library."""
    if not argv or not argv[0]:
        return [Problem(key, "is empty", 'e.g. command = ["/bin/sh"]')]
    check = _Starts(tree, env, cwd, key)
    check.program(argv[0], "", 0, in_path="/" not in argv[0])
    return check.problems


def check_run(tree: SandboxTree) -> list[Problem]:
    """check_command for the recipe's own [run] table."""
    run = tree.recipe.run
    return check_command(tree, run.command, dict(run.env), cwd=run.cwd)


class _Starts:
    def __init__(self, tree: SandboxTree, env: dict[str, str], cwd: str, key: str) -> None:
        self.tree, self.env, self.cwd, self.key = tree, env, cwd, key
        held = tree.mount_at("/proc")
        self.proc = held is not None and held[0] == "/proc" and held[1].type == "proc"
        self.search = Search(tree, env.get("LD_LIBRARY_PATH", ""), self.proc)
        self.problems: list[Problem] = []

    def add(self, message: str, hint: str = "") -> None:
        problem = Problem(self.key, message, hint)
        if problem not in self.problems:
            self.problems.append(problem)

    def program(self, name: str, role: str, depth: int, in_path: bool) -> None:
        """Check one program; `role` says why it is needed, e.g. ", the #! interpreter of /x (layer[0]),".
        Without `in_path` a name is a path (a #! interpreter is, even without a slash)."""
        if not in_path:
            path = posixpath.join(self.cwd, name)
        else:
            found = self.which(name)
            if found is None:
                self.add(f"'{name}'{role} is not found in PATH ({self.env.get('PATH', DEFAULT_PATH)})",
                         "add a layer that provides it, or give its absolute path")
                return
            path = found
        res = self.locate(path, role)
        if res is None:
            return
        node = res.node
        assert node is not None
        if node.kind != "file":
            self.add(f"{path}{role} is not a regular file but a {node.kind} ({node.origin})")
            return
        if not node.mode & 0o111:
            self.add(f"{path}{role} is not executable (mode {node.mode:04o}, {node.origin})",
                     "give it an exec bit in its layer, or a mode in its [[path]]")
            return
        if self.noexec(path, role, res):
            return
        try:
            kind = self.search.identify(res)
        except OSError as e:
            self.add(f"{path}{role} cannot be read: {e.strerror}")
            return
        if isinstance(kind, Script):
            self.script(res, kind, depth)
        elif isinstance(kind, ElfInfo):
            self.elf(path, res, kind)
        else:
            self.add(f"{path}{role} ({node.origin}) is neither an ELF executable nor a #! script",
                     "the kernel would refuse it with ENOEXEC; add a #! line")

    def script(self, res: Resolved, script: Script, depth: int) -> None:
        assert res.node is not None
        if depth >= MAX_SCRIPTS:
            self.add(f"{res.path}: #! interpreters nest more than {MAX_SCRIPTS} deep", "the kernel refuses that")
            return
        role = f", the #! interpreter of {res.path} ({res.node.origin}),"
        self.program(script.interpreter, role, depth + 1, in_path=False)
        arg = script.arg
        if posixpath.basename(script.interpreter) == "env" and arg and not arg.startswith("-") and " " not in arg:
            self.program(arg, f", run by the #! line of {res.path} ({res.node.origin}) through env,", depth + 1,
                         in_path="/" not in arg)

    def elf(self, path: str, res: Resolved, info: ElfInfo) -> None:
        if not info.runs_on_host():
            elfclass, machine = host_arch()
            self.add(f"{res.path} ({res.node.origin if res.node else '?'}) is an {info.describe()} program, "
                     f"but this host runs ELF{elfclass} {machine}",
                     f"use a layer built for {os.uname().machine}")
            return
        deps = self.search.load(path, res, info)
        for obj in deps.objects[1:]:  # ld.so maps them executable: EPERM on a noexec mount
            self.noexec(obj.real.path, f", loaded for {res.path},", obj.real)
        for missing in deps.missing:
            self.missing(missing)

    def noexec(self, path: str, role: str, res: Resolved) -> bool:
        origin = self.tree.noexec(res.path)
        if origin:
            self.add(f"{path}{role} is on a noexec mount ({origin})", f'drop "noexec" from {origin}.attrs')
        return origin is not None

    def missing(self, m: Missing) -> None:
        by = f"{m.needed_by.real.path} ({m.needed_by.source})"
        skipped = f"; skipped {', '.join(m.skipped)}" if m.skipped else ""
        if m.interpreter or "/" in m.name:
            role = ", the ELF interpreter of " if m.interpreter else ", needed by "
            res = self.locate(m.searched[0] if m.searched else m.name, role + by + ",")
            if res is not None:
                self.add(f"{m.name}{role}{by}, is not a loadable ELF object{skipped}")
            return
        self.add(f"{m.name}, needed by {by}, is not found in the sandbox (searched {', '.join(m.searched)}"
                 f"{skipped})", self.no_proc(m.needed_by) or self.library_hint(m))

    def library_hint(self, m: Missing) -> str:
        """A layer hides the library, or where it could go: the first searched directory that exists."""
        dirs = [self.canonical(d) for d in m.searched]
        hidden = next((h for h in (self.tree.hidden(posixpath.join(d, m.name)) for d in dirs) if h), None)
        if hidden:
            return hidden
        there = next(((d, c) for d, c in zip(m.searched, dirs) if self.tree.node(c)), None)
        return f"add it to a layer, e.g. in {there[0]} ({self.tree.describe(there[1])})" if there else \
            "add it to a layer"

    def no_proc(self, obj: Obj) -> str | None:
        """A hint when the program's $ORIGIN paths are lost for want of /proc."""
        while obj.loader is not None:
            obj = obj.loader
        if self.proc or not any(_DST_ORIGIN.search(e) for e in obj.info.rpath + obj.info.runpath):
            return None
        return (f"{obj.real.path} finds libraries through $ORIGIN, which ld.so reads from /proc/self/exe: "
                'add a [[mount]] with type = "proc" on /proc')

    def which(self, name: str) -> str | None:
        """execvp's search: the first PATH entry holding an executable regular file."""
        for d in self.env.get("PATH", DEFAULT_PATH).split(":"):
            candidate = posixpath.join(self.cwd, d or ".", name)
            try:
                node = self.tree.resolve(candidate).node
            except SymlinkLoop:
                continue
            if node is not None and node.kind == "file" and node.mode & 0o111:
                return candidate
        return None

    def locate(self, path: str, role: str) -> Resolved | None:
        """`path` resolved, or None after adding the problem: missing (and why), or a symlink loop."""
        try:
            res = self.tree.resolve(path)
        except SymlinkLoop as e:
            first = e.links[0]
            self.add(f"{path}{role} cannot be resolved: too many levels of symbolic links",
                     f"the link {first} ({self.tree.describe(first)}) leads into a loop")
            return None
        if res.node is not None:
            return res
        origin = self.tree.describe(res.parent)
        hint = self.tree.hidden(res.path) or f"its nearest existing parent, {res.parent}, comes from {origin}" + (
            ": add it to that layer or one above" if origin.startswith(("layer[", "root.upper")) else "")
        via = f" (it leads to {res.path})" if res.links else ""
        self.add(f"{path}{role} does not exist in the sandbox{via}", hint)
        return None

    def canonical(self, path: str) -> str:
        try:
            return self.tree.resolve(path).path
        except SymlinkLoop:
            return path
