"""The command line's side of building: usage and root checks, the cached-plan fast path, printing.
Orchestration is sandbox/build.py's; the session (sandbox/session.py) owns the store and the gc hold.

A build, top-down: build_command -> plancache.lookup (a warm build: build.build_cached) or
_build_from_recipe -> recipe.load.load -> Session.resolve (layers/resolve.py, the kinds) ->
build.build -> planner.make_plan -> executor.execute -> StateDir.persist.
"""
from __future__ import annotations

import os

from builder.errors import BuildError, NsbuildError, PersistError
from builder.sandbox.build import Built, build, build_cached, build_many
from builder.sandbox.session import Session
from builder.sandbox.state import StateDir

TYPE_CHECKING = False  # a warm build imports neither typing nor the recipe's modules
if TYPE_CHECKING:
    from builder.recipe.model import Recipe


def build_command(recipe: str | None, strategy: str, replace: bool, name: str | None,
                  state_dir: str | None, as_json: bool, locked: bool = False, quiet: bool = False,
                  check: bool = True, count: int | None = None) -> None:
    """`nsbuild build`, shared by the typer CLI and the lean entry point (builder.cli.entry): a cached
    plan if the inputs did not change (plancache.py), else recipe -> layers -> plan -> build."""
    from builder.sandbox import plancache
    from builder.sandbox.state import state_dir as resolve

    path = os.path.abspath(recipe or default_recipe())
    session = Session(StateDir(resolve(state_dir)))
    from builder.sandbox import holder

    holder.join(session.state.path, start=True, fork=True)  # rootless: in the holder's namespaces from here on
    if count is not None:
        return _batch_command(path, session, strategy, replace, name, locked, quiet, check, count, as_json)
    options = (strategy, name, check)
    b = None
    try:
        k: tuple | None = plancache.key(session.state, path, options)  # before the build: it may pin a template
    except OSError:
        k = None  # no recipe file: the slow path says so properly
    if not locked and k:  # --locked reads every input: never from the cache
        cached = plancache.lookup(session.state, path, k)
        if cached:
            need_root()
            plan, meta, store = cached
            if store:
                session.hold(store)
            try:
                b = build_cached(plan, meta, session, name, replace)
            except NsbuildError as e:
                if not isinstance(e, BuildError) or e.step is None or isinstance(e, PersistError):
                    raise  # not the plan's fault (e.g. the name exists): the same without the cache
                plancache.drop(session.state, path)  # a host path changed under the plan: plan again
    if b is None:
        b = _build_from_recipe(path, session, strategy, replace, name, locked, quiet, check, options, k)
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
        pid = os.path.join(session.state.path, ".holder.pid")
        nsenter = f'nsenter -t "$(cat {pid})" -U --preserve-credentials -m -p {nsenter}'
    print(f"  enter:     nsbuild run {b.name} [-- CMD]   or   {nsenter}")


def _build_from_recipe(path: str, session: Session, strategy: str, replace: bool, name: str | None,
                       locked: bool, quiet: bool, check: bool, options: tuple, k: tuple | None) -> Built:
    """The slow path: recipe, layers, plan; the plan is cached under `k`, the key from before the build."""
    from builder.sandbox import plancache

    r = _load_checked(path, session, name, locked, quiet)  # the recipe file exists now, so `k` was made
    built = build(session.resolve(r), session.state, strategy, replace, name, check, session)
    if k and plancache.cacheable(r):
        store = session.store.path if built.meta["store"] else ""
        plancache.save(session.state, r, path, options, k, built.plan, built.meta, store)
    return built


def _load_checked(path: str, session: Session, name: str | None, locked: bool, quiet: bool) -> Recipe:
    """The recipe, with --name, root and --locked checked (the session's resolver keeps the digests and
    closures the lock check found, for the build: a binaries layer's closure costs ~0.3 s)."""
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
    if locked:
        from builder.layers import lock

        lock.check(r, session.layers)
    return r


def _batch_command(path: str, session: Session, strategy: str, replace: bool, name: str | None, locked: bool,
                   quiet: bool, check: bool, count: int, as_json: bool) -> None:
    from builder.errors import UsageError

    if not 1 <= count <= 100000:
        raise UsageError(f"--count {count} is out of range", "give 1 to 100000")
    r = _load_checked(path, session, name, locked, quiet)
    built = build_many(session.resolve(r), session.state, count, strategy, replace, name, check, session)
    seconds = built[0].seconds
    if as_json:
        import json

        print(json.dumps({"names": [b.name for b in built], "nsfs": [b.nsfs for b in built],
                          "strategy": built[0].strategy, "seconds": round(seconds, 6)}))
    elif not quiet:
        print(f"built {count} sandboxes {built[0].name} ... {built[-1].name} in {seconds * 1000:.1f} ms "
              f"({count / seconds:.0f}/s, strategy {built[0].strategy})")


def need_root(action: str = "building a sandbox") -> None:
    """Root, or root of the holder's user namespace (a rootless command has joined it by now)."""
    if os.geteuid() != 0:
        raise NsbuildError(f"{action} needs root (CAP_SYS_ADMIN), here or in a user namespace",
                           "run it with sudo; `nsbuild plan` works without root")


def default_recipe() -> str:
    """The embedded default recipe (recipes/dev.toml, packaged as builder.recipes)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # builder/ (this is builder/cli/)
    packaged = os.path.join(package, "recipes", "dev.toml")
    if os.path.isfile(packaged):
        return packaged
    return os.path.join(os.path.dirname(package), "recipes", "dev.toml")  # a source tree
