"""The `nsbuild` command: the hot commands first, typer for everything else.

`run` and `build` are parsed here without importing typer and rich (~60 ms).
The lean parser accepts a subset of the typer syntax and means the same by it
(tests/test_entry.py compares both); anything else goes to typer.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs ~4 ms at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

COMMANDS = ("build", "run", "plan", "check", "lock", "export", "gc", "ls", "rm", "doctor")

# build's options, as in cli.build: value options (with their aliases) and flags
BUILD_VALUES = {"--strategy": "strategy", "-s": "strategy", "--name": "name", "--state-dir": "state_dir",
                "--count": "count", "-n": "count"}
BUILD_FLAGS = {"--replace": "replace", "--json": "as_json", "--locked": "locked", "--quiet": "quiet", "-q": "quiet",
               "--no-check": "check"}


def parse_build(args: list[str]) -> dict[str, object] | None:
    """`build [RECIPE] [OPTIONS]` as typer would parse it, or None to let typer decide."""
    params: dict[str, object] = {"recipe": None, "strategy": "auto", "replace": False, "name": None,
                                 "state_dir": os.environ.get("NSBUILD_STATE_DIR") or None, "as_json": False,
                                 "locked": False, "quiet": False, "check": True, "count": None}
    seen: set[str] = set()
    i, positional_only = 0, False
    while i < len(args):
        arg = args[i]
        if not positional_only and arg == "--":
            positional_only = True
        elif not positional_only and arg.startswith("-"):
            key, eq, value = arg.partition("=")
            if key in BUILD_FLAGS and not eq:
                name = BUILD_FLAGS[key]
                params[name] = key != "--no-check"
            elif key in BUILD_VALUES and (eq or i + 1 < len(args)) and not (key in ("-s", "-n") and eq):
                name = BUILD_VALUES[key]
                if not eq:
                    i += 1
                    value = args[i]
                if name == "count":
                    if not value.isdigit():
                        return None  # typer says what is wrong with it
                    params[name] = int(value)
                else:
                    params[name] = value
            else:
                return None  # help, unknown or unusual spellings: typer's to judge
            if name in seen:
                return None  # typer lets the last one win; keep it simple and defer
            seen.add(name)
        elif params["recipe"] is None:
            params["recipe"] = arg
        else:
            return None
        i += 1
    return params


RUN_VALUES = {"--state-dir": "state", "--strategy": "strategy", "-s": "strategy", "--cwd": "cwd",
              "--user": "user", "-u": "user", "--network": "network", "--hostname": "hostname"}
RUN_LISTS = {"--env": "env", "-e": "env", "--share": "share"}  # repeatable
RUN_FLAGS = {"--unconfined": "unconfined"}


def parse_run(args: list[str]) -> dict[str, object] | None:
    """`run [OPTIONS] TARGET [--] [CMD...]` as typer would parse it, or None to let typer decide.

    Options come before TARGET (typer's run takes no interspersed options); after TARGET
    everything belongs to CMD, and a leading "--" is dropped.
    """
    params: dict[str, object] = {"state": os.environ.get("NSBUILD_STATE_DIR") or None, "strategy": "auto",
                                 "cwd": None, "user": None, "network": None, "hostname": None, "env": [],
                                 "share": [], "unconfined": False}
    seen: set[str] = set()
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        key, eq, value = args[i].partition("=")
        if key in RUN_FLAGS and not eq and RUN_FLAGS[key] not in seen:
            params[RUN_FLAGS[key]] = True
            seen.add(RUN_FLAGS[key])
            i += 1
            continue
        name = RUN_VALUES.get(key) or RUN_LISTS.get(key)
        if name is None or (eq and not key.startswith("--")) or (name in seen and key in RUN_VALUES):
            return None  # unknown, -s=x (click reads "=x"), or given twice (typer lets the last win)
        if not eq:
            i += 1
            if i >= len(args):
                return None
            value = args[i]
        if key in RUN_LISTS:
            params[name].append(value)  # type: ignore[attr-defined]
        else:
            params[name] = value
        seen.add(name)
        i += 1
    if i < len(args) and args[i] == "--":
        i += 1
    if i >= len(args):
        return None
    rest = args[i + 1:]
    if rest[:1] != ["--"] and rest and rest[0].startswith("-"):
        return None  # an option after TARGET: let typer say what it means
    from builder.runtime.run import command_args

    params["target"], params["command"] = args[i], command_args(rest)
    return params


def _lean(command: Callable[..., None], params: dict[str, object]) -> None:
    from builder.errors import NsbuildError, os_error

    as_json = bool(params.get("as_json"))
    try:
        command(**params)
    except NsbuildError as e:
        sys.exit(e.report(as_json))
    except OSError as e:  # nothing said what went wrong: still one message, never a traceback
        sys.exit(os_error(e).report(as_json))
    except KeyboardInterrupt:
        sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in COMMANDS and not args[0].startswith("-"):
        args.insert(0, "build")  # `nsbuild recipe.toml` means `nsbuild build recipe.toml`
    if args and args[0] == "run" and (params := parse_run(args[1:])) is not None:
        from builder.runtime.run import run

        return _lean(run, params)
    if args and args[0] == "build" and (params := parse_build(args[1:])) is not None:
        from builder.cli.commands import build_command

        return _lean(build_command, params)
    from builder.cli.app import main as typer_main

    typer_main(args)


if __name__ == "__main__":
    main()
