"""Unpacking layers safely: archives and OCI layer blobs into empty store directories.

tarfile's own extraction filters (PEP 706) decide what is safe; xattrs from PAX headers are restored
through fds resolved beneath the layer; OCI whiteouts become overlayfs whiteouts. Used by the archive,
oci and registry kinds (kinds/).
"""
from __future__ import annotations

import copy
import hashlib
import os
import stat
from builder.layers.tarfiles import tarfile
from collections.abc import Callable
from typing import BinaryIO

from builder import progress
from builder.errors import UsageError
from builder.layers.oci import LAYER_TYPES, Blob, Image
from builder.layers.resolved import ResolvedLayer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from builder.layers.store import Store
    from builder.recipe.model import Layer

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
USER_OPAQUE_XATTR = "user.overlay.opaque"  # what overlayfs reads in a user namespace (userxattr)
MemberFilter = Callable[[tarfile.TarInfo, str], "tarfile.TarInfo | None"]

# xattrs restored from archives: ACLs, file capabilities and user data. Never trusted.* (overlayfs
# keeps whiteouts, redirects and metacopy there: a layer must not forge them), nor user.overlay.*
# (where a rootless overlayfs, mounted with userxattr, keeps them), nor security labels.
XATTRS = ("user.", "security.capability", "system.posix_acl_access", "system.posix_acl_default")
OVERLAY_USER_XATTRS = "user.overlay."
PAX_XATTR = "SCHILY.xattr."


class Xattrs:
    """xattrs from PAX headers, which tarfile reads but does not restore: noted while the filter
    passes members, set after extraction through fds resolved beneath the layer."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, dict[str, bytes]]] = []

    def note(self, member: tarfile.TarInfo) -> None:
        found = {k[len(PAX_XATTR):]: v.encode("utf-8", "surrogateescape") for k, v in member.pax_headers.items()
                 if k.startswith(PAX_XATTR) and k[len(PAX_XATTR):].startswith(XATTRS)
                 and not k[len(PAX_XATTR):].startswith(OVERLAY_USER_XATTRS)}
        if found and not member.issym():
            self.pending.append((member.name, found))

    def apply(self, dest: str) -> None:
        from builder.kernel import syscalls as sc

        root = os.open(dest, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name, attrs in self.pending:
                # no symlink on the way, and nothing outside the layer: the kernel checks both
                fd = sc.openat2(root, name, sc.flags(("O_PATH", "O_NOFOLLOW", "O_CLOEXEC")),
                                sc.flags(("RESOLVE_BENEATH", "RESOLVE_NO_SYMLINKS")))
                try:
                    for key, value in attrs.items():
                        os.setxattr(f"/proc/self/fd/{fd}", key, value)  # O_PATH fds take no f*xattr
                finally:
                    os.close(fd)
        finally:
            os.close(root)


def layer_filter(devices: bool, xattrs: Xattrs | None = None) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo]:
    """tarfile's own filters decide what is safe (PEP 706); a root filesystem keeps owners and modes.

    - tar_filter: no member may land outside the layer, also not through a symlink extracted
      before it (paths are resolved), and a leading "/" is stripped;
    - data_filter, for hard links: the target must be a file inside the layer;
    - data_filter also refuses device nodes and fifos unless the recipe allows them.
    Symlinks may point anywhere: in a root filesystem, absolute ones are the rule
    (/etc/alternatives, /etc/ssl/certs), and they resolve inside the sandbox's root, which
    nsbuild itself only walks with RESOLVE_IN_ROOT. Owners and setuid bits come back afterwards.
    """
    def keep(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        if member.islnk() or ((member.ischr() or member.isblk() or member.isfifo()) and not devices):
            tarfile.data_filter(member, dest)  # raises for escaping hard links and refused special files
        checked = tarfile.tar_filter(member, dest)
        if xattrs is not None:
            xattrs.note(checked)
        return checked.replace(uid=member.uid, gid=member.gid, uname=member.uname, gname=member.gname,
                               mode=member.mode, deep=False)
    return keep


def untar(path: str, dest: str, devices: bool) -> None:
    """Unpack an archive: gzip and zstd are read as streams (decompress.py); tarfile finds the rest
    (plain, xz and bz2) by their magic."""
    from builder.layers import decompress

    size = os.stat(path).st_size
    with open(path, "rb") as raw, \
            progress.bar(f"unpacking {os.path.basename(path)}", size) as advance:
        counted = progress.CountingReader(raw, advance)
        compression = decompress.sniff(raw)
        xattrs = Xattrs()
        with decompress.reader(counted, compression) as stream, \
                tarfile.open(fileobj=stream, mode="r|" if compression else "r:*") as tar:  # type: ignore[call-overload]
            tar.extractall(dest, numeric_owner=True, filter=layer_filter(devices, xattrs))
    xattrs.apply(dest)


# --- OCI layer blobs

class _Hashing:
    """A file that hashes and counts what tarfile's stream mode reads from it (strictly forward)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def finish(self) -> tuple[str, int]:
        """Digest and size of the whole file: the tar reader stops at the end-of-archive marker."""
        while self.read(1 << 20):
            pass
        return "sha256:" + self.sha.hexdigest(), self.size


