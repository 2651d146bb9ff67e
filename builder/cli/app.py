"""The typer CLI: what users see (help, completion, rich output, --json)."""
from __future__ import annotations

import inspect
import json
import os
import sys
from functools import wraps
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console

from builder.kernel import features as feat
from builder.cli import options as opt
from builder.cli.commands import need_root
from builder.cli.completion import complete_format, complete_name, complete_strategy, complete_target
from builder.errors import NsbuildError, UsageError, os_error

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


def _with_options(table: tuple[opt.Option, ...], *arguments: inspect.Parameter) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command typer parameters: its arguments, then the options of its table (options.py)."""
    def give(fn: Callable[..., None]) -> Callable[..., None]:
        fn.__signature__ = inspect.Signature([*arguments, *opt.typer_parameters(table, COMPLETE)])  # type: ignore[attr-defined]
        fn.__annotations__ = {}  # typer reads the types from the signature
        return fn
    return give


def _argument(name: str, annotation: object, info: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=info, annotation=annotation)


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


def _run_origins(r: Resolved) -> list[tuple[str, str, str]]:
    """[run]'s values and where each came from, when an image's config can set them: the top layer of the
    resolved recipe `r` is an OCI image."""
    if r.image_config is None:
        return []
    from builder.images.imageconfig import describe

    return describe(r.run)


@app.command()
@handled
def check(
    recipe: Optional[str] = typer.Argument(None, help="Recipe file [default: the embedded dev recipe]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = JsonOpt,
) -> None:
    """Check that [run]'s command starts in RECIPE's tree: program, #! and ELF interpreters, libraries,
    architecture. Image layers are mounted detached (needs root); nothing is attached anywhere."""
    from builder.check import preflight
    from builder import progress
    from builder.sandbox.session import Session
    from builder.errors import RecipeError

    progress.QUIET = quiet or as_json
    r = _load(recipe)
    if any(layer.kind == "image" for layer in r.layers):
        need_root("checking a recipe with image layers (they are mounted to be read)")
    session = Session()
    _join_for_store(r)
    r = session.resolve(r)
    found = preflight.problems(r, session.features(r))
    if found:
        raise RecipeError(r.file, found)
    if as_json:
        print(json.dumps({"file": r.file, "ok": True, "command": list(r.run.command)}, indent=2))
        return
    print(f"{r.file}: ok: {r.run.command[0]} starts in the tree (program, interpreters, libraries)")
    for key, value, where in _run_origins(r):
        print(f"  run.{key} = {value}  ({where})")


@app.command()
@handled
def lock(
    recipe: Optional[str] = typer.Argument(None, help="Recipe file [default: the embedded dev recipe]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = JsonOpt,
) -> None:
    """Write RECIPE.lock: the digest of every input, for `nsbuild build --locked`."""
    from builder.layers import lock as lk
    from builder import progress

    progress.QUIET = quiet or as_json
    from builder.sandbox.session import Session

    r = _load(recipe)
    _join_for_store(r)
    path = lk.write(r, Session().layers)
    if as_json:
        print(json.dumps({"lock": path}, indent=2))
        return
    out.print(f"wrote {path}")


@app.command()
@handled
def export(
    target: str = typer.Argument(..., help="A persisted sandbox's name, or a recipe file."),
    dest: str = typer.Argument(..., help="oci:DIR[:TAG] (a layout) or docker://HOST[:PORT]/REPO:TAG (a push)."),
    state_dir: Optional[str] = StateOpt,
    as_json: bool = JsonOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars, no summary."),
) -> None:
    """Write a sandbox's tree as an OCI image: to a layout, or pushed to a registry."""
    from builder.images import dest as destination, export as ex
    from builder import progress

    progress.QUIET = quiet
    destination.parse_dest(dest)  # a bad destination is a usage error before anything is unpacked
    _join(state_dir)
    need_root()
    digest, report = ex.export(target, dest, state_dir)
    if as_json:
        print(json.dumps({"digest": digest, "dest": dest, "blobs": report}, indent=2))
    elif not quiet:
        for line in report:
            out.print(line)
        out.print(f"exported {target} to {dest} (manifest {digest})")


