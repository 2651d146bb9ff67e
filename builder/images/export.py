"""`nsbuild export NAME|RECIPE DEST`: a sandbox's tree as an OCI image, in a layout or pushed to a registry.

Layers map one to one:
- a lower layer from a layout or a registry keeps its blob, digest and diff_id (copied, or not sent at all
  where the registry has it);
- directory, archive, binaries and image layers (erofs, squashfs, ext4: the mounted image's tree), the
  upper (a directory upper, or a sandbox's tmpfs upper pinned on NAME.upper) and else the recipe's
  [[path]] entries become new layers: reproducible tarballs (entries sorted, times SOURCE_DATE_EPOCH or
  0, numeric owners, no user or group names, gzip without a time or name) with overlayfs whiteouts in
  OCI form (a char device 0:0 is `.wh.NAME`, trusted.overlay.opaque=y is `.wh..wh..opq`);
- the config carries [run]: Env, Cmd (the command), WorkingDir and User.
The same inputs give the same manifest digest. Mounts ([[mount]]) are not part of the image, as volumes
are not part of a container image.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import sys
from builder.layers.tarfiles import tarfile
import tempfile
from typing import Any, BinaryIO

from builder.layers import oci
from builder.layers.unpack import XATTRS  # what a layer may carry in, it carries out
from builder.errors import NsbuildError, UsageError
from builder.check.tree import opaque
from builder.images.dest import Blob, descriptor, parse_dest, write_layout
from builder.recipe.model import Layer, PathEntry, Recipe

TYPE_CHECKING = False
if TYPE_CHECKING:
    from builder.layers.resolve import Resolver
    from builder.layers.resolved import Resolved
    from builder.sandbox.session import Session

LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


# --- the source tree

def source_of(target: str, state_dir: str | None) -> tuple[Recipe, str | None]:
    """The recipe of TARGET (a recipe file, or a persisted sandbox's) and its upper, if any: a directory
    upper, or a sandbox's tmpfs upper where it is pinned on NAME.upper."""
    from builder.recipe.load import load
    from builder.recipe.model import NAME_RE

    if target.endswith(".toml") or "/" in target:
        r = load(target)
        return r, r.root.upper if r.root.upper not in ("tmpfs", "none") else None
    from builder.sandbox.state import StateDir, state_dir as resolve

    sd = StateDir(resolve(state_dir))
    if not NAME_RE.match(target):
        raise UsageError(f"'{target}' is neither a sandbox name nor a recipe file")
    meta = sd.read(target)
    if meta is None:
        raise UsageError(f"no sandbox named '{target}' in {sd.path}", "give its recipe file, or list them with `nsbuild ls`")
    r = load(str(meta["recipe"]))
    if r.sha256 != meta.get("recipe_sha256"):  # the image must be the tree that was built, not a newer recipe's
        raise UsageError(f"the recipe of '{target}' ({r.file}) changed since the sandbox was built",
                         f"rebuild it (`nsbuild build --replace {r.file}`), or export the recipe file itself")
    upper = str(meta.get("upper", "tmpfs"))
    if upper == "tmpfs":
        from builder.sandbox.mounts import is_mount_point

        if is_mount_point(sd.upper_path(target)):  # pinned beside the namespace (steps.persist_steps)
            return r, os.path.join(sd.upper_path(target), "upper")
        print(f"nsbuild: note: the tmpfs upper of '{target}' is not pinned (a sandbox of `build --count`, or "
              "one whose replacement failed): the export has the tree as built (layers and [[path]] entries), "
              f"not changes made in it since; `nsbuild build --replace` pins it", file=sys.stderr)
    return r, upper if upper not in ("tmpfs", "none") else None


def layers_of(recipe: Recipe, upper: str | None, work: str, epoch: int,
              session: Session | None = None) -> tuple[list[Blob], Any]:
    """The image's layers, bottom to top: original blobs for OCI lowers, new tarballs for the rest."""
    from builder.layers import kinds
    from builder.sandbox.session import Session

    session = session or Session()
    resolved = session.resolve(recipe)
    out: list[Blob] = []
    for layer in recipe.layers:
        image = kinds.of(layer).image(session.layers, layer)
        if image is not None:
            out += _oci_blobs(session.layers, layer, image)
        elif layer.kind == "image":
            out.append(_image_layer(session, resolved, layer, work, epoch))
        else:
            path = next(x.path for x in resolved.layers if x.origin == layer.origin)
            out.append(tar_layer(path, work, epoch))
    if upper and os.path.isdir(upper):  # a build wrote the [[path]] entries into it, then the sandbox changed it
        out.append(tar_layer(upper, work, epoch))
    elif recipe.paths:  # what a build writes into a fresh upper
        out.append(paths_layer(recipe.paths, work, epoch))
    return out, resolved.run  # the run defaults as the build has them (image config included)


def _image_layer(session: Session, resolved: Resolved, layer: Layer, work: str, epoch: int) -> Blob:
    """An erofs, squashfs or ext4 layer as a tarball of its tree: the image mounted read-only and
    detached by the planner's image steps (as the pre-flight check mounts it), read through the mount's
    fd, and unmounted when the fd closes (a loop device, AUTOCLEAR, with it)."""
    from builder.plan import executor
    from builder.plan.planner import make_image_plan

    features = session.features(resolved)
    if features.userns:
        from builder.sandbox.rootless import refuse_unbuildable

        refuse_unbuildable(resolved)
    index = next(i for i, x in enumerate(resolved.layers) if x.origin == layer.origin)
    fd = executor.execute(make_image_plan(resolved, index, features))
    try:
        return tar_layer(f"/proc/self/fd/{fd}", work, epoch)
    finally:
        os.close(fd)


def _oci_blobs(res: Resolver, layer: Layer, image: oci.Image) -> list[Blob]:
    from builder.layers.kinds import registry
    diff_ids = (image.config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(image.layers):
        raise NsbuildError(f"{layer.origin}: the image config lists {len(diff_ids)} diff_ids for "
                           f"{len(image.layers)} layers", "the image is malformed: it cannot keep its layers")
    source = registry.client(res, layer)
    return [Blob(b.media_type, b.digest, b.size, b.path, str(d), source)
            for b, d in zip(image.layers, diff_ids)]


class _Hashing:
    """A write-only file that hashes and counts what passes through to `f`."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _new_layer(work: str, fill: Any) -> Blob:
    """A gzip layer written by fill(tarfile): its digest, size and diff_id computed on the way.

    Compressed by zlib-ng in blocks on two threads (pigz's way; 3.5x faster than zlib here), with a
    header of mtime 0 and no name. Two threads on every machine: one and two write the same bytes, more
    write others, and an image's digest must not depend on the machine that exported it."""
    from zlib_ng import gzip_ng_threaded

    fd, path = tempfile.mkstemp(dir=work, suffix=".layer")
    with os.fdopen(fd, "wb") as raw:
        compressed = _Hashing(raw)
        gz = gzip_ng_threaded.open(compressed, "wb", compresslevel=6, threads=2)
        plain = _Hashing(gz)  # type: ignore[arg-type]
        try:
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore
                fill(tar)
        finally:  # now, also after an error: closed at exit instead, it would wait for its threads forever
            gz.close()
    return Blob(LAYER_GZIP, "sha256:" + compressed.sha.hexdigest(), compressed.size, path,
                "sha256:" + plain.sha.hexdigest())


def _info(name: str, st: os.stat_result, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, epoch
    info.uname = info.gname = ""
    return info


def tar_layer(root: str, work: str, epoch: int) -> Blob:
    """The directory `root` (overlayfs form) as an OCI layer.

    The tree may be live: a directory upper, or a running sandbox's tmpfs upper, which the sandbox
    writes while it is read. So nothing in it is followed: every entry is opened by name beneath the
    fd of its directory with O_NOFOLLOW, then checked to be what was stat'ed; one swapped for a
    symlink (to a host file, say) in between stops the export instead of carrying the host into it."""
    def fill(tar: tarfile.TarFile) -> None:
        links: dict[tuple[int, int], str] = {}

        def walk(dir_fd: int, rel: str) -> None:
            for name in sorted(os.listdir(dir_fd), key=os.fsencode):
                arc = f"{rel}/{name}" if rel else name
                at = f"/proc/self/fd/{dir_fd}/{name}"  # the directory itself, then the name, not followed
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError as e:  # gone since the listing
                    raise _changed(arc, e.strerror or str(e)) from None
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # an overlayfs whiteout
                    tar.addfile(_info(f"{rel}/.wh.{name}" if rel else f".wh.{name}", st, epoch))
                    continue
                info = _info(arc, st, epoch)
                xattrs = _xattrs(at)
                if xattrs:
                    info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                        for k, v in sorted(xattrs.items())}
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                    child = _open_same(dir_fd, name, st, os.O_DIRECTORY, arc)
                    try:
                        if opaque(child):
                            tar.addfile(_info(f"{arc}/.wh..wh..opq", st, epoch))
                        walk(child, arc)
                    finally:
                        os.close(child)
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in links:
                        info.type, info.linkname = tarfile.LNKTYPE, links[key]
                        tar.addfile(info)
                        continue
                    links[key] = arc
                    info.size = st.st_size
                    with os.fdopen(_open_same(dir_fd, name, st, os.O_NONBLOCK, arc), "rb") as f:
                        try:
                            tar.addfile(info, f)
                        except OSError as e:  # tarfile: "unexpected end of data" when it shrank
                            raise _changed(arc, str(e)) from None
                elif stat.S_ISLNK(st.st_mode):
                    try:
                        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dir_fd)
                    except OSError as e:  # EINVAL: no symlink any more
                        raise _changed(arc, e.strerror or str(e)) from None
                    tar.addfile(info)
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                    info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                    tar.addfile(info)
                elif stat.S_ISFIFO(st.st_mode):
                    info.type = tarfile.FIFOTYPE
                    tar.addfile(info)
                # sockets are not files an image can carry

        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            walk(top, "")
        finally:
            os.close(top)

    return _new_layer(work, fill)


def _open_same(dir_fd: int, name: str, st: os.stat_result, flags: int, arc: str) -> int:
    """`name` beneath `dir_fd`, not followed, and the very file that `st` describes."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | flags, dir_fd=dir_fd)
    except OSError as e:  # ELOOP: a symlink now; ENOTDIR, ENOENT: replaced or gone
        raise _changed(arc, e.strerror or str(e)) from None
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino, stat.S_IFMT(now.st_mode)) != (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)):
        os.close(fd)
        raise _changed(arc, "it was replaced")
    return fd


def _changed(arc: str, why: str) -> NsbuildError:
    return NsbuildError(f"/{arc} changed while it was exported ({why})",
                        "stop what runs in the sandbox, or export a sandbox that is not in use")


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return {n: os.getxattr(path, n, follow_symlinks=False) for n in names if n.startswith(XATTRS)}
    except OSError:
        return {}


def paths_layer(paths: tuple[PathEntry, ...], work: str, epoch: int) -> Blob:
    """The recipe's [[path]] entries, as a build writes them into the upper (parents first, sorted)."""
    def fill(tar: tarfile.TarFile) -> None:
        for p in sorted(paths, key=lambda p: os.fsencode(p.path)):
            info = tarfile.TarInfo(p.path.lstrip("/"))
            info.mode, info.uid, info.gid, info.mtime, info.uname, info.gname = p.mode, p.uid, p.gid, epoch, "", ""
            if p.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif p.kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, p.link, 0o777
                tar.addfile(info)
            else:
                info.size = len(p.content)
                tar.addfile(info, io.BytesIO(p.content))

    return _new_layer(work, fill)


# --- the image

def config_of(run: Any, layers: list[Blob], epoch: int | None) -> dict[str, Any]:
    os_, arch, variant = oci.host_platform()
    cfg: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in run.env], "Cmd": list(run.command), "WorkingDir": run.cwd}
    if getattr(run, "user", "root") not in ("root", ""):
        cfg["User"] = run.user
    doc: dict[str, Any] = {"architecture": arch, "os": os_, **({"variant": variant} if variant else {}),
                           "config": cfg, "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in layers]}}
    if epoch is not None:
        import datetime

        doc["created"] = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return doc


def _json_blob(work: str, doc: dict[str, Any], media_type: str) -> Blob:
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    fd, path = tempfile.mkstemp(dir=work, suffix=".json")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Blob(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data), path)


