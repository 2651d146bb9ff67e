"""Lock files: the digest of every input of a recipe, so a build can refuse drifted inputs.

RECIPE.lock (JSON, next to the recipe, e.g. dev.toml.lock) records for each layer:
- image and archive files: the file's sha256;
- OCI layouts: the chosen manifest's digest;
- directory layers: a deterministic tree digest (see kinds/path.py tree_digest);
- binaries layers: the digest of the copied closure (paths, modes, link targets, contents).
Each kind's digest() makes its own (kinds/).
"""
from __future__ import annotations

import json
import os

from builder.errors import UsageError
from builder.layers import kinds
from builder.recipe.model import Recipe

TYPE_CHECKING = False
if TYPE_CHECKING:
    from builder.layers.resolve import Resolver

VERSION = 1


def lock_path(recipe_file: str) -> str:
    return recipe_file + ".lock"


def layer_digests(recipe: Recipe, layers: Resolver) -> dict[str, dict[str, str]]:
    """What each layer is made of now: {origin: {"kind", "source", "sha256"}}."""
    out = {layer.origin: {"kind": kinds.of(layer).LOCKED, "source": kinds.of(layer).source(layer),
                          "sha256": layers.input_digest(layer)} for layer in recipe.layers}
    layers.save_digests()
    return out


def write(recipe: Recipe, layers: Resolver) -> str:
    """Write RECIPE.lock; the store keeps what it names until the lock file goes (`nsbuild gc`)."""
    path = lock_path(recipe.file)
    try:
        doc = {"version": VERSION, "recipe": os.path.basename(recipe.file), "recipe_sha256": recipe.sha256,
               "layers": layer_digests(recipe, layers),
               "store": layers.resolve(recipe, unpack=False).store_entries()}
    except PermissionError as e:
        raise layers.store.refused(e) from None
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
        layers.store.add_root(os.path.abspath(path))
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


def check(recipe: Recipe, layers: Resolver) -> None:
    """--locked: every input is what the lock file recorded, else one error naming each drift."""
    doc = read(recipe)
    locked: dict[str, dict] = doc["layers"]
    drifts = []
    if doc.get("recipe_sha256") != recipe.sha256:
        drifts.append("the recipe itself changed since it was locked")
    now = layer_digests(recipe, layers)
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
