"""The content store (CAS): layers unpacked once, addressed by their content's sha256. What goes
into an entry is each layer kind's business (kinds/); the store keeps entries, digests and gc roots.

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
import fcntl
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

from builder.layers import gclock
from builder import progress
from builder.errors import NsbuildError
from builder.plan.executor import remove_tree



def store_dir() -> str:
    from builder.sandbox.paths import store_dir as chosen  # root's, or the user's (XDG)

    return chosen()


def sha256_of(path: str) -> str:
    with open(path, "rb") as f, progress.bar(f"hashing {os.path.basename(path)}",
                                             os.fstat(f.fileno()).st_size) as advance:
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            advance(len(chunk))
        return h.hexdigest()


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        self._known: dict[str, list] | None = None  # digests.json
        self._dirty = False

    def entry(self, digest: str, devices: bool) -> str:
        return os.path.join(self.path, "sha256", digest + ("-dev" if devices else ""))

    def refused(self, e: OSError) -> NsbuildError:
        """The content store is root's (or read-only): say so, not a traceback."""
        return NsbuildError(f"cannot use the content store {self.path}: {e.strerror} ({e.filename})",
                            "archive, OCI and binaries layers are unpacked there: run nsbuild as root (sudo), "
                            "or set NSBUILD_STORE to a directory of your own")

    @contextlib.contextmanager
    def scratch(self, prefix: str) -> Iterator[str]:
        """A fresh directory tmp/PREFIX.PID.XXXX/ for downloads, deleted afterwards. If it fails, a store
        that did not exist before goes again (a first pull that failed leaves no store behind)."""
        gclock.hold(self.path)
        made = self._ensure_dirs()
        gclock.hold(self.path)
        tmp = ""
        try:
            tmp = tempfile.mkdtemp(dir=os.path.join(self.path, "tmp"), prefix=f"{prefix}.{os.getpid()}.")
            yield tmp
        except BaseException:
            if tmp:
                remove_tree(tmp)
                tmp = ""
            if made:
                gclock.release(self.path)
                self._remove_unused(made)
            raise
        finally:
            if tmp:
                remove_tree(tmp)

    def cache_documents(self, documents: dict[str, bytes]) -> None:
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

    def fill(self, origin: str, source: str, dest: str, fill: Callable[[str], None]) -> None:
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
                from builder.layers.tarfiles import tarfile  # imported already by whatever unpacked

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