def export(target: str, dest_text: str, state_dir: str | None = None) -> tuple[str, list[str]]:
    """Write the image; returns the manifest digest and a line per blob saying what happened to it.
    An error says what was being exported where, before its cause."""
    try:
        return _export(target, dest_text, state_dir)
    except NsbuildError as e:
        raise e.wrap(f"exporting {target} to {dest_text}") from None


def _export(target: str, dest_text: str, state_dir: str | None) -> tuple[str, list[str]]:
    dest = parse_dest(dest_text)
    recipe, upper = source_of(target, state_dir)
    env_epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if env_epoch is not None and not env_epoch.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={env_epoch!r} is not a number of seconds")
    epoch = int(env_epoch) if env_epoch else 0
    from builder.sandbox.session import Session

    session = Session()
    parent = os.path.join(session.store.path, "tmp")
    os.makedirs(parent, mode=0o700, exist_ok=True)
    session.hold()  # gc empties tmp/: not while the new layers are written there
    work = tempfile.mkdtemp(dir=parent, prefix=f"export.{os.getpid()}.")
    try:
        layers, run = layers_of(recipe, upper, work, epoch, session)
        config = _json_blob(work, config_of(run, layers, int(env_epoch) if env_epoch else None),
                            "application/vnd.oci.image.config.v1+json")
        manifest_doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": descriptor(config), "layers": [descriptor(b) for b in layers]}
        manifest = _json_blob(work, manifest_doc, manifest_doc["mediaType"])
        if dest.kind == "oci":
            report = write_layout(dest, layers + [config], manifest)
        else:
            from builder.images.push import push

            report = push(dest, layers + [config], manifest)
        return manifest.digest, report
    finally:
        shutil.rmtree(work, ignore_errors=True)
        session.release()
