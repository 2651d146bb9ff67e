"""Build a sandbox: recipe -> plan -> namespace fd -> persisted state."""
from __future__ import annotations

import itertools
import os
import time

from builder.plan import executor
from builder.layers import gclock
from builder.errors import NsbuildError
from builder.sandbox.state import StateDir
from builder.plan.steps import Plan

TYPE_CHECKING = False  # a warm build (a cached plan) imports neither the planner nor typing
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator, TypeVar

    from builder.kernel import features as feat
    from builder.recipe.model import Recipe
    from builder.layers.store import Store

    T = TypeVar("T")


class Built:
    __slots__ = ("name", "nsfs", "strategy", "seconds", "plan", "meta")

    def __init__(self, name: str, nsfs: str, strategy: str, seconds: float, plan: Plan,
                 meta: dict[str, Any]) -> None:
        self.name, self.nsfs, self.strategy, self.seconds = name, nsfs, strategy, seconds
        self.plan, self.meta = plan, meta  # what plancache keeps


def features_for(recipe: Recipe) -> feat.Features:
    from builder.kernel import features as feat

    f = feat.probe(erofs=any(layer.kind == "image" and layer.fstype == "erofs" for layer in recipe.layers))
    if not f.userns and os.geteuid() != 0:  # `plan` for a user: the build runs in the holder's user namespace
        import dataclasses

        from builder.sandbox.userns import mapping

        f = dataclasses.replace(f, userns=mapping())
    return f


def resolve_layers(recipe: Recipe, unpack: bool = True, store: Store | None = None) -> Recipe:
    """Archive, OCI and binaries layers as content-store directories; pins checked. unpack=False
    (for `nsbuild plan`) writes nothing. From here until a build persists, this process holds the
    store's gc lock (gclock.py); a caller that does not persist calls gclock.release() when it is
    done with the sandbox. `store`: one that already knows some digests or closures."""
    if all(layer.kind == "dir" or (layer.kind == "image" and not layer.sha256) for layer in recipe.layers):
        return recipe  # the content store (tarfile, hashlib & co.) only when needed
    from builder.layers.store import Store, store_dir

    try:
        return (store or Store(store_dir())).resolve(recipe, unpack)
    except PermissionError as e:
        raise store_error(e) from None


def store_error(e: OSError) -> NsbuildError:
    """The content store is root's (or read-only): say so, not a traceback."""
    from builder.layers.store import store_dir

    return NsbuildError(f"cannot use the content store {store_dir()}: {e.strerror} ({e.filename})",
                        "archive, OCI and binaries layers are unpacked there: run nsbuild as root (sudo), "
                        "or set NSBUILD_STORE to a directory of your own")


def _register_with_store(meta: dict[str, Any], state: StateDir) -> None:
    """Make the state dir a gc root, so that `nsbuild gc` reads the metadata there and keeps the
    entries it lists. Called once the namespace is built (a failed build registers nothing) and
    before it is persisted (a killed build never leaves a sandbox that gc does not see), with the
    gc lock held. A warm build needs none: the build that cached its plan registered."""
    if meta["store"]:
        from builder.layers.store import Store, store_dir

        try:
            Store(store_dir()).add_root(state.path)
        except OSError as e:
            raise NsbuildError(f"cannot register {state.path} as a gc root in {store_dir()}: {e.strerror}",
                               "check that the content store is writable") from None


def plan_for(recipe: Recipe, strategy: str = "auto", features: feat.Features | None = None,
             state: StateDir | None = None) -> Plan:
    """The plan a build runs: with the state dir's template namespace where there is one."""
    from builder.kernel import features as feat
    from builder.plan.planner import make_plan

    features = features or features_for(recipe)
    if features.userns:
        from builder.sandbox.userns import refuse_unbuildable

        refuse_unbuildable(recipe)
    return make_plan(recipe, features, feat.pick_strategy(features, strategy), state.template() if state else None)


