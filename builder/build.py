"""Build a sandbox: recipe -> plan -> namespace fd -> persisted state."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from builder import executor, features as feat
from builder.errors import NsbuildError
from builder.plan import Plan, make_plan
from builder.recipe import Recipe
from builder.state import StateDir


@dataclass(frozen=True)
class Built:
    name: str
    nsfs: str
    strategy: str
    seconds: float


def plan_for(recipe: Recipe, strategy: str = "auto", features: feat.Features | None = None) -> Plan:
    features = features or feat.probe()
    return make_plan(recipe, features, feat.pick_strategy(features, strategy))


def metadata(recipe: Recipe, plan: Plan) -> dict[str, Any]:
    """What `run`, `ls` and `rm` need later, without parsing the recipe again."""
    return {
        "recipe": recipe.file, "recipe_sha256": recipe.sha256, "strategy": plan.strategy,
        "kernel": plan.kernel, "upper": recipe.root.upper, "description": recipe.description,
        "run": {"command": list(recipe.run.command), "cwd": recipe.run.cwd, "env": dict(recipe.run.env)},
    }


def build(recipe: Recipe, state: StateDir, strategy: str = "auto", replace: bool = False,
          name: str | None = None) -> Built:
    start = time.perf_counter()
    plan = plan_for(recipe, strategy)
    cpus = sorted(os.sched_getaffinity(0))
    # namespace ids come from per-CPU ranges (KERNEL-NOTES.md): if the kernel refuses to pin a
    # namespace with a lower id than ours, build it again on each CPU in turn
    attempts: list[int | None] = [None] + (cpus if len(cpus) > 1 else [])
    try:
        for cpu in attempts:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            nsfd = executor.execute(plan)
            try:
                state.prepare()  # only after a successful build: a failed one changes nothing
                path = state.persist(name or recipe.name, nsfd, metadata(recipe, plan), replace)
                break
            except NsbuildError as e:
                if not getattr(e, "retry", False) or cpu == attempts[-1]:
                    raise
            finally:
                os.close(nsfd)
    finally:
        os.sched_setaffinity(0, cpus)
    return Built(name or recipe.name, path, plan.strategy, time.perf_counter() - start)