@app.command()
@handled
def gc(
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only list what would be removed."),
    as_json: bool = JsonOpt,
) -> None:
    """Remove store entries that no lock file and no persisted sandbox references."""
    from builder.sandbox.session import Session

    _join(None)
    store = Session().store
    if not dry_run:
        need_root("removing store entries")
    try:
        removed = store.gc(dry_run)
    except PermissionError as e:
        raise store.refused(e) from None
    if as_json:
        print(json.dumps({"store": store.path, "dry_run": dry_run, "removed": removed}, indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    for path in removed:
        out.print(f"{verb} {path}")
    out.print(f"{verb} {len(removed)} {'entry' if len(removed) == 1 else 'entries'} from {store.path}")


@app.command("ls")
@handled
def list_(state_dir: Optional[str] = StateOpt, as_json: bool = JsonOpt) -> None:
    """List persisted sandboxes."""
    from builder.sandbox.state import StateDir, mount_points, state_dir as resolve

    sd = StateDir(resolve(state_dir))
    _join(sd.path, start=False, fork=False)  # rootless: the pins are in the holder's mount namespace
    mounted = mount_points()
    rows = []
    for name in sd.names():
        try:
            meta = sd.read(name) or {}
            status = "ok" if meta.get("nsfs", sd.ns_path(name)) in mounted else "stale"
        except NsbuildError:
            meta, status = {"name": name}, "corrupt"
        rows.append(dict(meta, status=status))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print(f"no sandboxes in {sd.path}")
        return
    from rich.table import Table

    t = Table(title=f"sandboxes in {sd.path}")
    for col in ("name", "status", "strategy", "created", "nsfs"):
        t.add_column(col)
    for row in rows:
        t.add_row(*(str(row.get(c, "")) for c in ("name", "status", "strategy", "created", "nsfs")))
    out.print(t)


@app.command()
@handled
def rm(
    names: Optional[List[str]] = typer.Argument(None, help="Sandboxes to remove.", autocompletion=complete_name),
    state_dir: Optional[str] = StateOpt,
    all_: bool = typer.Option(False, "--all", help="Remove every sandbox, then release the state directory "
                              "(its own mount and the template namespace): the host as before the first build."),
    as_json: bool = JsonOpt,
) -> None:
    """Remove sandboxes: unmount the namespace file, delete the metadata (idempotent)."""
    from builder.recipe.model import NAME_RE
    from builder.sandbox.state import StateDir, state_dir as resolve

    sd = StateDir(resolve(state_dir))
    if all_ == bool(names):
        raise UsageError("give sandbox names or --all" if not all_ else "--all takes no sandbox names",
                         "e.g. `nsbuild rm dev`, or `nsbuild rm --all`")
    if os.path.isdir(sd.path):
        _join(sd.path)
    if all_:
        return _rm_all(sd, as_json)
    for name in names:
        if not NAME_RE.match(name):
            raise UsageError(f"'{name}' is not a sandbox name",
                             "names are lower-case letters, digits, '.', '_', '-'; see `nsbuild ls`")
    if os.path.isdir(sd.path):
        need_root("removing a sandbox")
    results = {name: os.path.isdir(sd.path) and sd.remove(name) for name in names}
    if as_json:
        print(json.dumps({"removed": [n for n, r in results.items() if r],
                          "not_found": [n for n, r in results.items() if not r]}, indent=2))
        return
    for name, removed in results.items():
        out.print(f"{name}: {'removed' if removed else 'not found'}")


def _rm_all(sd, as_json: bool) -> None:  # sd: StateDir
    if not os.path.isdir(sd.path):
        if as_json:
            print(json.dumps({"removed": [], "released": None, "kept_directory": False}, indent=2))
        else:
            out.print(f"nothing to remove: {sd.path} does not exist")
        return
    need_root("removing sandboxes")
    removed, gone = sd.release()
    if as_json:
        print(json.dumps({"removed": removed, "released": sd.path, "kept_directory": not gone}, indent=2))
        return
    for name in removed:
        out.print(f"{name}: removed")
    out.print(f"released {sd.path}" if gone else
              f"released {sd.path} (kept the directory: it holds files that are not nsbuild's)")


def _libseccomp() -> str:
    from builder.kernel import syscalls

    try:
        syscalls.seccomp_open()
        return "yes"
    except OSError:
        return "no: libseccomp.so.2 is missing (apt-get install libseccomp2); `nsbuild run` fails"


@app.command()
@handled
def doctor(state_dir: Optional[str] = StateOpt, as_json: bool = JsonOpt) -> None:
    """Show the kernel's features, the strategy `auto` picks and the state directory's health."""
    from builder.kernel import syscalls
    from builder.sandbox.state import StateDir, _mountinfo_entry, state_dir as resolve

    f = feat.probe(erofs=os.geteuid() == 0)  # the erofs probe needs root (fsopen)
    try:
        auto = feat.pick_strategy(f, "auto")
    except NsbuildError as e:
        auto = f"none ({e})"
    path = resolve(state_dir)
    from builder.sandbox import holder, userns

    rootless = userns.report(holder.running(path) if holder.wanted() else None, holder.wanted())
    try:
        _join(path, start=False, fork=False)  # rootless: the state directory's mounts are the holder's
    except NsbuildError as e:
        rootless["hint"] = " ".join(filter(None, (rootless["hint"], str(e))))  # doctor reports, it does not fail
    entry = _mountinfo_entry(path) if os.path.isdir(path) else None
    tags = entry[6:entry.index("-")] if entry else []
    report = {
        "kernel": f.release,
        "probes": dict(f.probes),
        "features": {k: v for k, v in f.as_dict().items() if k not in ("release", "probes")},
        "strategies": {s: feat.supported(f, s) for s in feat.STRATEGIES},
        "auto": auto,
        "root": os.geteuid() == 0,
        "ffi": "out-of-line (generated)" if syscalls.GENERATED else "in-line (parsed at import: slower start)",
        "seccomp": _libseccomp(),
        "state_dir": {"path": path, "exists": os.path.isdir(path), "mount_point": entry is not None,
                      "unbindable": "unbindable" in tags, "template": StateDir(path).template() is not None},
        "user_namespace": rootless,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return
    from rich.table import Table

    t = Table(title="nsbuild doctor", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("kernel", f.release)
    for probe, result in f.probes:
        t.add_row(f"probe {probe}", result)
    for s, ok in report["strategies"].items():  # type: ignore[union-attr,attr-defined]
        t.add_row(f"strategy {s}", "yes" if ok else "no")
    t.add_row("auto picks", auto)
    t.add_row("overlay layers as fds (6.13+)", "yes" if f.overlay_fd_layers else "no")
    t.add_row("erofs images straight from files", "yes" if f.erofs_file else
              "no: loop devices" if os.geteuid() == 0 else "unknown (needs root)")
    t.add_row("running as root", "yes" if report["root"] else "no: rootless, in a user namespace")
    t.add_row("user namespace mapping", rootless["summary"])
    if rootless["hint"]:
        t.add_row("", rootless["hint"])
    if rootless["mapping"]:
        t.add_row("holder", f"pid {rootless['holder']}" if rootless["holder"] else "not running (started by a build)")
    t.add_row("syscall layer", str(report["ffi"]))
    t.add_row("contained runs (libseccomp)", str(report["seccomp"]))
    sd = report["state_dir"]
    t.add_row("state dir", f"{path}: " + ("missing (created on first build)" if not sd["exists"] else  # type: ignore[index]
                                         "unbindable mount" if sd["unbindable"] else  # type: ignore[index]
                                         "not yet an unbindable mount (fixed on next build)"))
    t.add_row("template namespace", "pinned" if sd["template"] else  # type: ignore[index]
              "none yet (pinned by the first unshare build)")
    out.print(t)
