"""The plan's data: steps (one syscall each), their symbolic arguments, the plan itself and its
blocks, and where its result is persisted (Pin, the plan's last segment).

Plain classes, not dataclasses: a warm build runs a cached plan (plancache.py) and must not pay
~12 ms to import dataclasses (and inspect, ast, dis) for types it only reads.
"""
from __future__ import annotations

import posixpath

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


# A plan's control flow, as blocks of consecutive steps: (kind, start, end, detail).
HOST = "host"            # run by the nsbuild process
NAMESPACE = "namespace"  # run inside the new mount namespace; detail: the fds handed back to the host.
                         # The executor runs them itself and goes back home, or (a process with
                         # threads cannot change namespaces) in a forked child that sends the fds back
RETRY = "retry"          # host steps run again as a group while the last one fails with detail[0]
                         # (EBUSY: another process took the free loop device first), up to 8 times
PERSIST = "persist"      # pin the result in the state directory: run by executor.pin() under the
                         # state dir's lock, after execute() made the namespace
KINDS = (HOST, NAMESPACE, RETRY, PERSIST)
RETRIES = 8  # rounds of a RETRY block

if TYPE_CHECKING:
    Block = tuple[str, int, int, tuple[str, ...]]


class Step:
    __slots__ = ("call", "args", "out", "origin", "where", "ok")

    def __init__(self, call: str, args: tuple[Arg, ...], out: str | None = None, origin: str = "",
                 where: str = "host", ok: tuple[str, ...] = ()) -> None:
        self.call = call          # a name in calls.CALLS
        self.args = args
        self.out = out            # symbolic fd ("%x") or value ("#x") the call returns
        self.origin = origin      # recipe key path
        self.where = where        # "host" (the nsbuild process) or "child" (a NAMESPACE block)
        self.ok = ok              # errno names that count as success (EEXIST for mkdir -p)

    def _key(self) -> tuple:
        return (self.call, self.args, self.out, self.origin, self.where, self.ok)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Step) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Step{self._key()!r}"

    def dump(self) -> tuple:
        args = tuple((_TAGS[type(a)], tuple(a) if isinstance(a, Flags) else str(a)) if type(a) in _TAGS else a
                     for a in self.args)
        return (self.call, args, self.out, self.origin, self.where, self.ok)

    @classmethod
    def load(cls, data: tuple) -> Step:
        call, args, out, origin, where, ok = data
        return cls(call, tuple(_TYPES[a[0]](a[1]) if isinstance(a, tuple) else a for a in args),
                   out, origin, where, ok)


class Plan:
    __slots__ = ("recipe", "name", "strategy", "kernel", "steps", "result", "notes", "blocks", "compiled")

    def __init__(self, recipe: str, name: str, strategy: str, kernel: str, steps: tuple[Step, ...],
                 result: str = "%ns", notes: tuple[str, ...] = (), blocks: tuple[Block, ...] | None = None) -> None:
        self.recipe, self.name, self.strategy, self.kernel = recipe, name, strategy, kernel
        self.steps, self.result, self.notes = steps, result, notes
        self.blocks = ((HOST, 0, len(steps), ()),) if blocks is None else blocks
        self.compiled: list | None = None  # the executor's ready-to-run form of the steps, made once

    def _key(self) -> tuple:
        return (self.recipe, self.name, self.strategy, self.kernel, self.steps, self.result, self.notes,
                self.blocks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self._key() == other._key()

    def __repr__(self) -> str:
        return f"Plan({self.name!r}, {self.strategy!r}, {len(self.steps)} steps)"

    def persist_start(self) -> int:
        """Where the PERSIST block starts (the number of steps if there is none)."""
        return next((start for kind, start, _, _ in self.blocks if kind == PERSIST), len(self.steps))

    def dump(self) -> tuple:
        return (self.recipe, self.name, self.strategy, self.kernel, tuple(s.dump() for s in self.steps),
                self.result, self.notes, self.blocks)

    @classmethod
    def load(cls, data: tuple) -> Plan:
        recipe, name, strategy, kernel, steps, result, notes, blocks = data
        return cls(recipe, name, strategy, kernel, tuple(Step.load(s) for s in steps), result, notes, blocks)


AT_FDCWD = Fd("AT_FDCWD")


class Pin:
    """Where and how a plan's result is persisted: its last segment (PERSIST).

    Which steps depend on the state directory as it is when the build persists (under its lock):
    a new sandbox gets a fresh mount point; a replaced one gets the new namespace slid beneath the
    old one, which is then detached, so the path always holds a namespace; the first build in a
    state directory makes it a private, unbindable mount of its own first (a mount-namespace file
    cannot be bound on a shared mount, and recursive binds of a parent directory must not carry
    the nsfs mounts into sandboxes). A build derives the segment again under the lock
    (with_persist), so a cached plan, or one printed a while ago, persists into the directory as
    it is then.
    """

    __slots__ = ("target", "stacked", "setup", "upper")

    def __init__(self, target: str, stacked: bool = False, setup: str = "", upper: bool | None = None) -> None:
        self.target = target    # NAME.mnt in the state directory
        self.stacked = stacked  # a namespace is pinned there already: replace it
        self.setup = setup      # what the state directory still needs: "" (nothing), "bind" (a mount
        #                         of its own, then unbindable) or "unbindable" (it is a mount already)
        self.upper = upper      # a plan's tmpfs upper is pinned too, read-only, on NAME.upper (for export):
        #                         False there is none yet, True one is there (replace it), None: not pinned
        #                         (the caller has no fd of it: a batch, the template)

    @property
    def upper_target(self) -> str:
        return self.target[:-len(".mnt")] + ".upper"

    def _key(self) -> tuple:
        return (self.target, self.stacked, self.setup, self.upper)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pin) and self._key() == other._key()

    def __repr__(self) -> str:
        return f"Pin({self.target!r}, stacked={self.stacked}, setup={self.setup!r}, upper={self.upper})"


