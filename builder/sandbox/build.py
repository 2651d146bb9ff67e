"""Build a sandbox: resolved recipe -> plan -> namespace fd -> persisted state (the command line's
side is cli/commands.py; the store, features and gc hold are the session's, session.py)."""
from __future__ import annotations

import itertools
import os
import time

from builder.plan import executor
from builder.errors import NsbuildError, PersistError
from builder.sandbox.session import Session
from builder.sandbox.state import StateDir
from builder.plan.steps import Plan

TYPE_CHECKING = False  # a warm build (a cached plan) imports neither the planner nor typing
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator, TypeVar

    from builder.kernel import features as feat
    from builder.layers.resolved import Resolved
    from builder.recipe.model import Recipe

    T = TypeVar("T")


class Built:
    __slots__ = ("name", "nsfs", "strategy", "seconds", "plan", "meta")

    def __init__(self, name: str, nsfs: str, strategy: str, seconds: float, plan: Plan,
                 meta: dict[str, Any]) -> None:
        self.name, self.nsfs, self.strategy, self.seconds = name, nsfs, strategy, seconds
        self.plan, self.meta = plan, meta  # what plancache keeps


def build(recipe: Resolved, state: StateDir, strategy: str = "auto", replace: bool = False,
          name: str | None = None, check: bool = True, session: Session | None = None) -> Built:
    """One sandbox: plan and pre-flight (_planned), execute and persist; then the session's gc hold
    is dropped (the sandbox's metadata keeps its store entries) and an unshare template pinned."""
    start = time.perf_counter()
    session = session or Session(state)
    try:
        features, plan, meta = _planned(recipe, session, strategy, check, name or recipe.name)
        path = execute_and_persist(plan, meta, session, name or recipe.name, replace, register=True)
    finally:
        session.release()
    _pin_template(plan, state, features)
    return Built(name or recipe.name, path, plan.strategy, time.perf_counter() - start, plan, meta)


def build_many(recipe: Resolved, state: StateDir, count: int, strategy: str = "auto", replace: bool = False,
               name: str | None = None, check: bool = True, session: Session | None = None) -> list[Built]:
    """`count` sandboxes NAME-0 ... NAME-<count-1> from one plan, made by one worker
    (batch.execute_many) and persisted under one lock. All or nothing: if one fails, the
    sandboxes this batch made are removed again."""
    session = session or Session(state)
    try:
        return _build_many(recipe, session, count, strategy, replace, name or recipe.name, check)
    finally:
        session.release()


def build_cached(plan: Plan, meta: dict[str, Any], session: Session, name: str | None, replace: bool) -> Built:
    """A warm build: the plan and metadata of the last build of the same inputs (plancache.py), with
    the gc lock of the store its plan names held (Session.hold)."""
    start = time.perf_counter()
    try:
        path = execute_and_persist(plan, meta, session, name or plan.name, replace, register=False)
    finally:
        session.release()
    return Built(name or plan.name, path, plan.strategy, time.perf_counter() - start, plan, meta)


def _planned(recipe: Resolved, session: Session, strategy: str, check: bool,
             name: str) -> tuple[feat.Features, Plan, dict[str, Any]]:
    """Features, plan and metadata for a build; the pre-flight check done (as sandbox `name`)."""
    features = session.features(recipe)
    plan = plan_for(recipe, strategy, features, session.state, session, name)
    from builder.check import preflight

    checked = preflight.before_build(recipe, features, session.state, name) if check else None
    return features, plan, dict(metadata(recipe, plan), checked=checked)


def plan_for(recipe: Recipe | Resolved, strategy: str = "auto", features: feat.Features | None = None,
             state: StateDir | None = None, session: Session | None = None, name: str | None = None) -> Plan:
    """The plan a build runs: with the state dir's template namespace where there is one, and (with
    `name`) ending with the segment that persists sandbox `name` in `state`. A recipe not yet
    resolved is resolved first (see Session.resolve)."""
    from builder.kernel import features as feat
    from builder.layers.resolved import Resolved
    from builder.plan.planner import make_plan

    session = session or Session(state)
    resolved = recipe if isinstance(recipe, Resolved) else session.resolve(recipe)
    features = features or session.features(resolved)
    if features.userns:
        from builder.sandbox.rootless import refuse_unbuildable

        refuse_unbuildable(resolved)
    pin = state.pin_for(name) if state and name else None
    return make_plan(resolved, features, feat.pick_strategy(features, strategy), state.template() if state else None,
                     pin)


