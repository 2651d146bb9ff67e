"""The planner's first part: a plan being written (its steps and blocks), and the filesystems it
builds detached (layers, the root, submounts, /dev), so that nothing is attached to the host
tree. planner.py goes on from here: inside the root, and the strategies."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from builder.kernel.features import Features
from builder.plan.calls import CALLS
from builder.plan.steps import (HOST, NAMESPACE, RETRY, UPPER, Fd, FdPath, Flags, LoopPath, Pin, Plan, ProcPath, Step,
                                Value, with_persist)
from builder.layers.resolved import Resolved, ResolvedLayer
from builder.recipe.model import Mount

TYPE_CHECKING = False
if TYPE_CHECKING:
    from builder.plan.steps import Arg

AT_FDCWD = Fd("AT_FDCWD")
RESOLVE = Flags(("RESOLVE_IN_ROOT", "RESOLVE_NO_MAGICLINKS"))

ATTR_FLAG = {
    "ro": "MOUNT_ATTR_RDONLY", "nosuid": "MOUNT_ATTR_NOSUID", "nodev": "MOUNT_ATTR_NODEV",
    "noexec": "MOUNT_ATTR_NOEXEC", "noatime": "MOUNT_ATTR_NOATIME",
    "strictatime": "MOUNT_ATTR_STRICTATIME", "relatime": "MOUNT_ATTR_RELATIME",
    "nodiratime": "MOUNT_ATTR_NODIRATIME", "nosymfollow": "MOUNT_ATTR_NOSYMFOLLOW",
}
PROPAGATION_FLAG = {"private": "MS_PRIVATE", "slave": "MS_SLAVE", "shared": "MS_SHARED",
                    "unbindable": "MS_UNBINDABLE"}

# bwrap's --dev: character devices (major, minor) and symlinks in a fresh tmpfs.
DEV_NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
             ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))


@dataclass
class _Unit:
    """One mount to attach: a recipe mount, or a piece of a dev mount (/dev/pts, /dev/shm)."""
    mount: Mount
    target: str
    fd: str
    file: bool = False           # the mount point is a file (bind of a file)
    makes_point: bool = True     # create the mount point if missing


def _attr_flags(attrs: tuple[str, ...]) -> Flags:
    return Flags(ATTR_FLAG[a] for a in attrs if a != "relatime")


def _rel(path: str) -> str:
    return path.lstrip("/") or "."


@dataclass
class Detached:
    """A plan being written: its steps and blocks, and the filesystems it builds detached."""

    recipe: Resolved
    features: Features
    strategy: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    where: str = "host"
    dirs: dict[str, str] = field(default_factory=dict)  # sandbox dir -> fd opened on it
    usernses: dict[tuple, str] = field(default_factory=dict)  # id mapping -> fd of a user namespace with it
    template: str | None = None  # unshare strategy: namespace file to unshare from
    pin: Pin | None = None  # where the result is persisted (steps.Pin): the plan's last segment
    blocks: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=lambda: [(HOST, 0, ())])

    def emit(self, call: str, *args: Arg, out: str | None = None, origin: str = "",
             ok: tuple[str, ...] = ()) -> str:
        CALLS[call].check(args)
        self.steps.append(Step(call, tuple(args), out, origin, self.where, ok))
        return out or ""

    def begin(self, kind: str, detail: tuple[str, ...] = ()) -> None:
        """The steps from here on are a block of `kind` (steps.py), until the next begin()."""
        self.blocks.append((kind, len(self.steps), detail))
        self.where = "child" if kind == NAMESPACE else "host"

    def plan(self, name: str, recipe: str, strategy: str, result: str = "%ns", pin: Pin | None = None) -> Plan:
        marks = self.blocks + [("", len(self.steps), ())]
        blocks = tuple((kind, start, end, detail) for (kind, start, detail), (_, end, _) in zip(marks, marks[1:])
                       if end > start)
        plan = Plan(recipe=recipe, name=name, strategy=strategy, kernel=self.features.release,
                    steps=tuple(self.steps), result=result, notes=tuple(self.notes), blocks=blocks)
        return with_persist(plan, pin) if pin else plan

    # -- 1. detached filesystems -------------------------------------------------

    def new_fs(self, fstype: str, target: str, origin: str, options: tuple[tuple[str, str | bool], ...],
               attrs: tuple[str, ...], source: str | None = None, namespace: bool = False,
               out: str | None = None) -> str:
        fs = self.emit("fsopen", fstype, Flags(("FSOPEN_CLOEXEC",)), out=f"%fs:{target}", origin=origin)
        if source is not None:
            self.emit("fsconfig", Fd(fs), Flags(("FSCONFIG_SET_STRING",)), "source", source, 0, origin=origin)
        for key, value in options:
            if value is True:
                self.emit("fsconfig", Fd(fs), Flags(("FSCONFIG_SET_FLAG",)), key, None, 0, origin=origin)
            else:
                self.emit("fsconfig", Fd(fs), Flags(("FSCONFIG_SET_STRING",)), key, value, 0, origin=origin)
        self.emit("fsconfig", Fd(fs), Flags(("FSCONFIG_CMD_CREATE",)), None, None, 0, origin=origin)
        mflags = ("FSMOUNT_CLOEXEC", "FSMOUNT_NAMESPACE") if namespace else ("FSMOUNT_CLOEXEC",)
        out = "%ns" if namespace else out or ("%root" if target == "/" else f"%mnt:{target}")
        return self.emit("fsmount", Fd(fs), Flags(mflags), _attr_flags(attrs), out=out, origin=origin)

    def setattr(self, fd: str, attrs: tuple[str, ...], recursive: bool, origin: str,
                propagation: str | None = None, userns: str | None = None) -> None:
        """Attributes (and propagation) of a detached mount, before it is attached anywhere; with
        `userns`, an fd of a user namespace, the mount is idmapped by its mapping too."""
        clear = ("MOUNT_ATTR__ATIME",) if any(a in attrs for a in ("noatime", "strictatime", "relatime")) else ()
        flags = ("AT_EMPTY_PATH", "AT_RECURSIVE") if recursive else ("AT_EMPTY_PATH",)
        prop = Flags((PROPAGATION_FLAG[propagation],)) if propagation else Flags()
        aset = _attr_flags(attrs) + (("MOUNT_ATTR_IDMAP",) if userns else ())
        idmapped = (Fd(userns),) if userns else ()
        self.emit("mount_setattr", Fd(fd), "", Flags(flags), Flags(aset), Flags(clear), prop, *idmapped,
                  origin=origin)

    def userns(self, m: Mount) -> str:
        """An fd of a user namespace that carries the bind's id mapping (MOUNT_ATTR_IDMAP takes one):
        a child born in it, whose uid_map and gid_map are written from here, its ns/user opened,
        then the child killed and reaped (kernel/userns.py). The namespace lives on in the fd."""
        from builder.recipe import idmap

        uids, gids = idmap.maps_of(m, self.recipe)
        if (uids, gids) in self.usernses:  # binds with the same mapping share one namespace (~3 ms each)
            return self.usernses[uids, gids]
        n = len(self.usernses)
        pid = self.emit("clone", Flags(("CLONE_NEWUSER",)), out=f"#userns{n}", origin=m.origin)
        for name, ids in (("uid_map", uids), ("gid_map", gids)):
            fd = self.emit("openat", AT_FDCWD, ProcPath(f"{pid}/{name}"), Flags(("O_WRONLY", "O_CLOEXEC")), 0,
                           out=f"%{name}{n}", origin=m.origin)
            self.emit("write", Fd(fd), idmap.text(ids), origin=m.origin)
        ns = self.emit("openat", AT_FDCWD, ProcPath(f"{pid}/ns/user"), Flags(("O_RDONLY", "O_CLOEXEC")), 0,
                       out=f"%userns{n}", origin=m.origin)
        self.emit("kill", Value(pid), Flags(("SIGKILL",)), origin=m.origin)
        self.emit("waitpid", Value(pid), 0, origin=m.origin)
        self.usernses[uids, gids] = ns
        return ns

    def set_propagation(self, fd: str, propagation: str, origin: str) -> None:
        """A new filesystem has no peers and is private already: only other choices need a call."""
        if propagation != "private":
            self.setattr(fd, (), False, origin, propagation)

    def layer_fds(self) -> list[str]:
        fds = []
        for i, layer in enumerate(self.recipe.layers):
            if layer.kind == "image":
                fds.append(self.image(i, layer, out=f"%layer{i}"))
            else:  # a directory
                fds.append(self.emit("openat", AT_FDCWD, layer.path, Flags(("O_PATH", "O_DIRECTORY", "O_CLOEXEC")),
                                     0, out=f"%layer{i}", origin=layer.origin))
        return fds

    def image(self, i: int, layer: ResolvedLayer, out: str, namespace: bool = False, attrs: tuple[str, ...] = ()) -> str:
        """An image file mounted read-only, detached: straight from the file (erofs, where the kernel
        can), else through a loop device that AUTOCLEAR frees with the last mount, also on failure."""
        source: str = layer.path
        if not (layer.fstype == "erofs" and self.features.erofs_file):
            if "%loop-control" not in (s.out for s in self.steps):
                self.emit("openat", AT_FDCWD, "/dev/loop-control", Flags(("O_RDWR", "O_CLOEXEC")), 0,
                          out="%loop-control", origin=layer.origin)
            backing = self.emit("openat", AT_FDCWD, layer.path, Flags(("O_RDONLY", "O_CLOEXEC")), 0,
                                out=f"%image{i}", origin=layer.origin)
            self.begin(RETRY, ("EBUSY",))  # another process may take the free device first: again
            number = self.emit("ioctl", Fd("%loop-control"), "LOOP_CTL_GET_FREE", out=f"#loop{i}",
                               origin=layer.origin)
            source = LoopPath(number)
            device = self.emit("openat", AT_FDCWD, source, Flags(("O_RDWR", "O_CLOEXEC")), 0, out=f"%loop{i}",
                               origin=layer.origin)
            # the path is what losetup shows as the backing file
            self.emit("ioctl", Fd(device), "LOOP_CONFIGURE", Fd(backing),
                      Flags(("LO_FLAGS_READ_ONLY", "LO_FLAGS_AUTOCLEAR")), layer.path, origin=layer.origin)
            self.begin(HOST)
        return self.new_fs(layer.fstype or "", f"layer{i}", layer.origin, (("ro", True),),
                           attrs or ("ro", "nosuid", "nodev"), source=source, namespace=namespace, out=out)

    def root_fs(self, namespace: bool) -> str:
        r = self.recipe.root
        if r.upper == "none" and len(self.recipe.layers) == 1 and self.recipe.layers[0].kind == "image":
            # the image's own filesystem is the root: with FSMOUNT_NAMESPACE, one fsmount makes the namespace
            attrs = tuple(sorted(set(r.attrs) | {"ro"}, key=list(ATTR_FLAG).index))
            return self.image(0, self.recipe.layers[0], "%root", namespace, attrs)
        layers = self.layer_fds()
        if not layers:  # no layers: the root is a plain tmpfs, like bwrap's
            opts = (("mode", "0755"),) + ((("size", r.size),) if r.size else ())
            return self.new_fs("tmpfs", "/", "root", opts, r.attrs, namespace=namespace)
        if r.upper == "none" and len(layers) == 1:
            self.emit("open_tree", AT_FDCWD, self.recipe.layers[0].path,
                      Flags(("OPEN_TREE_CLONE", "OPEN_TREE_CLOEXEC", "AT_RECURSIVE")), out="%root",
                      origin="root")
            # a clone of a host directory joins the host mount's peer group: private, or mounts would cross
            self.setattr("%root", tuple(sorted(set(r.attrs) | {"ro"}, key=list(ATTR_FLAG).index)), True, "root",
                         "private")
            return "%root"
        upper = work = None
        if r.upper == "tmpfs":
            opts = (("mode", "0755"),) + ((("size", r.size),) if r.size else ())
            scratch = self.new_fs("tmpfs", "upper", "root.upper", opts, (), out=UPPER)  # the persist segment pins it
            for d in ("upper", "work"):
                self.emit("mkdirat", Fd(scratch), d, 0o755, origin="root.upper")
            upper, work = (self.emit("openat", Fd(scratch), d, Flags(("O_PATH", "O_DIRECTORY", "O_CLOEXEC")), 0,
                                     out=f"%{d}", origin="root.upper") for d in ("upper", "work"))
        elif r.upper != "none":
            workdir = workdir_for(r.upper)
            self.emit("mkdirat", AT_FDCWD, r.upper, 0o755, origin="root.upper", ok=("EEXIST",))
            self.emit("mkdirat", AT_FDCWD, workdir, 0o700, origin="root.upper", ok=("EEXIST",))
            upper, work = (self.emit("openat", AT_FDCWD, p, Flags(("O_PATH", "O_DIRECTORY", "O_CLOEXEC")), 0,
                                     out=f"%{d}", origin="root.upper")
                           for d, p in (("upper", r.upper), ("work", workdir)))
        fs = self.emit("fsopen", "overlay", Flags(("FSOPEN_CLOEXEC",)), out="%fs:/", origin="root")
        by_fd = self.features.overlay_fd_layers
        cmd = Flags(("FSCONFIG_SET_FD",)) if by_fd else Flags(("FSCONFIG_SET_STRING",))

        def give(key: str, fd: str, origin: str) -> None:
            if by_fd:
                self.emit("fsconfig", Fd(fs), cmd, key, None, Fd(fd), origin=origin)
            else:
                self.emit("fsconfig", Fd(fs), cmd, key, FdPath(fd), 0, origin=origin)

        for i in reversed(range(len(layers))):  # overlayfs lists the top layer first
            give("lowerdir+", layers[i], self.recipe.layers[i].origin)
        if upper and work:
            give("upperdir", upper, "root.upper")
            give("workdir", work, "root.upper")
        if self.features.userns:  # in a user namespace overlayfs keeps whiteouts etc. in user.overlay.*
            self.emit("fsconfig", Fd(fs), Flags(("FSCONFIG_SET_FLAG",)), "userxattr", None, 0, origin="root")
        if r.upper not in ("tmpfs", "none"):
            # a kept upper may meet changed lowers: without these, overlayfs says ESTALE
            for key in ("index", "metacopy"):
                self.emit("fsconfig", Fd(fs), Flags(("FSCONFIG_SET_STRING",)), key, "off", 0, origin="root.upper")
        self.emit("fsconfig", Fd(fs), Flags(("FSCONFIG_CMD_CREATE",)), None, None, 0, origin="root")
        mflags = ("FSMOUNT_CLOEXEC", "FSMOUNT_NAMESPACE") if namespace else ("FSMOUNT_CLOEXEC",)
        return self.emit("fsmount", Fd(fs), Flags(mflags), _attr_flags(r.attrs),
                         out="%ns" if namespace else "%root", origin="root")

    def submounts(self) -> list[_Unit]:
        units: list[_Unit] = []
        for m in self.recipe.mounts:
            if m.type == "bind":
                userns = self.userns(m) if m.idmap else None
                flags = ("OPEN_TREE_CLONE", "OPEN_TREE_CLOEXEC") + (("AT_RECURSIVE",) if m.recursive else ())
                fd = self.emit("open_tree", AT_FDCWD, m.source, Flags(flags), out=f"%mnt:{m.target}",
                               origin=m.origin)
                # the clone (each mount of its subtree, if recursive) is still a peer of the host's mount:
                # its propagation is set before it is attached, so no mount event crosses unasked;
                # an idmap too can only be set on a mount not yet attached
                self.setattr(fd, m.attrs, m.recursive, m.origin, m.propagation, userns)
                units.append(_Unit(m, m.target, fd, file=m.source_kind == "file"))
            elif m.type == "dev":
                units.extend(self.dev(m))
            else:
                fd = self.new_fs(m.type, m.target, m.origin, m.options, m.attrs, source=m.source)
                self.set_propagation(fd, m.propagation, m.origin)
                units.append(_Unit(m, m.target, fd))
        return units

    def dev(self, m: Mount) -> list[_Unit]:
        dev = self.new_fs("tmpfs", m.target, m.origin, (("mode", "0755"),) + m.options, m.attrs)
        self.set_propagation(dev, m.propagation, m.origin)
        for name, major, minor in DEV_NODES:
            if self.features.userns:
                self.host_node(dev, name, m.origin)
            else:
                self.emit("mknodat", Fd(dev), name, Flags(("S_IFCHR",)), 0o666, major, minor, origin=m.origin)
        for name, link in DEV_LINKS:
            self.emit("symlinkat", link, Fd(dev), name, origin=m.origin)
        self.emit("mkdirat", Fd(dev), "pts", 0o755, origin=m.origin)
        self.emit("mkdirat", Fd(dev), "shm", 0o1777, origin=m.origin)
        # gid 5 (tty) exists in a user namespace only with a range of subordinate gids
        tty = (("gid", "5"),) if self.features.userns != "single" else ()
        pts = self.new_fs("devpts", m.target + "/pts", m.origin,
                          (("ptmxmode", "0666"), ("mode", "0620")) + tty, ("nosuid", "noexec"))
        shm = self.new_fs("tmpfs", m.target + "/shm", m.origin, (("mode", "1777"),), ("nosuid", "nodev"))
        return [_Unit(m, m.target, dev),
                _Unit(m, m.target + "/pts", pts, makes_point=False),
                _Unit(m, m.target + "/shm", shm, makes_point=False)]

    def host_node(self, dev: str, name: str, origin: str) -> None:
        """Rootless: a user namespace may not mknod devices, so the host's node is bound onto an empty
        file, as bwrap does (the bind is private, like every bind)."""
        self.emit("mknodat", Fd(dev), name, Flags(("S_IFREG",)), 0o666, 0, 0, origin=origin)
        node = self.emit("open_tree", AT_FDCWD, f"/dev/{name}", Flags(("OPEN_TREE_CLONE", "OPEN_TREE_CLOEXEC")),
                         out=f"%node:{name}", origin=origin)
        self.setattr(node, (), False, origin, "private")
        self.emit("move_mount", Fd(node), "", Fd(dev), name, Flags(("MOVE_MOUNT_F_EMPTY_PATH",)), origin=origin)


def workdir_for(upper: str) -> str:
    """overlayfs's work dir for a kept upper: a hidden sibling, so it is on the same mount."""
    return posixpath.join(posixpath.dirname(upper), "." + posixpath.basename(upper) + ".work")
