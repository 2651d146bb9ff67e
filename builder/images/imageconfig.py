"""An OCI image's config as [run] defaults: Env, Entrypoint+Cmd, WorkingDir and User fill what the
recipe's [run] leaves unset, when the recipe's top layer is that image (image-spec config.md).

Recipe beats image beats built-in default, per value (per variable for Env); Run.origins records
which one each value came from, for `nsbuild plan` and `check`.
"""
from __future__ import annotations

import dataclasses
import posixpath
import re
from typing import Any

from builder.recipe.model import Run

_USER = re.compile(r"[0-9]+(?::[0-9]+)?|[A-Za-z_][A-Za-z0-9_.-]*")


def origin_of(run: Run, key: str) -> str:
    return dict(run.origins).get(key, "default")


def run_defaults(run: Run, config: dict[str, Any], source: str) -> Run:
    """`run` with every value it did not get from the recipe taken from the image `config` where the
    image sets one; `source` names the image in Run.origins (e.g. "image config of layer[0]")."""
    cfg = config.get("config")
    if not isinstance(cfg, dict):
        return run
    origins = dict(run.origins)
    changes: dict[str, Any] = {}

    def take(key: str) -> bool:
        return origins.get(key, "default") != "recipe"

    entrypoint, cmd = _strings(cfg.get("Entrypoint")), _strings(cfg.get("Cmd"))
    if take("command") and entrypoint + cmd:
        changes["command"] = tuple(entrypoint + cmd)
        origins["command"] = source
    workdir = cfg.get("WorkingDir")
    if take("cwd") and isinstance(workdir, str) and workdir.startswith("/") and "\0" not in workdir:
        changes["cwd"] = posixpath.normpath(workdir) if not workdir.startswith("//") else "/" + workdir.lstrip("/")
        origins["cwd"] = source
    user = cfg.get("User")
    if take("user") and isinstance(user, str) and user:
        name, _, group = user.partition(":")
        if _USER.fullmatch(user):  # root, NAME or UID[:GID]: what [run] user takes
            changes["user"] = "root" if user in ("0", "0:0") else user
            origins["user"] = source
        elif _USER.fullmatch(name):  # NAME:GROUP, UID:GROUP: the group has no [run] form
            changes["user"] = name
            origins["user"] = f"{source}, its group {group!r} left out ([run] user is NAME or UID[:GID])"
    env = dict(run.env)
    for item in _strings(cfg.get("Env")):
        key, eq, value = item.partition("=")
        if eq and key and "\0" not in item and take(f"env.{key}"):
            env[key] = value
            origins[f"env.{key}"] = source
    if env != dict(run.env):
        changes["env"] = tuple(sorted(env.items()))
    if not changes:
        return run
    return dataclasses.replace(run, **changes, origins=tuple(sorted(origins.items())))


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def describe(run: Run) -> list[tuple[str, str, str]]:
    """(key, value, where it came from) for each [run] value, for `plan` and `check`."""
    import json

    rows = [("command", json.dumps(list(run.command)), origin_of(run, "command")),
            ("cwd", json.dumps(run.cwd), origin_of(run, "cwd")),
            ("user", json.dumps(run.user), origin_of(run, "user"))]
    rows += [(f"env.{k}", json.dumps(v), origin_of(run, f"env.{k}")) for k, v in run.env]
    return rows