def retrying_on_each_cpu(make: Callable[[], int], persist: Callable[[int], T]) -> T:
    """Make a namespace and persist it. Namespace ids come from per-CPU ranges (KERNEL-NOTES.md):
    if the kernel refuses to pin one with a lower id than ours, make it again on each CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    attempts: list[int | None] = [None] + (cpus if len(cpus) > 1 else [])
    try:
        for cpu in attempts:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            nsfd = make()
            try:
                return persist(nsfd)
            except NsbuildError as e:
                if not getattr(e, "retry", False) or cpu == attempts[-1]:
                    raise
            finally:
                os.close(nsfd)
    finally:
        os.sched_setaffinity(0, cpus)
    raise AssertionError("not reached")


def ensure_template(state: StateDir, features: feat.Features) -> str:
    """Pin the unshare strategy's template namespace in `state` (see plan.unshare_into_root)."""
    from builder.plan.planner import make_template_plan

    return state.template() or retrying_on_each_cpu(lambda: executor.execute(make_template_plan(features)),
                                                     state.pin_template)


def metadata(recipe: Recipe, plan: Plan) -> dict[str, Any]:
    """What `run`, `ls` and `rm` need later, without parsing the recipe again."""
    return {
        "recipe": recipe.file, "recipe_sha256": recipe.sha256, "strategy": plan.strategy,
        "kernel": plan.kernel, "upper": recipe.root.upper, "description": recipe.description,
        "run": run_metadata(recipe),
        "store": _store_entries(recipe),
    }


def run_metadata(recipe: Recipe) -> dict[str, Any]:
    """[run] as `nsbuild run` reads it back (NAME.run): plain lists, dicts and strings."""
    r = recipe.run
    return {"command": list(r.command), "cwd": r.cwd, "env": dict(r.env), "contained": r.contained,
            "user": r.user, "hostname": r.hostname, "network": r.network, "capabilities": list(r.capabilities)}


def _store_entries(recipe: Recipe) -> list[str]:
    if not any("/sha256/" in layer.path for layer in recipe.layers):
        return []
    from builder.layers.store import Store, store_dir

    return Store(store_dir()).entries(recipe)


def preflight(recipe: Recipe, features: feat.Features, state: StateDir, name: str) -> str | None:
    """Check that [run]'s command starts in the tree, unless this sandbox passed with the same inputs.
    Returns the key to remember. Not checked (None): a recipe without a [run] command (a rootfs for
    other uses: `nsbuild check` still checks the default /bin/sh), and image layers, which the check
    would have to mount (`nsbuild check` does)."""
    from builder.check import preflight as pf
    from builder.errors import RecipeError

    if not recipe.run.given or any(layer.kind == "image" for layer in recipe.layers):
        return None
    key = pf.key(recipe)
    try:
        old = state.read(name) if os.path.isdir(state.path) else None
    except NsbuildError:
        old = None
    if old and old.get("checked") == key:
        return key
    found = pf.problems(recipe, features)
    if found:
        error = RecipeError(recipe.file, found)
        error.hint = "fix the recipe, or build anyway with --no-check"
        raise error
    return key


def _planned(recipe: Recipe, state: StateDir, strategy: str, check: bool,
             name: str) -> tuple[feat.Features, Plan, dict[str, Any]]:
    """Features, plan and metadata for a build; the pre-flight check done (as sandbox `name`)."""
    features = features_for(recipe)
    plan = plan_for(recipe, strategy, features, state)
    checked = preflight(recipe, features, state, name) if check else None
    return features, plan, dict(metadata(recipe, plan), checked=checked)


def build(recipe: Recipe, state: StateDir, strategy: str = "auto", replace: bool = False,
          name: str | None = None, check: bool = True) -> Built:
    start = time.perf_counter()
    try:
        features, plan, meta = _planned(recipe, state, strategy, check, name or recipe.name)
        path = execute_and_persist(plan, meta, state, name or recipe.name, replace, register=True)
    finally:
        gclock.release()  # persisted and registered, the sandbox's metadata keeps its entries from gc
    _pin_template(plan, state, features)
    return Built(name or recipe.name, path, plan.strategy, time.perf_counter() - start, plan, meta)


def execute_and_persist(plan: Plan, meta: dict[str, Any], state: StateDir, name: str, replace: bool,
                        register: bool) -> str:
    def persist(nsfd: int) -> str:
        state.prepare()  # only after a successful build: a failed one changes nothing
        if register:
            _register_with_store(meta, state)
        return state.persist(name, nsfd, meta, replace)

    return retrying_on_each_cpu(lambda: executor.execute(plan), persist)


