"""The typer CLI: what users see (help, completion, rich output, --json). The commands live by what
they act on: here build, run and plan; recipes.py check, lock and export; sandboxes.py ls, rm and gc;
doctor.py doctor. base.py holds what they share."""
from __future__ import annotations

import json
import sys
from typing import Any, List, Optional

import typer

from builder.kernel import features as feat
from builder.cli import options as opt
from builder.cli.completion import complete_format, complete_target
from builder.errors import UsageError
from builder.cli.base import _run_origins, JsonOpt, StateOpt, StrategyOpt, _argument, _load, _with_options, app, handled, out

TYPE_CHECKING = False
if TYPE_CHECKING:
    pass


def main(args: list[str]) -> None:
    """Run the typer app. With --json, a command line typer refuses is reported as JSON too."""
    if "--json" not in args:
        app(args=args, prog_name="nsbuild")
        return
    # click's UsageError, whether typer vendors click or not (BadParameter is public and derives from it)
    click_usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    try:
        code = app(args=args, prog_name="nsbuild", standalone_mode=False)
    except click_usage_error as e:
        ctx = getattr(e, "ctx", None)
        sys.exit(UsageError(e.format_message(), f"see `{ctx.command_path if ctx else 'nsbuild'} --help`")
                 .report(as_json=True))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)



@app.command()
@handled
@_with_options(opt.BUILD, _argument("recipe", Optional[str],
                                    typer.Argument(None, help="Recipe file [default: the embedded dev recipe].")))
def build(**params: Any) -> None:
    """Build RECIPE and persist its mount namespace (also: `nsbuild RECIPE`)."""
    from builder.cli.commands import build_command

    build_command(**params)


@app.command(context_settings={"allow_interspersed_args": False})
@handled
@_with_options(opt.RUN,
               _argument("target", str, typer.Argument(..., help="Name of a persisted sandbox, or a recipe file "
                                                      "(ephemeral).", autocompletion=complete_target)),
               _argument("command", Optional[List[str]],
                         typer.Argument(None, help="Command to run [default: [run] command].")))
def run(**params: Any) -> None:
    """Run CMD in a sandbox (`nsbuild run NAME -- CMD ...`), contained; exits with CMD's status."""
    from builder.runtime.run import command_args, run as do_run

    do_run(**dict(params, command=command_args(params["command"]), env=params["env"] or [],
                  share=params["share"] or []))


@app.command()
@handled
def plan(
    recipe: Optional[str] = typer.Argument(None, help="Recipe file [default: the embedded dev recipe]."),
    strategy: str = StrategyOpt,
    fmt: str = typer.Option("table", "--format", "-f", help="table, strace or json.", autocompletion=complete_format),
    as_json: bool = JsonOpt,
    state_dir: Optional[str] = StateOpt,
) -> None:
    """Print the exact syscalls a build makes, without root and without side effects."""
    from builder.plan import render
    from builder.plan.planner import make_plan
    from builder.sandbox.state import StateDir, state_dir as resolve

    if as_json:
        fmt = "json"
    if fmt not in ("table", "strace", "json"):
        raise UsageError(f"unknown format '{fmt}'", "use table, strace or json")
    from builder.sandbox.session import Session

    session = Session(StateDir(resolve(state_dir)))
    r = session.resolve(_load(recipe), unpack=False)  # store paths, nothing written
    features = session.features(r)
    if strategy != "auto" and strategy in feat.STRATEGIES and not feat.supported(features, strategy):
        print(f"nsbuild: note: kernel {features.release} cannot run strategy '{strategy}'; "
              "showing its plan anyway", file=sys.stderr)
        chosen = strategy
    else:
        chosen = feat.pick_strategy(features, strategy)
    p = make_plan(r, features, chosen, session.state.template(), session.state.pin_for(r.name))  # ends with persisting
    run_rows = _run_origins(r)
    if fmt == "json":
        doc = render.as_dict(p)
        if run_rows:
            doc["run"] = {key: {"value": json.loads(value), "from": where} for key, value, where in run_rows}
        print(json.dumps(doc, indent=2))
    elif fmt == "strace":
        sys.stdout.write(render.strace(p))
        for key, value, where in run_rows:
            print(f"# run.{key} = {value}  ({where})")
    else:
        out.print(render.table(p))
        for note in p.notes:
            out.print(f"note: {note}")
        for key, value, where in run_rows:
            out.print(f"run.{key} = {value}  ({where})")


# the other commands join `app` when imported, after these three (typer lists them in that order)
from builder.cli import recipes, sandboxes, doctor  # noqa: E402,F401