def unpack_layer(blob: Blob, dest: str, member_filter: MemberFilter) -> None:
    """Unpack a layer into the existing empty directory `dest`, in overlayfs form: whiteouts become char
    devices 0:0, opaque markers the xattr trusted.overlay.opaque=y.

    Every member goes through `member_filter` (a PEP 706 filter such as layer_filter), a whiteout as
    the empty file it is, so paths outside `dest` are refused the same way (tarfile.FilterError).
    Raises UsageError if the blob's sha256 or size is not the descriptor's; then `dest` holds a partial
    layer that the caller discards.

    One pass: the sha256 is computed while tarfile reads, so a layer is read from disk once. Unpacking
    bytes not yet verified is no new risk: the filter is what keeps any layer inside `dest` (as for
    unpinned archive layers); a mismatch is reported after the fact, also when tarfile failed first.
    """
    compression = LAYER_TYPES.get(blob.media_type)
    if compression is None:
        raise UsageError(f"layer {blob.digest}: unsupported media type {blob.media_type!r}")
    whiteouts: list[str] = []

    def keep(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        parts = member.name.split("/")
        if any(p.startswith(WHITEOUT) for p in parts[:-1]):
            return None  # names under a .wh. name are reserved (aufs metadata such as .wh..wh.plnk/)
        if not parts[-1].startswith(WHITEOUT):
            return member_filter(member, path)
        as_file = copy.copy(member)  # what a whiteout is: an empty file (a link or device would be refused)
        as_file.type, as_file.linkname = tarfile.REGTYPE, ""
        checked = member_filter(as_file, path)
        if checked is not None:
            whiteouts.append(checked.name)  # applied after the layer: whiteouts override nothing in it
        return None  # the marker itself is never extracted

    from builder.layers import decompress

    with open(blob.path, "rb") as f:
        src = _Hashing(f)
        try:
            with decompress.reader(src, compression) as stream, \
                    tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                tar.extractall(dest, numeric_owner=True, filter=keep)
        except Exception:
            if mismatch := _mismatch(blob, src):  # a corrupt blob is reported as such, not as a tar error
                raise mismatch from None
            raise
        if mismatch := _mismatch(blob, src):
            raise mismatch
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in whiteouts:
            _apply_whiteout(root, name)
    finally:
        os.close(root)


def _mismatch(blob: Blob, src: _Hashing) -> UsageError | None:
    digest, size = src.finish()
    if (digest, size) == (blob.digest, blob.size):
        return None
    return UsageError(f"layer {blob.path} has {digest} ({size} bytes), not {blob.digest} ({blob.size} bytes)",
                      "the blob is corrupt or was modified: copy the image again")


def _apply_whiteout(root: int, name: str) -> None:
    """Turn the marker `name` (a path the filter accepted) into overlayfs form in the layer at fd `root`.

    The parent is walked from the layer's root one component at a time without following symlinks: a symlink
    unpacked after the marker, or one that stays inside the layer, still cannot redirect the whiteout.
    """
    parent, marker = os.path.split(os.path.normpath(name))
    fd = _open_dir(root, parent, name)
    try:
        before = os.fstat(fd)
        if marker == OPAQUE:
            os.setxattr(fd, _opaque_xattr(), b"y")
        elif marker.startswith(WHITEOUT + WHITEOUT):
            pass  # other .wh..wh. names are aufs metadata, nothing to delete
        else:
            _whiteout(fd, marker[len(WHITEOUT):], name)
        os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))  # keep the directory's mtime from the layer
    finally:
        os.close(fd)