UPPER = "%mnt:upper"  # the planner's tmpfs upper (detached.py), which a persist segment may pin as well


def persist_steps(result: str, pin: Pin, upper: str | None = None) -> list[Step]:
    """The persist steps that pin `result` (a namespace fd) as `pin` says, and `upper` (the fd of a
    tmpfs upper) beside it unless pin.upper is None."""
    out: list[Step] = []

    def emit(call: str, *args: object, ret: str | None = None, ok: tuple[str, ...] = ()) -> None:
        out.append(Step(call, args, ret, "persist", ok=ok))  # type: ignore[arg-type]

    state = posixpath.dirname(pin.target)
    if pin.setup == "bind":  # bound onto itself, so that its propagation can be its own
        emit("open_tree", AT_FDCWD, state, Flags(("OPEN_TREE_CLONE", "OPEN_TREE_CLOEXEC")), ret="%state")
        emit("move_mount", Fd("%state"), "", AT_FDCWD, state, Flags(("MOVE_MOUNT_F_EMPTY_PATH",)))
    if pin.setup:
        # unbindable (which is also private): a recursive bind of a parent directory, such as $CWD
        # at /work, then leaves the nsfs mounts out instead of failing with ELOOP
        emit("mount_setattr", AT_FDCWD, state, Flags(), Flags(), Flags(), Flags(("MS_UNBINDABLE",)))
    # the upper first, the namespace last: once the namespace is pinned, nothing else may fail
    if upper and pin.upper is not None:
        # only the kernel holds a tmpfs upper: pinned here, export can read what changed in the sandbox.
        # Read-only, no set-uid, devices or exec: what the sandbox wrote must not act on the host through it
        # (overlayfs writes through its own clone of the mount, which keeps its attributes)
        emit("mount_setattr", Fd(upper), "", Flags(("AT_EMPTY_PATH",)),
             Flags(("MOUNT_ATTR_RDONLY", "MOUNT_ATTR_NOSUID", "MOUNT_ATTR_NODEV", "MOUNT_ATTR_NOEXEC")), Flags(),
             Flags())
        if not pin.upper:
            emit("mkdirat", AT_FDCWD, pin.upper_target, 0o700, ok=("EEXIST",))
        emit("move_mount", Fd(upper), "", AT_FDCWD, pin.upper_target,
             Flags(("MOVE_MOUNT_F_EMPTY_PATH",) + (("MOVE_MOUNT_BENEATH",) if pin.upper else ())))
        if pin.upper:
            emit("umount2", pin.upper_target, Flags(("MNT_DETACH",)))  # the upper it replaces, on top
    if not pin.stacked:
        emit("mknodat", AT_FDCWD, pin.target, Flags(("S_IFREG",)), 0o600, 0, 0)
    emit("open_tree", Fd(result), "", Flags(("OPEN_TREE_CLONE", "OPEN_TREE_CLOEXEC", "AT_EMPTY_PATH")), ret="%pin")
    beneath = ("MOVE_MOUNT_BENEATH",) if pin.stacked else ()
    emit("move_mount", Fd("%pin"), "", AT_FDCWD, pin.target, Flags(("MOVE_MOUNT_F_EMPTY_PATH",) + beneath))
    if pin.stacked:
        emit("umount2", pin.target, Flags(("MNT_DETACH",)))  # the namespace it replaces, on top
    return out


def with_persist(plan: Plan, pin: Pin | None) -> Plan:
    """`plan` ending with the persist segment for `pin` (none: without one); the executor's compiled
    form of the steps before it is kept."""
    start = plan.persist_start()
    upper = UPPER if any(s.out == UPPER for s in plan.steps[:start]) else None
    new = persist_steps(plan.result, pin, upper) if pin else []
    if start < len(plan.steps) and list(plan.steps[start:]) == new:
        return plan
    blocks = tuple(b for b in plan.blocks if b[0] != PERSIST)
    if new:
        blocks += ((PERSIST, start, start + len(new), ()),)
    out = Plan(plan.recipe, plan.name, plan.strategy, plan.kernel, plan.steps[:start] + tuple(new), plan.result,
               plan.notes, blocks or ((HOST, 0, 0, ()),))
    out.compiled = plan.compiled[:start] if plan.compiled else None
    return out


def persist_inputs(plan: Plan) -> tuple[str, ...]:
    """The fds the PERSIST block uses that earlier blocks make, besides the result: kept open for it."""
    start = plan.persist_start()
    made = {s.out for s in plan.steps[start:]}
    return tuple(dict.fromkeys(a for s in plan.steps[start:] for a in s.args
                               if type(a) is Fd and a.startswith("%") and a != plan.result and a not in made))


def pin_only(pin: Pin, result: str = "%ns") -> Plan:
    """A plan of nothing but the persist segment, for a namespace made elsewhere."""
    new = persist_steps(result, pin)
    return Plan("", "", "", "", tuple(new), result, blocks=((PERSIST, 0, len(new), ()),))
