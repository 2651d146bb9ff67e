"""The `nsbuild` command: the hot commands first, typer for everything else.

`run` and `build` are parsed here without importing typer and rich (~60 ms).
The lean parser accepts a subset of the typer syntax and means the same by it
(tests/test_entry.py compares both); anything else goes to typer.
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs ~4 ms at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

COMMANDS = ("build", "run", "plan", "check", "lock", "export", "gc", "ls", "rm", "doctor")

def parse_build(args: list[str]) -> dict[str, object] | None:
    """`build [RECIPE] [OPTIONS]` as typer would parse it, or None to let typer decide."""
    from builder.cli.options import BUILD, defaults, take

    params: dict[str, object] = {"recipe": None, **defaults(BUILD)}
    seen: set[str] = set()
    i, positional_only = 0, False
    while i < len(args):
        arg = args[i]
        if not positional_only and arg == "--":
            positional_only = True
        elif not positional_only and arg.startswith("-"):
            after = take(BUILD, args, i, params, seen)
            if after is None:
                return None
            i = after
            continue
        elif params["recipe"] is None:
            params["recipe"] = arg
        else:
            return None
        i += 1
    return params


def parse_run(args: list[str]) -> dict[str, object] | None:
    """`run [OPTIONS] TARGET [--] [CMD...]` as typer would parse it, or None to let typer decide.

    Options come before TARGET (typer's run takes no interspersed options); after TARGET
    everything belongs to CMD, and a leading "--" is dropped.
    """
    from builder.cli.options import RUN, defaults, take

    params = defaults(RUN)
    seen: set[str] = set()
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        after = take(RUN, args, i, params, seen)
        if after is None:
            return None
        i = after
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
