"""The options of `build` and `run` in one table, read by both of their parsers: the lean one in entry.py
(which must not import typer) and typer's (app.py), whose parameters are made from the same entries.
tests/test_entry.py checks that both parsers agree; tests/test_cli_options.py that the README lists each
option for its commands.

Plain tuples, no dataclasses: this module is imported on the hot path of every `nsbuild run`.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import inspect
    from collections.abc import Callable

VALUE, INT, LIST, FLAG, SWITCH = "value", "int", "list", "flag", "switch"  # LIST: repeatable; SWITCH: --x/--no-x


class Option:
    __slots__ = ("names", "dest", "kind", "help", "default", "env", "complete")

    def __init__(self, names: tuple[str, ...], dest: str, kind: str, help: str, default: object = None,
                 env: str | None = None, complete: str | None = None) -> None:
        self.names, self.dest, self.kind, self.help = names, dest, kind, help
        self.default = True if kind == SWITCH else False if kind == FLAG else default
        self.env, self.complete = env, complete  # complete: a function of completion.py


STATE_DIR = Option(("--state-dir",), "state_dir", VALUE, "Where persisted sandboxes live [default: /run/nsbuild].",
                   env="NSBUILD_STATE_DIR")
STRATEGY = Option(("--strategy", "-s"), "strategy", VALUE,
                  "auto, fsmount-namespace (7.1+), open-tree-namespace (7.0+) or unshare.", default="auto",
                  complete="complete_strategy")

BUILD = (
    STRATEGY,
    Option(("--replace",), "replace", FLAG, "Replace a sandbox of the same name atomically."),
    Option(("--name",), "name", VALUE, "Persist under this name instead of [sandbox] name."),
    STATE_DIR,
    Option(("--json",), "as_json", FLAG, "Print JSON instead of a table."),
    Option(("--locked",), "locked", FLAG, "Refuse to build if an input drifted from RECIPE.lock."),
    Option(("--quiet", "-q"), "quiet", FLAG, "No progress bars, no summary."),
    Option(("--check", "--no-check"), "check", SWITCH,
           "Check first that [run]'s command starts in the tree (as `nsbuild check`)."),
    Option(("--count", "-n"), "count", INT, "Build COUNT sandboxes NAME-0 ... NAME-<COUNT-1> in one batch."),
)

RUN = (
    STATE_DIR,
    STRATEGY,
    Option(("--env", "-e"), "env", LIST, "Set KEY=VALUE in CMD's environment (repeatable)."),
    Option(("--cwd",), "cwd", VALUE, "Working directory inside the sandbox."),
    Option(("--user", "-u"), "user", VALUE, "root, a user NAME of the sandbox, or UID[:GID]."),
    Option(("--network",), "network", VALUE, "host (share the host's network) or none (only lo)."),
    Option(("--hostname",), "hostname", VALUE, "Host name inside the run (default: the sandbox's name)."),
    Option(("--share",), "share", LIST, "Keep the host's pid, ipc, uts or cgroup namespace (repeatable)."),
    Option(("--unconfined",), "unconfined", FLAG, "Enter the mount namespace only, as full root "
           "(what nsenter --mount does)."),
)


def defaults(table: tuple[Option, ...]) -> dict[str, object]:
    return {o.dest: [] if o.kind == LIST else (os.environ.get(o.env) or None) if o.env else o.default
            for o in table}


def take(table: tuple[Option, ...], args: list[str], i: int, params: dict[str, object], seen: set[str]) -> int | None:
    """Parse the option at args[i] into params as typer would; the index after it, or None to let typer
    decide (help, unknown or unusual spellings, a bad number, an option given twice: typer lets the
    last one win, and says what is wrong)."""
    key, eq, value = args[i].partition("=")
    option = next((o for o in table if key in o.names), None)
    if option is None or (eq and not key.startswith("--")):
        return None  # unknown, or -s=x (click reads "=x")
    if option.dest in seen and option.kind != LIST:
        return None
    seen.add(option.dest)
    if option.kind in (FLAG, SWITCH):
        if eq:
            return None
        params[option.dest] = key != option.names[-1] if option.kind == SWITCH else True
        return i + 1
    if not eq:
        i += 1
        if i >= len(args):
            return None
        value = args[i]
    if option.kind == INT:
        if not value.isdigit():
            return None
        params[option.dest] = int(value)
    elif option.kind == LIST:
        params[option.dest].append(value)  # type: ignore[attr-defined]
    else:
        params[option.dest] = value
    return i + 1


def typer_parameters(table: tuple[Option, ...], complete: dict[str, Callable[..., object]]) -> list[inspect.Parameter]:
    """The table as typer parameters: keyword-only, each with its typer.Option as default."""
    import inspect
    from typing import List, Optional

    import typer

    kinds: dict[str, object] = {VALUE: Optional[str], INT: Optional[int], LIST: Optional[List[str]], FLAG: bool,
                                SWITCH: bool}
    params = []
    for o in table:
        names = ("/".join(o.names),) if o.kind == SWITCH else o.names
        info = typer.Option(None if o.kind == LIST else o.default, *names, help=o.help, envvar=o.env,
                            autocompletion=complete.get(o.complete) if o.complete else None)
        annotation = str if o.kind == VALUE and o.default is not None else kinds[o.kind]
        params.append(inspect.Parameter(o.dest, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation))
    return params
