"""The planner: a pure function (Recipe, Features, strategy) -> Plan.

A plan is a list of steps and one step is one syscall. Steps name fds
symbolically ("%root", "%mnt:/proc"); each carries the recipe entry it came
from and where it runs: "host" (the nsbuild process) or "child" (a forked,
single-threaded child that may change namespaces).

Assembly order, shared by every strategy:
  1. open the layers as O_PATH fds and build every filesystem detached
     (fsopen/fsconfig/fsmount, open_tree(OPEN_TREE_CLONE) for binds), so
     nothing is attached to the host tree;
  2. enter the root: the detached root mount fd (open-tree-namespace), the new
     namespace's "/" (fsmount-namespace, after setns) or the root attached in
     a private copy of the host's namespace (unshare);
  3. write [[path]] entries through the root, then create mount points and
     attach submounts parents first. Every path inside the sandbox is resolved
     with openat2(RESOLVE_IN_ROOT), so sandbox symlinks cannot point a mount
     or a write at a host path;
  4. turn the tree into a namespace.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from builder.kernel.features import Features
from builder.recipe.model import Layer, Mount, Recipe, parent_mount
from builder.plan.steps import Fd, FdPath, Flags, LoopPath, Plan, Step  # noqa: F401 - the plan's types

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
class _Planner:
    recipe: Recipe
    features: Features
    strategy: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    where: str = "host"
    dirs: dict[str, str] = field(default_factory=dict)  # sandbox dir -> fd opened on it
    template: str | None = None  # unshare strategy: namespace file to unshare from

    def emit(self, call: str, *args: Arg, out: str | None = None, origin: str = "",
             ok: tuple[str, ...] = (), again: int = 0) -> str:
        self.steps.append(Step(call, tuple(args), out, origin, self.where, ok, again))
        return out or ""

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
                propagation: str | None = None) -> None:
        """Attributes (and propagation) of a detached mount, before it is attached anywhere."""
        clear = ("MOUNT_ATTR__ATIME",) if any(a in attrs for a in ("noatime", "strictatime", "relatime")) else ()
        flags = ("AT_EMPTY_PATH", "AT_RECURSIVE") if recursive else ("AT_EMPTY_PATH",)
        prop = Flags((PROPAGATION_FLAG[propagation],)) if propagation else Flags()
        self.emit("mount_setattr", Fd(fd), "", Flags(flags), _attr_flags(attrs), Flags(clear), prop,
                  origin=origin)

    def set_propagation(self, fd: str, propagation: str, origin: str) -> None:
        """A new filesystem has no peers and is private already: only other choices need a call."""
        if propagation != "private":
            self.setattr(fd, (), False, origin, propagation)

    def layer_fds(self) -> list[str]:
        fds = []
        for i, layer in enumerate(self.recipe.layers):
            if layer.kind == "image":
                fds.append(self.image(i, layer, out=f"%layer{i}"))
            elif layer.kind == "dir":
                fds.append(self.emit("openat", AT_FDCWD, layer.path, Flags(("O_PATH", "O_DIRECTORY", "O_CLOEXEC")),
                                     0, out=f"%layer{i}", origin=layer.origin))
            else:
                raise ValueError(f"{layer.kind} layers must be resolved to store directories first (store.py)")
        return fds

    def image(self, i: int, layer: Layer, out: str, namespace: bool = False, attrs: tuple[str, ...] = ()) -> str:
        """An image file mounted read-only, detached: straight from the file (erofs, where the kernel
        can), else through a loop device that AUTOCLEAR frees with the last mount, also on failure."""
        source: str = layer.path
        if not (layer.fstype == "erofs" and self.features.erofs_file):
            if "%loop-control" not in (s.out for s in self.steps):
                self.emit("openat", AT_FDCWD, "/dev/loop-control", Flags(("O_RDWR", "O_CLOEXEC")), 0,
                          out="%loop-control", origin=layer.origin)
            backing = self.emit("openat", AT_FDCWD, layer.path, Flags(("O_RDONLY", "O_CLOEXEC")), 0,
                                out=f"%image{i}", origin=layer.origin)
            number = self.emit("ioctl", Fd("%loop-control"), "LOOP_CTL_GET_FREE", out=f"#loop{i}",
                               origin=layer.origin)
            source = LoopPath(number)
            device = self.emit("openat", AT_FDCWD, source, Flags(("O_RDWR", "O_CLOEXEC")), 0, out=f"%loop{i}",
                               origin=layer.origin)
            self.emit("ioctl", Fd(device), "LOOP_CONFIGURE", Fd(backing),
                      Flags(("LO_FLAGS_READ_ONLY", "LO_FLAGS_AUTOCLEAR")), origin=layer.origin, again=2)
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
            scratch = self.new_fs("tmpfs", "upper", "root.upper", opts, ())
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
                flags = ("OPEN_TREE_CLONE", "OPEN_TREE_CLOEXEC") + (("AT_RECURSIVE",) if m.recursive else ())
                fd = self.emit("open_tree", AT_FDCWD, m.source, Flags(flags), out=f"%mnt:{m.target}",
                               origin=m.origin)
                # the clone (each mount of its subtree, if recursive) is still a peer of the host's mount:
                # its propagation is set before it is attached, so no mount event crosses unasked
                self.setattr(fd, m.attrs, m.recursive, m.origin, m.propagation)
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

    # -- 3. inside the root --------------------------------------------------------

    def dir_fd(self, path: str, origin: str) -> str:
        """An fd on a sandbox directory, resolved in the root; missing ones are created (mkdir -p)."""
        if path == "/":
            return "%root"
        if path not in self.dirs:
            parent = self.dir_fd(posixpath.dirname(path), origin)
            self.emit("mkdirat", Fd(parent), posixpath.basename(path), 0o755, origin=origin, ok=("EEXIST",))
            self.dirs[path] = self.emit("openat2", Fd("%root"), _rel(path),
                                        Flags(("O_PATH", "O_DIRECTORY", "O_CLOEXEC")), RESOLVE,
                                        out=f"%dir:{path}", origin=origin)
        return self.dirs[path]

    def write_paths(self) -> None:
        for p in self.recipe.paths:
            parent = self.dir_fd(posixpath.dirname(p.path), p.origin)
            name = posixpath.basename(p.path)
            if p.kind == "symlink":
                self.emit("unlinkat", Fd(parent), name, Flags(), origin=p.origin, ok=("ENOENT",))
                self.emit("symlinkat", p.link, Fd(parent), name, origin=p.origin)
                self.emit("fchownat", Fd(parent), name, p.uid, p.gid, Flags(("AT_SYMLINK_NOFOLLOW",)),
                          origin=p.origin)
                continue
            if p.kind == "dir":
                self.emit("mkdirat", Fd(parent), name, p.mode, origin=p.origin, ok=("EEXIST",))
                fd = self.emit("openat2", Fd("%root"), _rel(p.path),
                               Flags(("O_RDONLY", "O_DIRECTORY", "O_NOFOLLOW", "O_CLOEXEC")), RESOLVE,
                               out=f"%dir:{p.path}", origin=p.origin)
                self.dirs[p.path] = fd
            else:
                fd = self.emit("openat", Fd(parent), name,
                               Flags(("O_WRONLY", "O_CREAT", "O_TRUNC", "O_NOFOLLOW", "O_CLOEXEC")), p.mode,
                               out=f"%file:{p.path}", origin=p.origin)
                self.emit("write", Fd(fd), p.content, origin=p.origin)
            self.emit("fchmod", Fd(fd), p.mode, origin=p.origin)
            self.emit("fchown", Fd(fd), p.uid, p.gid, origin=p.origin)

    def attach(self, units: list[_Unit]) -> None:
        mounts = [u.mount for u in units if u.target == u.mount.target]
        for u in units:
            origin = u.mount.origin
            holder = parent_mount(mounts, u.target)
            creatable = u.makes_point and (self.recipe.root.writable if holder is None
                                           else holder.type in ("tmpfs", "dev"))
            if creatable:
                self.make_point(u.target, u.file, origin)
            at = self.emit("openat2", Fd("%root"), _rel(u.target), Flags(("O_PATH", "O_CLOEXEC")), RESOLVE,
                           out=f"%at:{u.target}", origin=origin)
            self.emit("move_mount", Fd(u.fd), "", Fd(at), "",
                      Flags(("MOVE_MOUNT_F_EMPTY_PATH", "MOVE_MOUNT_T_EMPTY_PATH")), origin=origin)

    def make_point(self, target: str, file: bool, origin: str) -> None:
        parent = self.dir_fd(posixpath.dirname(target), origin)
        name = posixpath.basename(target)
        if file:
            self.emit("mknodat", Fd(parent), name, Flags(("S_IFREG",)), 0o644, 0, 0, origin=origin, ok=("EEXIST",))
        else:
            self.emit("mkdirat", Fd(parent), name, 0o755, origin=origin, ok=("EEXIST",))

    # -- strategies ----------------------------------------------------------------

    def build(self) -> Plan:
        strategy = self.strategy
        layers = self.recipe.layers
        bind_root = self.recipe.root.upper == "none" and len(layers) == 1 and layers[0].kind == "dir"
        if strategy == "fsmount-namespace" and bind_root:
            # FSMOUNT_NAMESPACE needs a new filesystem; a bind root uses open_tree (7.0+, always there on 7.1+)
            strategy = "open-tree-namespace"
            self.notes.append("the root is a bind of one layer, so it is cloned with OPEN_TREE_NAMESPACE")
        if strategy == "fsmount-namespace":
            self.root_fs(namespace=True)
            units = self.submounts()
            self.emit("fork", Flags(), origin="root")
            self.where = "child"
            self.emit("setns", Fd("%ns"), Flags(("CLONE_NEWNS",)), origin="root")
            self.emit("openat", AT_FDCWD, "/", Flags(("O_PATH", "O_DIRECTORY", "O_CLOEXEC")), 0, out="%root",
                      origin="root")
            self.write_paths()
            self.attach(units)
        elif strategy == "open-tree-namespace":
            self.root_fs(namespace=False)
            units = self.submounts()
            self.write_paths()
            self.attach(units)
            self.emit("open_tree", Fd("%root"), "",
                      Flags(("OPEN_TREE_NAMESPACE", "OPEN_TREE_CLOEXEC", "AT_EMPTY_PATH", "AT_RECURSIVE")),
                      out="%ns", origin="root")
        else:
            self.root_fs(namespace=False)
            units = self.submounts()
            self.unshare_into_root()
            self.write_paths()
            self.attach(units)
            self.pivot()
        return Plan(recipe=self.recipe.file, name=self.recipe.name, strategy=strategy,
                    kernel=self.features.release, steps=tuple(self.steps), notes=tuple(self.notes))


    def unshare_into_root(self) -> None:
        """unshare strategy: a child with a private copy of a namespace, the new root stacked on "/".

        With a template (a persisted namespace holding only an empty tmpfs, see state.py) the
        child copies that instead of the host's whole mount table: builds stop growing with the
        number of host mounts.
        """
        template = self.template
        if template:
            self.emit("openat", AT_FDCWD, template, Flags(("O_RDONLY", "O_CLOEXEC")), 0, out="%template",
                      origin="root")
        self.emit("fork", Flags(("%ns",)), origin="root")
        self.where = "child"
        if template:
            # the template has no /proc: keep a handle on this process's /proc entry
            self.emit("openat", AT_FDCWD, "/proc/self", Flags(("O_PATH", "O_DIRECTORY", "O_CLOEXEC")), 0,
                      out="%proc", origin="root")
            self.emit("setns", Fd("%template"), Flags(("CLONE_NEWNS",)), origin="root")
        self.emit("unshare", Flags(("CLONE_NEWNS",)), origin="root")
        self.emit("openat", Fd("%proc") if template else AT_FDCWD, "ns/mnt" if template else "/proc/self/ns/mnt",
                  Flags(("O_RDONLY", "O_CLOEXEC")), 0, out="%ns", origin="root")
        # nothing done from here on may propagate back to the host
        self.emit("mount_setattr", AT_FDCWD, "/", Flags(("AT_RECURSIVE",)), Flags(), Flags(),
                  Flags(("MS_PRIVATE",)), origin="root")
        # stack the new root on "/" of the private copy, so pivot_root can swap them
        self.emit("move_mount", Fd("%root"), "", AT_FDCWD, "/", Flags(("MOVE_MOUNT_F_EMPTY_PATH",)),
                  origin="root")

    def pivot(self) -> None:
        self.emit("fchdir", Fd("%root"), origin="root")
        self.emit("pivot_root", ".", ".", origin="root")
        self.emit("umount2", ".", Flags(("MNT_DETACH",)), origin="root")
        self.emit("chdir", "/", origin="root")


def workdir_for(upper: str) -> str:
    """overlayfs's work dir for a kept upper: a hidden sibling, so it is on the same mount."""
    return posixpath.join(posixpath.dirname(upper), "." + posixpath.basename(upper) + ".work")


