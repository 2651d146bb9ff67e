"""Build a sandbox: recipe -> plan -> namespace fd -> persisted state."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from builder import executor, features as feat
from builder.errors import NsbuildError
from builder.plan import Plan, make_plan, make_template_plan
from builder.recipe import Recipe
from builder.state import StateDir


@dataclass(frozen=True)
class Built:
    name: str
    nsfs: str
    strategy: str
    seconds: float


def features_for(recipe: Recipe) -> feat.Features:
    return feat.probe(erofs=any(layer.kind == "image" and layer.fstype == "erofs" for layer in recipe.layers))


def resolve_layers(recipe: Recipe, unpack: bool = True, state: StateDir | None = None) -> Recipe:
    """Archive, OCI and binaries layers as content-store directories; pins checked. unpack=False
    (for `nsbuild plan`) writes nothing. `state`: the state dir the build persists into, which
    `nsbuild gc` then reads to keep the entries its sandboxes use."""
    if all(layer.kind == "dir" for layer in recipe.layers):
        return recipe  # the content store (tarfile, hashlib & co.) only when needed
    from builder.store import Store, store_dir

    store = Store(store_dir())
    resolved = store.resolve(recipe, unpack)
    if state is not None and store.entries(resolved):
        store.add_root(state.path)
    return resolved


def plan_for(recipe: Recipe, strategy: str = "auto", features: feat.Features | None = None,
             state: StateDir | None = None) -> Plan:
    """The plan a build runs: with the state dir's template namespace where there is one."""
    features = features or features_for(recipe)
    return make_plan(recipe, features, feat.pick_strategy(features, strategy), state.template() if state else None)


T = TypeVar("T")


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
    return state.template() or retrying_on_each_cpu(lambda: executor.execute(make_template_plan(features)),
                                                     state.pin_template)


def metadata(recipe: Recipe, plan: Plan) -> dict[str, Any]:
    """What `run`, `ls` and `rm` need later, without parsing the recipe again."""
    return {
        "recipe": recipe.file, "recipe_sha256": recipe.sha256, "strategy": plan.strategy,
        "kernel": plan.kernel, "upper": recipe.root.upper, "description": recipe.description,
        "run": {"command": list(recipe.run.command), "cwd": recipe.run.cwd, "env": dict(recipe.run.env)},
        "store": _store_entries(recipe),
    }


def _store_entries(recipe: Recipe) -> list[str]:
    if not any("/sha256/" in layer.path for layer in recipe.layers):
        return []
    from builder.store import Store, store_dir

    return Store(store_dir()).entries(recipe)


def preflight(recipe: Recipe, features: feat.Features, state: StateDir, name: str) -> str | None:
    """Check that [run]'s command starts in the tree, unless this sandbox passed with the same inputs.
    Returns the key to remember. Not checked (None): a recipe without a [run] command (a rootfs for
    other uses: `nsbuild check` still checks the default /bin/sh), and image layers, which the check
    would have to mount (`nsbuild check` does)."""
    from builder import preflight as pf
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


def build(recipe: Recipe, state: StateDir, strategy: str = "auto", replace: bool = False,
          name: str | None = None, check: bool = True) -> Built:
    start = time.perf_counter()
    features = features_for(recipe)
    plan = plan_for(recipe, strategy, features, state)
    checked = preflight(recipe, features, state, name or recipe.name) if check else None

    def persist(nsfd: int) -> str:
        state.prepare()  # only after a successful build: a failed one changes nothing
        meta = dict(metadata(recipe, plan), checked=checked)
        return state.persist(name or recipe.name, nsfd, meta, replace)

    path = retrying_on_each_cpu(lambda: executor.execute(plan), persist)
    if plan.strategy == "unshare" and not any(step.out == "%template" for step in plan.steps):
        # first build here: pin the template that later builds unshare from (best effort: builds
        # work without it, they only copy more)
        try:
            ensure_template(state, features)
        except (NsbuildError, OSError):
            pass
    return Built(name or recipe.name, path, plan.strategy, time.perf_counter() - start)


def default_recipe() -> str:
    """The embedded default recipe (recipes/dev.toml, packaged as builder.recipes)."""
    packaged = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes", "dev.toml")
    if os.path.isfile(packaged):
        return packaged
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "dev.toml")


def need_root() -> None:
    if os.geteuid() != 0:
        raise NsbuildError("building a sandbox needs root (CAP_SYS_ADMIN)",
                           "run it with sudo; `nsbuild plan` works without root")


def build_command(recipe: str | None, strategy: str, replace: bool, name: str | None,
                  state_dir: str | None, as_json: bool, locked: bool = False, quiet: bool = False,
                  check: bool = True) -> None:
    """`nsbuild build`, shared by the typer CLI and the lean entry point (builder.entry)."""
    from builder import recipe as rcp
    from builder.errors import UsageError
    from builder.state import state_dir as resolve

    if quiet:
        from builder import progress

        progress.QUIET = True
    r = rcp.load(recipe or default_recipe())
    if name is not None and not rcp.NAME_RE.match(name):
        raise UsageError(f"--name '{name}' is not a valid name",
                         "use lower-case letters, digits, '.', '_', '-', starting with a letter or digit")
    need_root()
    state = StateDir(resolve(state_dir))
    if locked:
        from builder import lock

        lock.check(r)
    b = build(resolve_layers(r, state=state), state, strategy, replace, name, check)
    if as_json:
        import json

        print(json.dumps({"name": b.name, "nsfs": b.nsfs, "strategy": b.strategy, "seconds": round(b.seconds, 6)}))
        return
    if quiet:
        return
    print(f"built {b.name} in {b.seconds * 1000:.1f} ms (strategy {b.strategy})")
    print(f"  namespace: {b.nsfs}")
    print(f"  enter:     nsbuild run {b.name} [-- CMD]   or   nsenter --mount={b.nsfs} CMD")