def _opaque_xattr() -> str:
    """trusted.* for root's overlayfs; a rootless one (mounted with userxattr) reads user.*."""
    from builder.sandbox.paths import initial_userns

    return OPAQUE_XATTR if initial_userns() else USER_OPAQUE_XATTR


def _whiteout(parent: int, target: str, name: str) -> None:
    if target in ("", ".", ".."):
        raise tarfile.FilterError(f"whiteout {name!r} names no file")
    try:
        st = os.lstat(target, dir_fd=parent)
    except FileNotFoundError:
        os.mknod(target, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
        return
    # layer.md: a whiteout hides the lower layers' file only; this layer's own entry stays. For a
    # directory that is an opaque one (the lower directory deleted, this one made anew).
    if stat.S_ISDIR(st.st_mode):
        fd = _open_dir(parent, target, name)
        try:
            os.setxattr(fd, _opaque_xattr(), b"y")
        finally:
            os.close(fd)


_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(at: int, path: str, name: str) -> int:
    """An fd of the directory `path` under the directory fd `at`, creating missing directories (a layer
    need not list the parents of a whiteout) and refusing symlinks anywhere on the way."""
    fd = os.dup(at)
    try:
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":  # normpath leaves ".." only in front, which the filter refused
                raise tarfile.FilterError(f"whiteout {name!r} leaves the layer")
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(part, _O_DIR, dir_fd=fd)
            except OSError as e:  # ENOTDIR: a symlink (O_NOFOLLOW) or a file
                raise tarfile.FilterError(f"whiteout {name!r}: {part!r} in its path is a symlink or not a "
                                          f"directory ({e.strerror})") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def unpack_blob(blob: Blob, dest: str, devices: bool) -> None:
    """An OCI layer blob as a store directory: unpack_layer through the layer filter, xattrs restored."""
    xattrs = Xattrs()
    unpack_layer(blob, dest, layer_filter(devices, xattrs))
    xattrs.apply(dest)


def blob_entries(store: Store, layer: Layer, image: Image) -> list[str]:
    """The store entries of an OCI image's layer blobs ("-oci": whiteouts in overlayfs form)."""
    return [store.entry(blob.digest.removeprefix("sha256:") + "-oci", layer.devices) for blob in image.layers]


def unpack_blobs(store: Store, layer: Layer, blobs: list[Blob], paths: list[str],
                 sources: list[str]) -> list[ResolvedLayer]:
    """Each blob unpacked into its store entry (unless there already), as the layers the planner mounts;
    `sources` name the blobs in errors."""
    for k, (blob, path, source) in enumerate(zip(blobs, paths, sources)):
        store.fill(f"{layer.origin} blob {k}", source, path, lambda tmp, b=blob: unpack_blob(b, tmp, layer.devices))
    return blob_layers(layer, paths)


def blob_layers(layer: Layer, paths: list[str]) -> list[ResolvedLayer]:
    return [ResolvedLayer(f"{layer.origin}.blob[{k}]", "dir", path, stored=True) for k, path in enumerate(paths)]
