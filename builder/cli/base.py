"""What every typer command shares: the app itself, the console, the common options, the error
wrapper (handled), joining a rootless user's holder, and making typer parameters from options.py."""
from __future__ import annotations

import inspect
import os
from functools import wraps
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from builder.cli import options as opt
from builder.cli.completion import complete_strategy
from builder.errors import NsbuildError, os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from builder.layers.resolved import Resolved
    from builder.recipe.model import Recipe

app = typer.Typer(
    help="Build root filesystems from TOML recipes into persisted Linux mount namespaces.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts name [run] and [sandbox]: as text, not rich markup
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(highlight=False, markup=False, soft_wrap=True)  # paths print whole and as they are
if not out.is_terminal and "COLUMNS" not in os.environ:
    out.width = 1 << 16  # piped or redirected: tables as wide as their content, never a value cut to "…"

COMPLETE = {"complete_strategy": complete_strategy}
StateOpt = typer.Option(None, *opt.STATE_DIR.names, envvar=opt.STATE_DIR.env, help=opt.STATE_DIR.help)
StrategyOpt = typer.Option(opt.STRATEGY.default, *opt.STRATEGY.names, autocompletion=complete_strategy,
                           help=opt.STRATEGY.help)
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _fail(e: NsbuildError, as_json: bool = False) -> None:
    raise typer.Exit(e.report(as_json))


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn NsbuildError into one message and its exit code: never a traceback. With --json (or
    plan's --format json) the message is JSON too."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json")) or kwargs.get("fmt") == "json"
        try:
            return fn(*args, **kwargs)
        except NsbuildError as e:
            _fail(e, as_json)
        except OSError as e:  # nothing said what went wrong: still one message, never a traceback
            _fail(os_error(e), as_json)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    return wrapper


def _join(state_dir: Optional[str], start: bool = True, fork: bool = True) -> None:
    """Rootless: go on in the holder's namespaces (sandbox/holder.py), where the user's sandboxes
    are pinned and the store's owners are mapped; root stays where it is."""
    from builder.sandbox import holder
    from builder.sandbox.state import state_dir as resolve

    holder.join(resolve(state_dir), start=start, fork=fork)


def _join_for_store(r: Recipe) -> None:
    """_join() when the recipe has layers that the content store unpacks (their owners need the mapping)."""
    from builder.layers import kinds

    if any(kinds.of(layer).needs_store(layer) for layer in r.layers):
        _join(None)


def _load(path: Optional[str]):  # -> Recipe
    from builder.recipe import load as recipe
    from builder.cli.commands import default_recipe

    return recipe.load(path or default_recipe())


def _with_options(table: tuple[opt.Option, ...], *arguments: inspect.Parameter) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command typer parameters: its arguments, then the options of its table (options.py)."""
    def give(fn: Callable[..., None]) -> Callable[..., None]:
        fn.__signature__ = inspect.Signature([*arguments, *opt.typer_parameters(table, COMPLETE)])  # type: ignore[attr-defined]
        fn.__annotations__ = {}  # typer reads the types from the signature
        return fn
    return give


def _argument(name: str, annotation: object, info: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=info, annotation=annotation)


def _run_origins(r: Resolved) -> list[tuple[str, str, str]]:
    """[run]'s values and where each came from, when an image's config can set them: the top layer of the
    resolved recipe `r` is an OCI image."""
    if r.image_config is None:
        return []
    from builder.images.imageconfig import describe

    return describe(r.run)
