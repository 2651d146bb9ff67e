"""Cached plans: a warm `nsbuild build` runs the plan it made last time, without reading TOML,
validating the recipe or planning (and without importing tomllib, dataclasses or the planner).

    <state>/.plans/<recipe path, "/" as %2F>   marshal: key, host inputs, plan, metadata

A cached plan is used only while everything it was made from is the same: the recipe file
(device, inode, size, mtime, ctime), the command line (strategy, --name, --check), the working
directory, $HOME, $NSBUILD_STORE (store paths are in the plan), the user, the kernel release, whether a template namespace is pinned, the
nsbuild code, and the kind and identity of every host path the recipe names (layers, bind
sources, also optional ones that were missing, the upper; for files also size, mtime and ctime,
so an archive or image that changed is seen; for OCI layouts their index.json too), and for registry
layers named by tag the manifest digest the tag resolved to (one HEAD request, tagcheck.py). Binaries
layers are not cached: their closure can change with any library on the host.
"""
from __future__ import annotations

import marshal
import os
import stat

from builder.plan.steps import Plan

VERSION = 4  # bump whenever the planner emits other steps: an older cached plan is not reused (2: binds made
# private; 3: blocks of steps instead of fork and again, and the persist segment; 4: idmapped binds)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from builder.recipe.model import Recipe
    from builder.sandbox.state import StateDir


def _entry(state: StateDir, recipe_path: str) -> str:
    """One file per recipe path, named by the path itself (hashlib would cost ~6 ms to import)."""
    name = recipe_path.replace("%", "%25").replace("/", "%2F")
    if len(name) > 200:
        import hashlib

        name = hashlib.sha256(recipe_path.encode()).hexdigest()
    return os.path.join(state.path, ".plans", name)


def _identity(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode):  # content: ctime changes with every write, and cannot be set back
        return (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return (st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid)  # the owner: idmap = true maps it


def key(state: StateDir, recipe_path: str, options: tuple) -> tuple:
    st = os.stat(recipe_path)
    # the planner's code: a reinstall changes it
    code = os.stat(os.path.join(os.path.dirname(os.path.dirname(__file__)), "plan", "planner.py"))
    return (VERSION, recipe_path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, options,
            os.getcwd(), os.environ.get("HOME", ""), os.environ.get("NSBUILD_STORE", ""),
            os.environ.get("CONTAINERS_REGISTRIES_CONF", ""), os.geteuid(),
            os.uname().release, state.template(),
            code.st_mtime_ns, code.st_size)


def lookup(state: StateDir, recipe_path: str, k: tuple) -> tuple[Plan, dict, str] | None:
    """The cached plan and metadata for a build with key `k` (see key()), and the content store its
    plan uses ("" for none: the build holds its gc lock, Session.hold); or None."""
    try:
        with open(_entry(state, recipe_path), "rb") as f:
            data = marshal.load(f)
        if data["key"] != k:
            return None
        if any(_identity(path) != ident for path, ident in data["inputs"]):
            return None
        if data.get("tags"):
            from builder.images import tagcheck

            if any(tagcheck.digest(url, verify) != digest for url, digest, verify in data["tags"]):
                return None  # a tag moved (or cannot be checked): plan anew, which pulls
        return Plan.load(data["plan"]), data["meta"], data["store"] if data["meta"].get("store") else ""
    except (OSError, EOFError, ValueError, TypeError, KeyError):
        return None


def cacheable(recipe: Recipe) -> bool:
    from builder.layers import kinds

    return all(kinds.of(layer).cacheable(layer) for layer in recipe.layers)


def _moving(recipe: Recipe) -> list[tuple[str, str, bool]] | None:
    """What a warm build checks again, e.g. (manifest URL, digest, verify TLS) of a registry layer named by tag
    (tagcheck.py); None if one cannot be checked (then nothing is cached)."""
    from builder.layers import kinds

    out: list[tuple[str, str]] = []
    for layer in recipe.layers:
        found = kinds.of(layer).moving(layer)
        if found is None:
            return None
        out += found
    return out


def _inputs(recipe: Recipe) -> list[str]:
    from builder.layers import kinds

    return list(recipe.inputs) + [path for layer in recipe.layers for path in kinds.of(layer).inputs(layer)]


def save(state: StateDir, recipe: Recipe, recipe_path: str, options: tuple, k: tuple, plan: Plan,
         meta: dict, store: str = "") -> None:
    """Remember a plan that built successfully (best effort: a cache). `k` is the key from before
    the build: if the build changed it (a first build pins the template), the next build plans anew.
    `store`: the content store the plan's entries are in."""
    tags = _moving(recipe)
    if k != key(state, recipe_path, options) or tags is None:
        return
    path = _entry(state, recipe_path)
    data = {"key": k, "inputs": [(p, _identity(p)) for p in _inputs(recipe)], "plan": plan.dump(), "meta": meta,
            "store": store, "tags": tags}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(tmp, "wb") as f:
            marshal.dump(data, f)
        os.rename(tmp, path)
    except (OSError, ValueError):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def drop(state: StateDir, recipe_path: str) -> None:
    try:
        os.unlink(_entry(state, recipe_path))
    except OSError:
        pass
