"""The plan's data: steps (one syscall each), their symbolic arguments, and the plan itself.

Plain classes, not dataclasses: a warm build runs a cached plan (plancache.py) and must not pay
~12 ms to import dataclasses (and inspect, ast, dis) for types it only reads.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Union


class Fd(str):
    """A symbolic fd ("%root") or AT_FDCWD."""


class FdPath(str):
    """"/proc/self/fd/N" of a symbolic fd, for kernels whose overlayfs takes no fds."""


class Flags(tuple):
    """Symbolic flag names, OR-ed by the executor."""


class LoopPath(str):
    """"/dev/loopN", N being the value a LOOP_CTL_GET_FREE step returned ("#loop0")."""


class Value(str):
    """A value an earlier step returned ("#userns0": the pid of a clone step's child)."""


class ProcPath(str):
    """"/proc/PID/REST" of a value an earlier step returned, written "#userns0/uid_map"."""


if TYPE_CHECKING:
    Arg = Union[int, str, bytes, None, Fd, FdPath, Flags, LoopPath, Value, ProcPath]

# how each argument type is stored in a cached plan (marshal knows no str subclasses)
_TAGS = {Fd: "F", FdPath: "P", Flags: "L", LoopPath: "O", Value: "V", ProcPath: "R"}
_TYPES = {tag: kind for kind, tag in _TAGS.items()}


class Step:
    __slots__ = ("call", "args", "out", "origin", "where", "ok", "again")

    def __init__(self, call: str, args: tuple[Arg, ...], out: str | None = None, origin: str = "",
                 where: str = "host", ok: tuple[str, ...] = (), again: int = 0) -> None:
        self.call = call
        self.args = args
        self.out = out            # symbolic fd ("%x") or value ("#x") the call returns
        self.origin = origin      # recipe key path
        self.where = where        # "host" (the nsbuild process) or "child" (a forked child)
        self.ok = ok              # errno names that count as success (EEXIST for mkdir -p)
        self.again = again        # on EBUSY (a race for a free loop device): rerun from this many steps back

    def _key(self) -> tuple:
        return (self.call, self.args, self.out, self.origin, self.where, self.ok, self.again)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Step) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Step{self._key()!r}"

    def dump(self) -> tuple:
        args = tuple((_TAGS[type(a)], tuple(a) if isinstance(a, Flags) else str(a)) if type(a) in _TAGS else a
                     for a in self.args)
        return (self.call, args, self.out, self.origin, self.where, self.ok, self.again)

    @classmethod
    def load(cls, data: tuple) -> Step:
        call, args, out, origin, where, ok, again = data
        return cls(call, tuple(_TYPES[a[0]](a[1]) if isinstance(a, tuple) else a for a in args),
                   out, origin, where, ok, again)


class Plan:
    __slots__ = ("recipe", "name", "strategy", "kernel", "steps", "result", "notes", "compiled")

    def __init__(self, recipe: str, name: str, strategy: str, kernel: str, steps: tuple[Step, ...],
                 result: str = "%ns", notes: tuple[str, ...] = ()) -> None:
        self.recipe, self.name, self.strategy, self.kernel = recipe, name, strategy, kernel
        self.steps, self.result, self.notes = steps, result, notes
        self.compiled: list | None = None  # the executor's ready-to-run form of the steps, made once

    def _key(self) -> tuple:
        return (self.recipe, self.name, self.strategy, self.kernel, self.steps, self.result, self.notes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self._key() == other._key()

    def __repr__(self) -> str:
        return f"Plan({self.name!r}, {self.strategy!r}, {len(self.steps)} steps)"

    def dump(self) -> tuple:
        return (self.recipe, self.name, self.strategy, self.kernel, tuple(s.dump() for s in self.steps),
                self.result, self.notes)

    @classmethod
    def load(cls, data: tuple) -> Plan:
        recipe, name, strategy, kernel, steps, result, notes = data
        return cls(recipe, name, strategy, kernel, tuple(Step.load(s) for s in steps), result, notes)
