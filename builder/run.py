"""Entering a sandbox: setns into its mount namespace, then exec the command.

This is the hot path of `nsbuild run NAME`: it imports neither typer, rich nor
tomllib, and needs no child process (this process is single-threaded, so
setns(CLONE_NEWNS) is allowed).
"""
from __future__ import annotations

import os
import sys
import warnings  # noqa: F401 - os.execvpe imports it lazily, when the host's stdlib may be out of reach

from builder import syscalls as sc
from builder.errors import NsbuildError, UsageError
from builder.state import StateDir, state_dir


def _exec(nsfd: int, command: list[str], cwd: str, env: dict[str, str]) -> None:
    sc.setns(nsfd, sc.FLAGS["CLONE_NEWNS"])
    os.close(nsfd)
    try:
        os.chdir(cwd)
    except OSError as e:
        raise NsbuildError(f"cannot change to {cwd} inside the sandbox: {e.strerror}",
                           "set [run] cwd to a directory that exists") from None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        print(f"nsbuild: error: {command[0]}: command not found in the sandbox", file=sys.stderr)
        os._exit(127)
    except OSError as e:
        print(f"nsbuild: error: {command[0]}: {e.strerror}", file=sys.stderr)
        os._exit(126)


def _env(recipe_env: dict[str, str]) -> dict[str, str]:
    """A clean environment: the recipe's, plus TERM from the caller when the recipe has none."""
    env = dict(recipe_env)
    if "TERM" not in env and "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    return env


def run_persisted(name: str, command: list[str], state: str | None = None) -> None:
    """Enter a persisted sandbox and exec; does not return."""
    sd = StateDir(state_dir(state))
    run: dict = sd.read_run(name) or {}  # type: ignore[type-arg]
    if not run:  # no fast cache: the metadata says why (missing, corrupt, foreign)
        meta = sd.read(name)
        if meta is None:
            raise UsageError(f"no sandbox named '{name}' in {sd.path}",
                             "build one with `nsbuild RECIPE`, or list them with `nsbuild ls`")
        run = meta["run"] if isinstance(meta.get("run"), dict) else {}  # type: ignore[assignment]
    try:
        nsfd = os.open(sd.ns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        if sc.ns_type(nsfd) != sc.FLAGS["CLONE_NEWNS"]:
            raise OSError(0, "not a mount namespace")
    except OSError:
        raise NsbuildError(f"sandbox '{name}' has no mount namespace any more (its nsfs file is not mounted)",
                           f"rebuild it, or remove it with `nsbuild rm {name}`") from None
    _exec(nsfd, command or list(run.get("command", ["/bin/sh"])), run.get("cwd", "/"), _env(run.get("env", {})))


def run_recipe(path: str, command: list[str], strategy: str = "auto", state: str | None = None) -> None:
    """Build an ephemeral sandbox, enter it: it is gone when the command exits."""
    from builder import executor, recipe as rcp
    from builder.build import plan_for, resolve_layers
    r = resolve_layers(rcp.load(path))
    nsfd = executor.execute(plan_for(r, strategy, state=StateDir(state_dir(state))))
    _exec(nsfd, command or list(r.run.command), r.run.cwd, _env(dict(r.run.env)))


def command_args(command: list[str] | tuple[str, ...] | None) -> list[str]:
    """CMD as given after TARGET: one leading "--" only separates it from nsbuild's options."""
    args = list(command or [])
    return args[1:] if args[:1] == ["--"] else args


def run(target: str, command: list[str], state: str | None = None, strategy: str = "auto") -> None:
    """NAME of a persisted sandbox, or a recipe file (it ends in .toml or contains a '/')."""
    if target.endswith(".toml") or "/" in target:
        run_recipe(target, command, strategy, state)
    run_persisted(target, command, state)
