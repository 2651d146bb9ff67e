"""Lock files: the digest of every input of a recipe, so a build can refuse drifted inputs.

RECIPE.lock (JSON, next to the recipe, e.g. dev.toml.lock) records for each layer:
- image and archive files: the file's sha256;
- OCI layouts: the chosen manifest's digest;
- directory layers: a deterministic tree digest (see tree_digest);
- binaries layers: the digest of the copied closure (paths, modes, link targets, contents).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat

from builder.errors import UsageError
from builder.recipe.model import Layer, Recipe

TYPE_CHECKING = False
if TYPE_CHECKING:
    from builder.layers.store import Store

VERSION = 1


def lock_path(recipe_file: str) -> str:
    return recipe_file + ".lock"


def tree_digest(root: str) -> str:
    """sha256 over a directory tree: every path (sorted, bytewise), its type, mode, owner, xattrs,
    and file contents, link targets or device numbers. Times are left out: a copy that keeps
    content is the same input."""
    h = hashlib.sha256()

    def walk(rel: bytes) -> None:
        path = os.path.join(os.fsencode(root), rel) if rel else os.fsencode(root)
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            child = os.path.join(rel, entry.name) if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            h.update(child + b"\0" + f"{st.st_mode:o} {st.st_uid} {st.st_gid}\0".encode())
            for name in sorted(os.listxattr(entry.path, follow_symlinks=False)):
                h.update(f"xattr {name}=".encode() + os.getxattr(entry.path, name, follow_symlinks=False) + b"\0")
            if stat.S_ISREG(st.st_mode):
                with open(entry.path, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(entry.path))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                h.update(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}".encode())
            h.update(b"\n")
            if stat.S_ISDIR(st.st_mode):
                walk(child)

    walk(b"")
    return h.hexdigest()


def layer_digests(recipe: Recipe, store: Store | None = None) -> dict[str, dict[str, str]]:
    """What each layer is made of now: {origin: {"kind", "source", "sha256"}}."""
    from builder.layers.store import Store, store_dir

    store = store or Store(store_dir())
    out = {layer.origin: {"kind": layer.kind, "source": _source(layer), "sha256": store.input_digest(layer)}
           for layer in recipe.layers}
    store.save_digests()
    return out


def _source(layer: Layer) -> str:
    return " ".join(layer.binaries + layer.files) if layer.kind == "binaries" else layer.path


def write(recipe: Recipe) -> str:
    """Write RECIPE.lock; the store keeps what it names until the lock file goes (`nsbuild gc`)."""
    from builder.layers.store import Store, store_dir

    from builder.sandbox.build import store_error

    path = lock_path(recipe.file)
    store = Store(store_dir())
    try:
        doc = {"version": VERSION, "recipe": os.path.basename(recipe.file), "recipe_sha256": recipe.sha256,
               "layers": layer_digests(recipe, store), "store": store.entries(store.resolve(recipe, unpack=False))}
    except PermissionError as e:
        raise store_error(e) from None
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
        os.rename(tmp, path)
    except PermissionError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}",
                         "the lock file goes beside the recipe: make its directory writable for you, "
                         "or lock a copy of the recipe in a directory of yours") from None
    except BaseException:  # also Ctrl-C: no RECIPE.lock.PID.tmp is left beside the recipe
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if doc["store"]:
        store.add_root(os.path.abspath(path))
    return path


def is_lock_file(path: str) -> bool:
    try:
        with open(path) as f:
            doc = json.load(f)
        return isinstance(doc, dict) and doc.get("version") == VERSION
    except (OSError, ValueError):
        return False


def read(recipe: Recipe) -> dict:
    path = lock_path(recipe.file)
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{recipe.file}: --locked, but there is no lock file {path}",
                         f"create it with `nsbuild lock {recipe.file}`") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot read the lock file: {e}", f"recreate it with `nsbuild lock {recipe.file}`")
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("layers"), dict):
        raise UsageError(f"{path}: not a version-{VERSION} nsbuild lock file",
                         f"recreate it with `nsbuild lock {recipe.file}`")
    return doc


def check(recipe: Recipe, store: Store | None = None) -> None:
    """--locked: every input is what the lock file recorded, else one error naming each drift."""
    doc = read(recipe)
    locked: dict[str, dict] = doc["layers"]
    drifts = []
    if doc.get("recipe_sha256") != recipe.sha256:
        drifts.append("the recipe itself changed since it was locked")
    now = layer_digests(recipe, store)
    for origin in sorted(set(locked) | set(now)):
        was, new = locked.get(origin), now.get(origin)
        if was is None or new is None:
            drifts.append(f"{origin}: {'not in the lock file' if was is None else 'no longer in the recipe'}")
        elif (was.get("kind"), was.get("source")) != (new["kind"], new["source"]):
            drifts.append(f"{origin}: was {was.get('kind')} {was.get('source')}, is {new['kind']} {new['source']}")
        elif was.get("sha256") != new["sha256"]:
            drifts.append(f"{origin} ({new['source']}): sha256 {new['sha256']}, the lock has {was.get('sha256')}")
    if drifts:
        raise UsageError(f"{recipe.file}: inputs drifted from {lock_path(recipe.file)}:\n  " + "\n  ".join(drifts),
                         f"check the changes; accept them with `nsbuild lock {recipe.file}`")
