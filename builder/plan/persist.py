"""The plan's last segment: pin the namespace it made on a file in the state directory.

Which steps depend on the state directory as it is when the build persists (under its lock): a
new sandbox gets a fresh mount point; a replaced one gets the new namespace slid beneath the old
one, which is then detached, so the path always holds a namespace; the first build in a state
directory makes it a private, unbindable mount of its own first (a mount-namespace file cannot be
bound on a shared mount, and recursive binds of a parent directory must not carry the nsfs mounts
into sandboxes). The build re-derives the segment under the lock (with_persist), so a cached plan
or one printed a while ago persists into the state directory as it is then.

No planner imports here: a warm build (a cached plan) derives its segment on the fast path.
"""
from __future__ import annotations

import posixpath

from builder.plan.steps import HOST, PERSIST, Fd, Flags, Plan, Step

AT_FDCWD = Fd("AT_FDCWD")


class Pin:
    """Where and how a plan's result is persisted."""

    __slots__ = ("target", "stacked", "setup")

    def __init__(self, target: str, stacked: bool = False, setup: str = "") -> None:
        self.target = target    # NAME.mnt in the state directory
        self.stacked = stacked  # a namespace is pinned there already: replace it
        self.setup = setup      # what the state directory still needs: "" (nothing), "bind" (a mount
        #                         of its own, then unbindable) or "unbindable" (it is a mount already)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pin) and (self.target, self.stacked, self.setup) == (other.target, other.stacked,
                                                                                      other.setup)

    def __repr__(self) -> str:
        return f"Pin({self.target!r}, stacked={self.stacked}, setup={self.setup!r})"


def steps(result: str, pin: Pin) -> list[Step]:
    """The persist steps that pin `result` (a namespace fd) as `pin` says."""
    out: list[Step] = []

    def emit(call: str, *args: object, ret: str | None = None) -> None:
        out.append(Step(call, args, ret, "persist"))  # type: ignore[arg-type]

    state = posixpath.dirname(pin.target)
    if pin.setup == "bind":  # bound onto itself, so that its propagation can be its own
        emit("open_tree", AT_FDCWD, state, Flags(("OPEN_TREE_CLONE", "OPEN_TREE_CLOEXEC")), ret="%state")
        emit("move_mount", Fd("%state"), "", AT_FDCWD, state, Flags(("MOVE_MOUNT_F_EMPTY_PATH",)))
    if pin.setup:
        # unbindable (which is also private): a recursive bind of a parent directory, such as $CWD
        # at /work, then leaves the nsfs mounts out instead of failing with ELOOP
        emit("mount_setattr", AT_FDCWD, state, Flags(), Flags(), Flags(), Flags(("MS_UNBINDABLE",)))
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
    new = steps(plan.result, pin) if pin else []
    if start < len(plan.steps) and list(plan.steps[start:]) == new:
        return plan
    blocks = tuple(b for b in plan.blocks if b[0] != PERSIST)
    if new:
        blocks += ((PERSIST, start, start + len(new), ()),)
    out = Plan(plan.recipe, plan.name, plan.strategy, plan.kernel, plan.steps[:start] + tuple(new), plan.result,
               plan.notes, blocks or ((HOST, 0, 0, ()),))
    out.compiled = plan.compiled[:start] if plan.compiled else None
    return out


def pin_only(pin: Pin, result: str = "%ns") -> Plan:
    """A plan of nothing but the persist segment, for a namespace made elsewhere."""
    new = steps(result, pin)
    return Plan("", "", "", "", tuple(new), result, blocks=((PERSIST, 0, len(new), ()),))
