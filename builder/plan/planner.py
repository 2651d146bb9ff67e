"""The planner: a pure function (Resolved recipe, Features, strategy) -> Plan.

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
from dataclasses import dataclass

from builder.kernel.features import Features
from builder.layers.resolved import Resolved
from builder.plan.detached import AT_FDCWD, RESOLVE, Detached, _rel, _Unit
from builder.plan.steps import NAMESPACE, Fd, Flags, Pin, Plan
from builder.recipe.model import parent_mount


@dataclass
class _Planner(Detached):
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
            self.begin(NAMESPACE)
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
        return self.plan(self.recipe.name, self.recipe.file, strategy, pin=self.pin)


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
        self.begin(NAMESPACE, ("%ns",))
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


def make_plan(recipe: Resolved, features: Features, strategy: str, template: str | None = None,
              pin: Pin | None = None) -> Plan:
    """Plan the syscalls that build `recipe` with `strategy` on a kernel with `features`.

    `template` (unshare strategy only) is a persisted namespace file to unshare from; `pin`, where
    the result is persisted: the plan's last segment (without it, the plan ends with the namespace).
    """
    return _Planner(recipe, features, strategy, template=template if strategy == "unshare" else None,
                    pin=pin).build()


def make_template_plan(features: Features, pin: Pin | None = None) -> Plan:
    """The template namespace: nothing but an empty, read-only tmpfs as "/" (see unshare_into_root)."""
    p = _Planner(None, features, "unshare")  # type: ignore[arg-type]
    p.new_fs("tmpfs", "/", "template", (("mode", "0755"), ("size", "4k")), ("ro", "nosuid", "nodev", "noexec"))
    p.unshare_into_root()
    p.pivot()
    return p.plan(".template", "", "unshare", pin=pin)


def make_image_plan(recipe: Resolved, index: int, features: Features) -> Plan:
    """Only recipe.layers[index], an image, mounted detached and read-only (for the pre-flight check)."""
    p = _Planner(recipe, features, "unshare")
    out = p.image(index, recipe.layers[index], out=f"%layer{index}")
    return p.plan(recipe.name, recipe.file, "", result=out)