def make_plan(recipe: Recipe, features: Features, strategy: str, template: str | None = None) -> Plan:
    """Plan the syscalls that build `recipe` with `strategy` on a kernel with `features`.

    `template` (unshare strategy only) is a persisted namespace file to unshare from.
    """
    return _Planner(recipe, features, strategy, template=template if strategy == "unshare" else None).build()


def make_template_plan(features: Features) -> Plan:
    """The template namespace: nothing but an empty, read-only tmpfs as "/" (see unshare_into_root)."""
    p = _Planner(None, features, "unshare")  # type: ignore[arg-type]
    p.new_fs("tmpfs", "/", "template", (("mode", "0755"), ("size", "4k")), ("ro", "nosuid", "nodev", "noexec"))
    p.unshare_into_root()
    p.pivot()
    return Plan(recipe="", name=".template", strategy="unshare", kernel=features.release, steps=tuple(p.steps))


def make_image_plan(recipe: Recipe, index: int, features: Features) -> Plan:
    """Only recipe.layers[index], an image, mounted detached and read-only (for the pre-flight check)."""
    p = _Planner(recipe, features, "unshare")
    out = p.image(index, recipe.layers[index], out=f"%layer{index}")
    return Plan(recipe=recipe.file, name=recipe.name, strategy="", kernel=features.release, steps=tuple(p.steps),
                result=out)
