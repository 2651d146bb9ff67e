"""OCI image layouts (as skopeo, umoci and buildah write them): pick an image, unpack its layers
as overlayfs lower directories.

    <layout>/oci-layout        {"imageLayoutVersion": "1.0.0"}
    <layout>/index.json        an image index: manifests (or nested indexes), tagged by annotation
    <layout>/blobs/sha256/<hex>

Every blob is checked against its descriptor's sha256 and size: index blobs, manifest and config
when an image is picked, each layer while it is unpacked.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import stat
import tarfile
from collections.abc import Callable
from typing import Any, BinaryIO

from builder.errors import UsageError

REF_NAME = "org.opencontainers.image.ref.name"
INDEX_TYPES = frozenset({"application/vnd.oci.image.index.v1+json",
                         "application/vnd.docker.distribution.manifest.list.v2+json"})
MANIFEST_TYPES = frozenset({"application/vnd.oci.image.manifest.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json"})
CONFIG_TYPES = frozenset({"application/vnd.oci.image.config.v1+json",
                          "application/vnd.docker.container.image.v1+json"})
# layer media type -> compression ("", "gz" or "zstd"); non-distributable ("foreign") layers unpack like the
# others. zstd:chunked layers carry the plain zstd media type (their extra frames are skippable ones).
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gz",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gz",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gz",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gz",
}
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# os.uname().machine -> (GOARCH, variant)
_MACHINES = {"x86_64": ("amd64", ""), "aarch64": ("arm64", ""), "arm64": ("arm64", ""), "armv7l": ("arm", "v7"),
             "armv6l": ("arm", "v6"), "i386": ("386", ""), "i586": ("386", ""), "i686": ("386", "")}
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
USER_OPAQUE_XATTR = "user.overlay.opaque"  # what overlayfs reads in a user namespace (userxattr)

MemberFilter = Callable[[tarfile.TarInfo, str], "tarfile.TarInfo | None"]
Descriptor = dict[str, Any]
Platform = tuple[str, str, str]  # os, architecture, variant


@dataclasses.dataclass(frozen=True)
class Blob:
    digest: str      # "sha256:<hex>"
    media_type: str
    size: int
    path: str        # <layout>/blobs/sha256/<hex>


@dataclasses.dataclass(frozen=True)
class Image:
    manifest_digest: str
    config_digest: str
    layers: list[Blob]  # bottom -> top: the order of overlayfs lowerdir is the reverse
    config: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)


def open_layout(path: str) -> Layout:
    """The layout at `path`, its oci-layout and index.json checked; blobs are read later, on demand."""
    path = os.path.abspath(path)
    hint = "an OCI image layout is a directory with oci-layout, index.json and blobs/; " \
           "write one with e.g. skopeo copy docker://IMAGE oci:DIR:TAG"
    if not os.path.isdir(path):
        raise UsageError(f"OCI layout {path}: not a directory", hint)
    header = _read_json_file(path, "oci-layout", hint)
    version = header.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise UsageError(f"OCI layout {path}: oci-layout has imageLayoutVersion {version!r}, not 1.x", hint)
    index = _read_json_file(path, "index.json", hint)
    layout = Layout(path, index)
    layout._manifests(index, "index.json")  # a malformed index.json fails now, not at image()
    return layout


def _read_json_file(layout: str, name: str, hint: str) -> dict[str, Any]:
    try:
        with open(os.path.join(layout, name), "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"OCI layout {layout}: {name} is missing", hint) from None
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise UsageError(f"OCI layout {layout}: cannot read {name}: {e}", hint) from None
    if not isinstance(doc, dict):
        raise UsageError(f"OCI layout {layout}: {name} is not a JSON object", hint)
    return doc


class Layout:
    def __init__(self, path: str, index: dict[str, Any]) -> None:
        self.path = path
        self.index = index

    def tags(self) -> list[str]:
        """The ref.name annotations of index.json."""
        return sorted({t for d in self._manifests(self.index, "index.json") if (t := _tag(d))})

    def image(self, ref: str | None = None, platform: str | None = None) -> Image:
        """The image tagged `ref` (or with manifest or index digest `ref`; or the only one), for `platform`
        ("os/arch[/variant]"; by default the host's) where an index offers several."""
        want = _parse_platform(platform) if platform else host_platform()
        top = self._manifests(self.index, "index.json")
        if ref and ref.startswith("sha256:"):
            candidates = [self._find(top, ref)]
        elif ref:
            candidates = [d for d in top if _tag(d) == ref]
            if not candidates:
                raise self._error(f"no image is tagged {ref!r}", self._tags_hint())
        else:
            if len({_tag(d) for d in top}) > 1:
                raise self._error("index.json lists several images; a ref must pick one", self._tags_hint())
            candidates = top
        desc = self._resolve(candidates, want, "index.json")
        return self._image(desc, want if platform else None)

    # --- picking a manifest

    def _manifests(self, index: dict[str, Any], where: str) -> list[Descriptor]:
        """The index's descriptors of manifests and indexes; others (unknown media types) are ignored
        as image-index.md requires."""
        entries = index.get("manifests")
        if index.get("schemaVersion") != 2 or not isinstance(entries, list):
            raise self._error(f"{where} is not an image index (schemaVersion 2 with a manifests list)")
        descs = [self._descriptor(d, f"{where}: manifests[{i}]") for i, d in enumerate(entries)]
        return [d for d in descs if d["mediaType"] in INDEX_TYPES | MANIFEST_TYPES]

    def _resolve(self, candidates: list[Descriptor], want: Platform, where: str) -> Descriptor:
        """Down through nested indexes to one manifest, choosing by platform where there are several."""
        while True:
            if not candidates:
                raise self._error(f"{where} lists no image manifest")
            desc = candidates[0] if len(candidates) == 1 else self._by_platform(candidates, want, where)
            if desc["mediaType"] in MANIFEST_TYPES:
                return desc
            where = f"image index {desc['digest']}"
            candidates = self._manifests(self._read_json(desc, where), where)

    def _by_platform(self, candidates: list[Descriptor], want: Platform, where: str) -> Descriptor:
        for desc in candidates:  # image-index.md: the first match wins
            p = desc.get("platform")
            if isinstance(p, dict) and _normalize(p.get("os"), p.get("architecture"), p.get("variant")) == want:
                return desc
        offered = ", ".join(_show(d.get("platform")) for d in candidates)
        raise self._error(f"{where} has no image for platform {_show(want)}; it has {offered}",
                          "choose one with platform = \"os/arch[/variant]\"")

    def _find(self, top: list[Descriptor], digest: str) -> Descriptor:
        """The descriptor with `digest`, in index.json or any nested index (a platform's manifest)."""
        queue = list(top)
        while queue:
            desc = queue.pop(0)
            if desc["digest"] == digest:
                return desc
            if desc["mediaType"] in INDEX_TYPES:
                where = f"image index {desc['digest']}"
                queue += self._manifests(self._read_json(desc, where), where)
        raise self._error(f"no image or index has digest {digest}", self._tags_hint())

    # --- reading blobs

    def _image(self, desc: Descriptor, platform: Platform | None) -> Image:
        where = f"manifest {desc['digest']}"
        manifest = self._read_json(desc, where)
        if manifest.get("schemaVersion") != 2:
            raise self._error(f"{where} has schemaVersion {manifest.get('schemaVersion')!r}, not 2")
        config = self._descriptor(manifest.get("config"), f"{where}: config")
        if config["mediaType"] not in CONFIG_TYPES:
            raise self._error(f"{where} is not a container image (config media type {config['mediaType']!r})",
                              "it may be an artifact (signature, SBOM): pick the image by tag or digest")
        layers = manifest.get("layers")
        if not isinstance(layers, list):
            raise self._error(f"{where} has no layers list")
        blobs = [self._layer(self._descriptor(d, f"{where}: layers[{i}]")) for i, d in enumerate(layers)]
        cfg = self._read_json(config, f"config {config['digest']}", own_type=False)
        if platform:  # explicitly asked for: also a single-platform image must be that platform
            got = _normalize(cfg.get("os"), cfg.get("architecture"), cfg.get("variant"))
            if got != platform:
                raise self._error(f"{where} is for platform {_show(got)}, not {_show(platform)}")
        return Image(desc["digest"], config["digest"], blobs, cfg)

    def _layer(self, desc: Descriptor) -> Blob:
        where = f"layer {desc['digest']}"
        media_type = desc["mediaType"]
        if media_type not in LAYER_TYPES:
            raise self._error(f"{where} has the unsupported media type {media_type!r}",
                              "supported: " + ", ".join(LAYER_TYPES))
        return Blob(desc["digest"], media_type, desc["size"], self._blob_path(desc, where))

    def _blob_path(self, desc: Descriptor, where: str) -> str:
        """The blob's path, after checking it exists with the descriptor's size (no hashing yet)."""
        path = os.path.join(self.path, "blobs", "sha256", desc["digest"].removeprefix("sha256:"))
        try:
            size = os.stat(path).st_size
        except OSError as e:
            raise self._error(f"{where}: blob {path} is missing ({e.strerror})",
                              "the layout is incomplete: copy the image again") from None
        if size != desc["size"]:
            raise self._error(f"{where}: blob {path} has {size} bytes, the descriptor says {desc['size']}",
                              "the blob is corrupt or was modified: copy the image again")
        return path

    def _read_json(self, desc: Descriptor, where: str, own_type: bool = True) -> dict[str, Any]:
        """A verified JSON blob. With own_type, a mediaType inside must match the descriptor's: a document
        must not read as an index to one client and as a manifest to another."""
        path = self._blob_path(desc, where)
        with open(path, "rb") as f:
            data = f.read(desc["size"] + 1)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if len(data) != desc["size"] or digest != desc["digest"]:
            raise self._error(f"{where}: blob {path} has {digest} ({len(data)} bytes), not {desc['digest']} "
                              f"({desc['size']} bytes)", "the blob is corrupt or was modified: copy the image again")
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise self._error(f"{where}: blob {path} is not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise self._error(f"{where}: blob {path} is not a JSON object")
        if own_type and doc.get("mediaType", desc["mediaType"]) != desc["mediaType"]:
            raise self._error(f"{where}: blob says it is {doc['mediaType']!r}, its descriptor {desc['mediaType']!r}")
        return doc

    def _descriptor(self, desc: object, where: str) -> Descriptor:
        if not isinstance(desc, dict):
            raise self._error(f"{where} is not a descriptor (a JSON object)")
        if not isinstance(desc.get("mediaType"), str):
            raise self._error(f"{where} has no mediaType")
        if not isinstance(desc.get("digest"), str) or not _DIGEST.fullmatch(desc["digest"]):
            raise self._error(f"{where} has digest {desc.get('digest')!r}; only sha256:<64 hex digits> is supported")
        size = desc.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise self._error(f"{where} has size {size!r}, not a byte count")
        return desc

    def _tags_hint(self) -> str:
        tags = self.tags()
        return f"available tags: {', '.join(tags)}" if tags else "the layout has no tags: pick by digest sha256:..."

    def _error(self, message: str, hint: str = "") -> UsageError:
        return UsageError(f"OCI layout {self.path}: {message}", hint)


def _tag(desc: Descriptor) -> str | None:
    annotations = desc.get("annotations")
    return annotations.get(REF_NAME) if isinstance(annotations, dict) else None


# --- platforms

def host_platform() -> Platform:
    machine = os.uname().machine
    arch, variant = _MACHINES.get(machine, (machine, ""))  # ppc64le, s390x, riscv64 are their own GOARCH
    return _normalize("linux", arch, variant)


def _parse_platform(text: str) -> Platform:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"platform {text!r}: expected os/arch[/variant]", "e.g. linux/amd64 or linux/arm/v7")
    return _normalize(*parts)


def _normalize(os_: object, arch: object, variant: object = "") -> Platform:
    """Spellings that mean the same platform compare equal: arm64 is v8, arm without a variant v7."""
    os_, arch, variant = (str(x or "") for x in (os_, arch, variant))
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)
    if arch == "arm64" and variant == "v8" or arch == "amd64" and variant == "v1":
        variant = ""
    elif arch == "arm" and not variant:
        variant = "v7"
    return os_, arch, variant


def _show(platform: object) -> str:
    if isinstance(platform, dict):
        platform = (platform.get("os"), platform.get("architecture"), platform.get("variant"))
    return "/".join(str(p) for p in platform if p) if isinstance(platform, tuple) else "(no platform)"


# --- layers

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

    Every member goes through `member_filter` (a PEP 706 filter such as store._layer_filter), a whiteout as
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

    with open(blob.path, "rb") as f:
        src = _Hashing(f)
        try:
            if compression == "zstd":
                from builder.images import zstd

                stream: BinaryIO = zstd.reader(src)  # type: ignore[arg-type]
                mode = "r|"
            else:
                stream, mode = src, "r|" + compression  # type: ignore[assignment]
            with tarfile.open(fileobj=stream, mode=mode) as tar:  # type: ignore[call-overload]
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