def metadata(recipe: Resolved, plan: Plan) -> dict[str, Any]:
    """What `run`, `ls` and `rm` need later, without parsing the recipe again."""
    return {
        "recipe": recipe.file, "recipe_sha256": recipe.sha256, "strategy": plan.strategy,
        "kernel": plan.kernel, "upper": recipe.root.upper, "description": recipe.description,
        "run": run_metadata(recipe),
        "store": recipe.store_entries(),
    }


def run_metadata(recipe: Recipe | Resolved) -> dict[str, Any]:
    """[run] as `nsbuild run` reads it back (NAME.run): plain lists, dicts and strings."""
    r = recipe.run
    return {"command": list(r.command), "cwd": r.cwd, "env": dict(r.env), "contained": r.contained,
            "user": r.user, "hostname": r.hostname, "network": r.network, "capabilities": list(r.capabilities)}


def execute_and_persist(plan: Plan, meta: dict[str, Any], session: Session, name: str, replace: bool,
                        register: bool) -> str:
    kept: dict[str, int] = {}  # fds the persist segment pins besides the namespace (a tmpfs upper)

    def make() -> int:
        nsfd, more = executor.execute_for_persist(plan)
        _close(kept)  # a retry's: the round before made its own
        kept.update(more)
        return nsfd

    def persist(nsfd: int) -> str:
        session.state.prepare()  # only after a successful build: a failed one changes nothing
        if register:
            session.register(meta)
        return session.state.persist(name, nsfd, meta, replace, plan, kept)

    try:
        return retrying_on_each_cpu(make, persist)
    finally:
        _close(kept)


def _close(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def _build_many(recipe: Resolved, session: Session, count: int, strategy: str, replace: bool, base: str,
                check: bool) -> list[Built]:
    start = time.perf_counter()
    state = session.state
    features, plan, meta = _planned(recipe, session, strategy, check, f"{base}-0")
    names = [f"{base}-{i}" for i in range(count)]
    made: list[str] = []
    from builder.plan import batch

    nsfds = batch.execute_many(plan, count)

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
        session.register(meta)
        paths = state.persist_many(itertools.chain([first], pairs), meta, replace, plan)
    except BaseException:
        pairs.close()  # closes the fd in hand
        nsfds.close()  # ends the workers, drops what they sent and nobody took
        for n in made:
            state.remove(n)
        raise
    seconds = time.perf_counter() - start
    _pin_template(plan, state, features)
    return [Built(n, p, plan.strategy, seconds, plan, meta) for n, p in zip(names, paths)]


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
            except PersistError as e:
                if not e.retry or cpu == attempts[-1]:
                    raise
            finally:
                os.close(nsfd)
    finally:
        os.sched_setaffinity(0, cpus)
    raise AssertionError("not reached")


def _pin_template(plan: Plan, state: StateDir, features: feat.Features) -> None:
    """After the first unshare build in a state dir: pin the template that later builds unshare
    from (best effort: builds work without it, they only copy more)."""
    if plan.strategy == "unshare" and not any(step.out == "%template" for step in plan.steps):
        try:
            ensure_template(state, features)
        except (NsbuildError, OSError):
            pass


def ensure_template(state: StateDir, features: feat.Features) -> str:
    """Pin the unshare strategy's template namespace in `state` (see plan.unshare_into_root)."""
    from builder.plan.planner import make_template_plan

    plan = make_template_plan(features)
    return state.template() or retrying_on_each_cpu(lambda: executor.execute(plan),
                                                     lambda nsfd: state.pin_template(nsfd, plan))


def resolve_layers(recipe: Recipe, unpack: bool = True, session: Session | None = None) -> Resolved:
    """Session.resolve, for a caller of the Python API without a session of its own."""
    return (session or Session()).resolve(recipe, unpack)
