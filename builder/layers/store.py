"""The content store: archive layers unpacked once, addressed by the archive's sha256.

    <store>/sha256/<digest>[-oci|-bin][-dev]/   an unpacked archive, OCI layer blob or binaries
                                     layer ("-dev": device nodes were allowed)
    <store>/tmp/NAME.PID.XXXX/       unpacking in progress; renamed into place when complete
    <store>/.lock                    flock(2) held while unpacking
    <store>/.gc.lock                 flock(2): builds hold it shared, gc exclusively (gclock.py)
    <store>/roots/                   symlinks to lock files and state dirs: what `nsbuild gc` keeps
    <store>/blobs/<hex>              manifests, indexes and configs pulled from registries (a cache
                                     checked against its digest on use; `nsbuild gc` empties it)
    <store>/tmp/pull.PID.XXXX/       layer blobs being pulled, deleted once unpacked
    <store>/digests.json             sha256 of input files by (device, inode, size, mtime, ctime): a
                                     rebuild does not read a large image or archive again

A crash leaves at most a directory under tmp/, never a half layer under sha256/.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
from collections.abc import Callable

from builder.layers import gclock
from builder import progress
from builder.errors import NsbuildError, UsageError
from builder.plan.executor import remove_tree
from builder.recipe.model import Layer, Recipe

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from builder.layers import oci
    from builder.images import registry

DEFAULT_STORE = "/var/lib/nsbuild/store"


def store_dir() -> str:
    from builder.sandbox.paths import store_dir as chosen

    return chosen()


def sha256_of(path: str) -> str:
    with open(path, "rb") as f, progress.bar(f"hashing {os.path.basename(path)}",
                                             os.fstat(f.fileno()).st_size) as advance:
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            advance(len(chunk))
        return h.hexdigest()


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


def _layer_filter(devices: bool, xattrs: Xattrs | None = None) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo]:
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


def _check_pin(recipe: Recipe, layer: Layer, digest: str) -> None:
    if layer.sha256 and digest != layer.sha256:
        raise UsageError(f"{recipe.file}: {layer.origin}.sha256: {layer.path} has sha256 {digest}, "
                         f"but the recipe pins {layer.sha256}",
                         f"the {layer.kind} changed: check it, then update sha256 (or run `nsbuild lock`)")


def _untar(layer: Layer, dest: str) -> None:
    """Unpack an archive: tarfile finds plain, gz, xz and bz2 by their magic; zstd (which tarfile
    does not know) is read as a stream through the zstandard binding."""
    size = os.stat(layer.path).st_size
    with open(layer.path, "rb") as raw, \
            progress.bar(f"unpacking {os.path.basename(layer.path)}", size) as advance:
        counted = progress.CountingReader(raw, advance)
        is_zstd = raw.read(4) == b"\x28\xb5\x2f\xfd"  # zstd.MAGIC, without importing the binding
        raw.seek(0)
        if is_zstd:
            from builder.images import zstd

            tar = tarfile.open(fileobj=zstd.reader(counted), mode="r|")  # type: ignore[arg-type]
        else:
            tar = tarfile.open(fileobj=counted, mode="r:*")  # type: ignore[arg-type]
        with tar:
            xattrs = Xattrs()
            tar.extractall(dest, numeric_owner=True, filter=_layer_filter(layer.devices, xattrs))
    xattrs.apply(dest)


def _walk(path: str) -> list[str]:
    """`path` and, for a directory, everything under it (symlinks not followed)."""
    out = [path]
    if os.path.isdir(path) and not os.path.islink(path):
        for top, dirs, files in os.walk(path):
            out += [os.path.join(top, n) for n in dirs + files]
    return out


def _copy_host_paths(paths: list[str], dest: str) -> None:
    """Copy host paths (parents listed before children) into dest, keeping links, modes and owners."""
    total = sum(os.lstat(p).st_size for p in paths if os.path.isfile(p) and not os.path.islink(p))
    with progress.bar("copying host binaries", total) as advance:
        for path in paths:
            target = dest + path
            parent = os.path.dirname(target)
            if not os.path.isdir(parent):  # a parent not listed itself: made like the host's
                _copy_parents(os.path.dirname(path), dest)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(path), target)
            elif stat.S_ISDIR(st.st_mode):
                os.makedirs(target, exist_ok=True)  # a parent made earlier for a file below it
                os.chmod(target, stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(path, target, follow_symlinks=False)
                os.chmod(target, stat.S_IMODE(st.st_mode))
                advance(st.st_size)
            else:
                continue  # sockets, fifos, devices: not programs
            _chown(target, st, follow_symlinks=False)


def _chown(path: str, st: os.stat_result, follow_symlinks: bool = True) -> None:
    """The host file's owner; in a user namespace that does not map it (rootless with a single
    mapping: host root shows as nobody), the file stays the user's."""
    try:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=follow_symlinks)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: an id this user namespace does not map
            raise