def build_cached(plan: Plan, meta: dict[str, Any], state: StateDir, name: str | None, replace: bool) -> Built:
    """A warm build: the plan and metadata of the last build of the same inputs (plancache.py)."""
    start = time.perf_counter()
    try:
        path = execute_and_persist(plan, meta, state, name or plan.name, replace, register=False)
    finally:
        gclock.release()
    return Built(name or plan.name, path, plan.strategy, time.perf_counter() - start, plan, meta)


def build_many(recipe: Recipe, state: StateDir, count: int, strategy: str = "auto", replace: bool = False,
               name: str | None = None, check: bool = True) -> list[Built]:
    """`count` sandboxes NAME-0 ... NAME-<count-1> from one plan, made by one worker
    (executor.execute_many) and persisted under one lock. All or nothing: if one fails, the
    sandboxes this batch made are removed again."""
    try:
        return _build_many(recipe, state, count, strategy, replace, name or recipe.name, check)
    finally:
        gclock.release()  # persisted and registered, the sandboxes' metadata keeps their entries from gc


def _build_many(recipe: Recipe, state: StateDir, count: int, strategy: str, replace: bool, base: str,
                check: bool) -> list[Built]:
    start = time.perf_counter()
    features, plan, meta = _planned(recipe, state, strategy, check, f"{base}-0")
    names = [f"{base}-{i}" for i in range(count)]
    made: list[str] = []
    nsfds = executor.execute_many(plan, count)

    def items() -> Iterator[tuple[str, int]]:
        for n, nsfd in zip(names, nsfds):
            try:
                yield n, nsfd
                made.append(n)
            finally:
                os.close(nsfd)

    pairs = items()
    try:
        first = next(pairs)  # as for one build: a batch that fails at once changes nothing, not even the state dir
        state.prepare()
        _register_with_store(meta, state)
        paths = state.persist_many(itertools.chain([first], pairs), meta, replace)
    except BaseException:
        pairs.close()  # closes the fd in hand
        nsfds.close()  # ends the workers, drops what they sent and nobody took
        for n in made:
            state.remove(n)
        raise
    seconds = time.perf_counter() - start
    _pin_template(plan, state, features)
    return [Built(n, p, plan.strategy, seconds, plan, meta) for n, p in zip(names, paths)]


def _pin_template(plan: Plan, state: StateDir, features: feat.Features) -> None:
    """After the first unshare build in a state dir: pin the template that later builds unshare
    from (best effort: builds work without it, they only copy more)."""
    if plan.strategy == "unshare" and not any(step.out == "%template" for step in plan.steps):
        try:
            ensure_template(state, features)
        except (NsbuildError, OSError):
            pass


def default_recipe() -> str:
    """The embedded default recipe (recipes/dev.toml, packaged as builder.recipes)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # builder/
    packaged = os.path.join(package, "recipes", "dev.toml")
    if os.path.isfile(packaged):
        return packaged
    return os.path.join(os.path.dirname(package), "recipes", "dev.toml")  # a source tree


def need_root(action: str = "building a sandbox") -> None:
    """Root, or root of the holder's user namespace (a rootless command has joined it by now)."""
    if os.geteuid() != 0:
        raise NsbuildError(f"{action} needs root (CAP_SYS_ADMIN), here or in a user namespace",
                           "run it with sudo; `nsbuild plan` works without root")