def _copy_parents(path: str, dest: str) -> None:
    if path == "/" or os.path.isdir(dest + path):
        return
    _copy_parents(os.path.dirname(path), dest)
    st = os.stat(path)
    os.mkdir(dest + path)
    os.chmod(dest + path, stat.S_IMODE(st.st_mode))
    _chown(dest + path, st)


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        self._known: dict[str, list] | None = None  # digests.json
        self._closures: dict[Layer, tuple[str, list[str]]] = {}  # binaries layers: digest, host paths
        self._images: dict[Layer, oci.Image] = {}  # OCI layers
        self._pulled: dict[Layer, registry.Pulled] = {}  # OCI layers from a registry
        self._dirty = False

    def entries(self, recipe: Recipe) -> list[str]:
        """The store entries a resolved recipe's layers are (their names under sha256/)."""
        top = os.path.join(self.path, "sha256")
        return [os.path.basename(layer.path) for layer in recipe.layers if os.path.dirname(layer.path) == top]

    def entry(self, digest: str, devices: bool) -> str:
        return os.path.join(self.path, "sha256", digest + ("-dev" if devices else ""))

    def resolve(self, recipe: Recipe, unpack: bool = True) -> Recipe:
        """The recipe with each archive, OCI and binaries layer replaced by store directories
        (an OCI image gives one per layer blob).

        Digests are checked against the recipe's pins before anything is unpacked or mounted.
        With unpack=False (for `nsbuild plan`) nothing is written.
        """
        if unpack:
            gclock.hold(self.path)
        layers: list[Layer] = []
        for layer in recipe.layers:
            if layer.kind == "dir":
                layers.append(layer)
            elif layer.kind == "image":
                if layer.sha256:
                    _check_pin(recipe, layer, self.digest(layer.path))
                layers.append(layer)
            elif layer.kind == "archive":
                digest = self.digest(layer.path)
                _check_pin(recipe, layer, digest)
                path = self.entry(digest, layer.devices)
                if unpack:
                    self._fill(layer.origin, layer.path, path, lambda tmp: _untar(layer, tmp))
                layers.append(dataclasses.replace(layer, kind="dir", path=path))
            elif layer.kind == "oci":
                layers += self._oci(recipe, layer, unpack)
            elif layer.kind == "binaries":
                digest, paths = self._binaries(layer)
                _check_pin(recipe, layer, digest)
                path = self.entry(digest + "-bin", False)
                if unpack:
                    self._fill(layer.origin, "host binaries", path, lambda tmp: _copy_host_paths(paths, tmp))
                layers.append(dataclasses.replace(layer, kind="dir", path=path))
            else:
                raise ValueError(f"unknown layer kind {layer.kind}")
        if unpack:
            self.save_digests()
        run = recipe.run
        top = recipe.layers[-1] if recipe.layers else None
        if top is not None and top.kind == "oci":  # the image is what the sandbox is: its config sets defaults
            from builder.images.imageconfig import run_defaults

            run = run_defaults(run, self.image(top).config, f"image config of {top.origin}")
        return dataclasses.replace(recipe, layers=tuple(layers), run=run)

    def _oci(self, recipe: Recipe, layer: Layer, unpack: bool) -> list[Layer]:
        """One store directory per layer blob, whiteouts in overlayfs form ("-oci" entries)."""
        from builder.layers import oci

        image = self.image(layer)
        _check_pin(recipe, layer, image.manifest_digest.removeprefix("sha256:"))

        def unpack_blob(blob: oci.Blob, tmp: str) -> None:
            xattrs = Xattrs()
            oci.unpack_layer(blob, tmp, _layer_filter(layer.devices, xattrs))
            xattrs.apply(tmp)

        paths = [self.entry(blob.digest.removeprefix("sha256:") + "-oci", layer.devices) for blob in image.layers]
        if unpack and layer in self._pulled:
            with self._downloads(layer, image, paths) as blobs:
                for k, (blob, path) in enumerate(zip(blobs, paths)):
                    self._fill(f"{layer.origin} blob {k}", f"{layer.path} blob {blob.digest}", path,
                               lambda tmp, b=blob: unpack_blob(b, tmp))
        elif unpack:
            for k, (blob, path) in enumerate(zip(image.layers, paths)):
                self._fill(f"{layer.origin} blob {k}", blob.path, path, lambda tmp, b=blob: unpack_blob(b, tmp))
        return [Layer(f"{layer.origin}.blob[{k}]", "dir", path) for k, path in enumerate(paths)]

    @contextlib.contextmanager
    def _downloads(self, layer: Layer, image: oci.Image, paths: list[str]) -> Iterator[list[oci.Blob]]:
        """The blobs of a pulled image whose store entries are missing, fetched and verified into
        tmp/pull.PID.XXXX/ (all of them before any is unpacked: a failed pull leaves nothing under
        sha256/), as Blobs with those paths; the downloads are deleted afterwards. The image's manifest
        and config go into the blob cache, so a warm pull asks only for the manifest."""
        pulled = self._pulled[layer]
        gclock.hold(self.path)
        made = self._ensure_dirs()
        gclock.hold(self.path)
        tmp = ""
        try:
            tmp = tempfile.mkdtemp(dir=os.path.join(self.path, "tmp"), prefix=f"pull.{os.getpid()}.")
            blobs = []
            for blob, path in zip(image.layers, paths):
                if os.path.isdir(path):
                    blobs.append(dataclasses.replace(blob, path=""))  # _fill will not read it
                    continue
                dest = os.path.join(tmp, blob.digest.removeprefix("sha256:"))
                pulled.client.blob(blob.digest, blob.size, dest, f"pulling {blob.digest[7:19]}")
                blobs.append(dataclasses.replace(blob, path=dest))
            self._cache_documents(pulled.documents)
            yield blobs
        except BaseException:
            if tmp:
                remove_tree(tmp)
                tmp = ""
            if made:  # a first pull that failed leaves no store behind
                gclock.release(self.path)
                self._remove_unused(made)
            raise
        finally:
            if tmp:
                remove_tree(tmp)

    def _cache_documents(self, documents: dict[str, bytes]) -> None:
        cache = os.path.join(self.path, "blobs")
        os.makedirs(cache, mode=0o700, exist_ok=True)
        for digest, body in documents.items():
            dest = os.path.join(cache, digest.removeprefix("sha256:"))
            if os.path.exists(dest):
                continue
            tmp = f"{dest}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(body)
            os.rename(tmp, dest)  # never half-visible: readers also check the digest

    def image(self, layer: Layer) -> oci.Image:
        """The image an OCI layer picks (its index, manifest and config read and checked once per
        Store: `nsbuild lock` asks twice)."""
        if layer not in self._images:
            if layer.path.startswith("docker://"):
                from builder.images import registry

                cache = os.path.join(self.path, "blobs")
                self._pulled[layer] = registry.pull_image(layer.path, layer.origin, layer.platform, cache)
                self._images[layer] = self._pulled[layer].image
            else:
                from builder.layers import oci

                self._images[layer] = oci.open_layout(layer.path).image(layer.ref, layer.platform)
        return self._images[layer]

    def registry_source(self, layer: Layer) -> registry.Client | None:
        """The registry client an OCI layer was pulled with (None for a layout), after image()."""
        pulled = self._pulled.get(layer)
        return pulled.client if pulled else None

    def _binaries(self, layer: Layer) -> tuple[str, list[str]]:
        """The host paths a binaries layer copies (programs with their shared-library closure, extra
        files and directories, every symlink on the way) and the digest of what it copies: paths,
        types, modes, owners, link targets and contents. Computed once per Store (lock asks twice)."""
        if layer in self._closures:
            return self._closures[layer]
        from builder.check import elf

        search = elf.Search(elf.HostView())  # one for both closures: libc & co. are parsed once
        view = search.view
        paths: set[str] = set(elf.closure(list(layer.binaries), search))
        elves: list[str] = []
        for item in layer.files:
            res = view.resolve(item)
            paths.update(res.links)
            for path in _walk(res.path):
                paths.add(path)
                # a library among the files (Python's extension modules) brings its own libraries
                is_lib = ".so" in os.path.basename(path) and os.path.isfile(path) and not os.path.islink(path)
                if is_lib and isinstance(search.identify(view.resolve(path)), elf.ElfInfo):
                    elves.append(path)
        if elves:
            paths.update(elf.closure(elves, search))
        ordered = sorted(paths, key=lambda p: p.split("/"))  # parents first
        h = hashlib.sha256()
        for path in ordered:
            st = os.lstat(path)
            h.update(f"{path}\0{st.st_mode:o} {st.st_uid}:{st.st_gid}\0".encode())
            if os.path.islink(path):
                h.update(os.fsencode(os.readlink(path)))
            elif os.path.isfile(path):
                h.update(self.digest(path).encode())
            h.update(b"\n")
        self._closures[layer] = h.hexdigest(), ordered
        return self._closures[layer]

    def input_digest(self, layer: Layer) -> str:
        """The digest a lock file records for a layer (see lock.py)."""
        if layer.kind == "dir":
            from builder.layers.lock import tree_digest

            return tree_digest(layer.path)
        if layer.kind in ("image", "archive"):
            return self.digest(layer.path)
        if layer.kind == "oci":
            return self.image(layer).manifest_digest.removeprefix("sha256:")
        if layer.kind == "binaries":
            return self._binaries(layer)[0]
        raise ValueError(f"no input digest for {layer.kind} layers")

    def digest(self, path: str) -> str:
        """sha256 of a file, remembered by its identity and times: ctime changes with any write,
        and no one can set it back. New digests are saved by save_digests()."""
        st = os.stat(path)
        key = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        if self._known is None:
            try:
                with open(os.path.join(self.path, "digests.json")) as f:
                    self._known = json.load(f)
            except (OSError, ValueError):
                self._known = {}
        if self._known.get(path, [])[:-1] == key:
            return str(self._known[path][-1])
        digest = sha256_of(path)
        self._known[path] = key + [digest]
        self._dirty = True
        return digest

    def save_digests(self) -> None:
        if not self._dirty or self._known is None:
            return
        cache_file = os.path.join(self.path, "digests.json")
        tmp = f"{cache_file}.{os.getpid()}.tmp"
        self._ensure_dirs()
        try:
            with open(tmp, "w") as f:
                json.dump({p: v for p, v in self._known.items() if os.path.exists(p)}, f)
            os.rename(tmp, cache_file)  # readers see the old or the new file, never half of one
            self._dirty = False
        except OSError:  # a cache: losing it costs time only
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _ensure_dirs(self) -> list[str]:
        made = [d for d in (self.path, os.path.join(self.path, "sha256"), os.path.join(self.path, "tmp"))
                if not os.path.isdir(d)]
        for d in made:
            os.makedirs(d, mode=0o700, exist_ok=True)
        return made

    def _fill(self, origin: str, source: str, dest: str, fill: Callable[[str], None]) -> None:
        """Make the store entry `dest` with fill(tmp) unless it exists: in a fresh directory under
        tmp/, renamed into place when complete, under the store lock."""
        gclock.hold(self.path)  # before using dest (gc may delete it) or tmp/ (gc deletes what it finds there)
        if os.path.isdir(dest):
            return
        made = self._ensure_dirs()
        gclock.hold(self.path)  # the store did not exist a moment ago
        lock_path = os.path.join(self.path, ".lock")
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent builds of one layer make it once
            if os.path.isdir(dest):
                return
            self._remove_abandoned()
            tmp = ""
            try:
                tmp = tempfile.mkdtemp(dir=os.path.join(self.path, "tmp"),
                                       prefix=f"{os.path.basename(dest)}.{os.getpid()}.")
                os.chmod(tmp, 0o755)  # the layer's "/" (a tar entry for "." sets it too)
                fill(tmp)
                os.rename(tmp, dest)
            except BaseException as e:
                if tmp:
                    try:
                        remove_tree(tmp)  # our own fresh directory: nothing is mounted inside
                    except OSError:
                        pass  # left under tmp/ for `nsbuild gc`
                if made:  # a first unpack that failed leaves no store behind either
                    gclock.release(self.path)
                    self._remove_unused(made)
                if not isinstance(e, (tarfile.TarError, OSError)):
                    raise
                hint = ("device nodes and fifos need devices = true on the layer"
                        if isinstance(e, tarfile.SpecialFileError) else
                        "nothing was unpacked; the archive may be corrupt or unsafe")
                raise NsbuildError(f"{origin}: cannot unpack {source}: {e}", hint) from None
        finally:
            os.close(lock)

    def _remove_unused(self, made: list[str]) -> None:
        """Remove the store directories a failed first unpack made (and its lock files), unless
        another build holds the store by now (then they stay: an empty store is harmless)."""
        gc_lock = os.path.join(self.path, ".gc.lock")
        try:
            fd = gclock.exclusive(self.path, wait=False)
        except OSError:
            return
        try:
            for path in [os.path.join(self.path, ".lock"), gc_lock] + made[::-1]:
                try:
                    os.rmdir(path) if path in made else os.unlink(path)
                except OSError:
                    pass
        finally:
            os.close(fd)

    def _remove_abandoned(self) -> None:
        """Unpack dirs under tmp/ (NAME.PID.XXXX) whose build is gone. Called under the store lock,
        so no live build is filling one; the PID check also covers a lock file replaced meanwhile."""
        tmp = os.path.join(self.path, "tmp")
        try:
            names = sorted(os.listdir(tmp))
        except OSError:
            return
        for name in names:
            if _alive(name.split(".")[-2]):
                continue
            try:
                remove_tree(os.path.join(tmp, name))
            except OSError:
                continue  # `nsbuild gc` tries again, and says so
            print(f"nsbuild: recovered: removed {os.path.join(tmp, name)}, an unpack that was interrupted",
                  file=sys.stderr)

    # -- garbage collection ------------------------------------------------------------

    def add_root(self, path: str) -> None:
        """Remember a lock file or state dir whose store entries `gc` must keep."""
        roots = os.path.join(self.path, "roots")
        os.makedirs(roots, mode=0o700, exist_ok=True)
        link = os.path.join(roots, hashlib.sha256(os.fsencode(path)).hexdigest()[:32])
        if os.path.islink(link) and os.readlink(link) == path:
            return
        tmp = f"{link}.{os.getpid()}.tmp"
        os.symlink(path, tmp)
        os.rename(tmp, link)

    def referenced(self) -> tuple[set[str], list[str]]:
        """Store entries named by live roots, and the roots that are gone."""
        from builder.layers import lock

        keep: set[str] = set()
        dead: list[str] = []
        roots = os.path.join(self.path, "roots")
        for name in sorted(os.listdir(roots)) if os.path.isdir(roots) else []:
            if name.endswith(".tmp"):
                continue  # not a root yet (add_root renames it into place), or abandoned
            target = os.readlink(os.path.join(roots, name))
            if os.path.isdir(target):  # a state dir: every sandbox's metadata lists its entries
                for meta in sorted(os.listdir(target)):
                    if meta.endswith(".json"):
                        keep.update(_json_list(os.path.join(target, meta), "store"))
            elif os.path.isfile(target) and target.endswith(".lock"):
                keep.update(_json_list(target, "store"))
                if not lock.is_lock_file(target):
                    dead.append(name)
            else:
                dead.append(name)
        return keep, dead

    def gc(self, dry_run: bool = False) -> list[str]:
        """Remove store entries that no lock file and no persisted sandbox references, and
        leftovers of interrupted unpacks. Builds hold the gc lock shared while they use the store."""
        if not os.path.isdir(self.path):
            return []
        lock_fd = gclock.exclusive(self.path)
        try:
            keep, dead = self.referenced()
            removed = []
            entries = os.path.join(self.path, "sha256")
            for name in sorted(os.listdir(entries)) if os.path.isdir(entries) else []:
                if name not in keep:
                    removed.append(os.path.join(entries, name))
            tmp = os.path.join(self.path, "tmp")
            removed += [os.path.join(tmp, n) for n in sorted(os.listdir(tmp))] if os.path.isdir(tmp) else []
            removed += [os.path.join(self.path, "roots", n) for n in dead]
            blobs = os.path.join(self.path, "blobs")  # re-fetched on demand: no root keeps them
            removed += [os.path.join(blobs, n) for n in sorted(os.listdir(blobs))] if os.path.isdir(blobs) else []
            removed += _abandoned_tmp_files(self.path) + _abandoned_tmp_files(os.path.join(self.path, "roots"))
            if not dry_run:
                for path in removed:
                    if os.path.islink(path) or not os.path.isdir(path):
                        os.unlink(path)
                    else:
                        remove_tree(path)
            return removed
        finally:
            os.close(lock_fd)


def _alive(pid: str) -> bool:
    """Whether process `pid` (text from a file name) exists; anything unparsable counts as gone."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _abandoned_tmp_files(directory: str) -> list[str]:
    """NAME.PID.tmp files (digests.json and roots/ are written that way, then renamed) whose
    writer is gone."""
    return [os.path.join(directory, name) for name in (sorted(os.listdir(directory)) if os.path.isdir(directory) else [])
            if name.endswith(".tmp") and name.count(".") >= 2 and not _alive(name.split(".")[-2])]


def _json_list(path: str, key: str) -> list[str]:
    try:
        with open(path) as f:
            value = json.load(f).get(key, [])
        return [str(v) for v in value] if isinstance(value, list) else []
    except (OSError, ValueError, AttributeError):
        return []