def build_command(recipe: str | None, strategy: str, replace: bool, name: str | None,
                  state_dir: str | None, as_json: bool, locked: bool = False, quiet: bool = False,
                  check: bool = True, count: int | None = None) -> None:
    """`nsbuild build`, shared by the typer CLI and the lean entry point (builder.cli.entry)."""
    from builder.sandbox import plancache
    from builder.sandbox.state import state_dir as resolve

    path = os.path.abspath(recipe or default_recipe())
    state = StateDir(resolve(state_dir))
    from builder.sandbox import holder

    holder.join(state.path, start=True, fork=True)  # rootless: in the holder's namespaces from here on
    if count is not None:
        return _batch_command(path, state, strategy, replace, name, locked, quiet, check, count, as_json)
    options = (strategy, name, check)
    b = None
    try:
        k: tuple | None = plancache.key(state, path, options)  # before the build: it may pin a template
    except OSError:
        k = None  # no recipe file: the slow path says so properly
    if not locked and k:  # --locked reads every input: never from the cache
        cached = plancache.lookup(state, path, k)
        if cached:
            need_root()
            try:
                b = build_cached(cached[0], cached[1], state, name, replace)
            except NsbuildError as e:
                if getattr(e, "step", None) is None:
                    raise  # not the plan's fault (e.g. the name exists): the same without the cache
                plancache.drop(state, path)  # a host path changed under the plan: plan again
    if b is None:
        b = _build_from_recipe(path, state, strategy, replace, name, locked, quiet, check, options, k)
    if quiet and not as_json:
        return
    if as_json:
        import json

        print(json.dumps({"name": b.name, "nsfs": b.nsfs, "strategy": b.strategy, "seconds": round(b.seconds, 6)}))
        return
    print(f"built {b.name} in {b.seconds * 1000:.1f} ms (strategy {b.strategy})")
    print(f"  namespace: {b.nsfs}")
    from builder.sandbox.paths import initial_userns

    nsenter = f"nsenter --mount={b.nsfs} CMD"
    if not initial_userns():  # rootless: the pin is in the holder's namespaces
        pid = os.path.join(state.path, ".holder.pid")
        nsenter = f'nsenter -t "$(cat {pid})" -U --preserve-credentials -m -p {nsenter}'
    print(f"  enter:     nsbuild run {b.name} [-- CMD]   or   {nsenter}")


def _batch_command(path: str, state: StateDir, strategy: str, replace: bool, name: str | None, locked: bool,
                   quiet: bool, check: bool, count: int, as_json: bool) -> None:
    from builder.errors import UsageError

    if not 1 <= count <= 100000:
        raise UsageError(f"--count {count} is out of range", "give 1 to 100000")
    r, store = _load_checked(path, name, locked, quiet)
    built = build_many(resolve_layers(r, store=store), state, count, strategy, replace, name, check)
    seconds = built[0].seconds
    if as_json:
        import json

        print(json.dumps({"names": [b.name for b in built], "nsfs": [b.nsfs for b in built],
                          "strategy": built[0].strategy, "seconds": round(seconds, 6)}))
    elif not quiet:
        print(f"built {count} sandboxes {built[0].name} ... {built[-1].name} in {seconds * 1000:.1f} ms "
              f"({count / seconds:.0f}/s, strategy {built[0].strategy})")


def _load_checked(path: str, name: str | None, locked: bool, quiet: bool) -> tuple[Recipe, Store | None]:
    """The recipe, with --name, root and --locked checked; and the Store the lock check used, whose
    digests and closures the build then reuses (a binaries layer's closure costs ~0.3 s)."""
    from builder.recipe.load import load
    from builder.recipe.model import NAME_RE
    from builder.errors import UsageError

    if quiet:
        from builder import progress

        progress.QUIET = True
    r = load(path)
    if name is not None and not NAME_RE.match(name):
        raise UsageError(f"--name '{name}' is not a valid name",
                         "use lower-case letters, digits, '.', '_', '-', starting with a letter or digit")
    need_root()
    if not locked:
        return r, None
    from builder.layers import lock
    from builder.layers.store import Store, store_dir

    store = Store(store_dir())
    lock.check(r, store)
    return r, store


def _build_from_recipe(path: str, state: StateDir, strategy: str, replace: bool, name: str | None,
                       locked: bool, quiet: bool, check: bool, options: tuple, k: tuple | None) -> Built:
    """The slow path: recipe, layers, plan; the plan is cached under `k`, the key from before the build."""
    from builder.sandbox import plancache

    r, store = _load_checked(path, name, locked, quiet)  # the recipe file exists now, so `k` was made
    built = build(resolve_layers(r, store=store), state, strategy, replace, name, check)
    if k and plancache.cacheable(r):
        plancache.save(state, r, path, options, k, built.plan, built.meta)
    return built
