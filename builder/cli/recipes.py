"""Commands on a recipe's inputs and tree: check (the pre-flight), lock, export."""
from __future__ import annotations

import json
from typing import Optional

import typer

from builder.cli.commands import need_root
from builder.cli.base import _run_origins, JsonOpt, StateOpt, _join, _join_for_store, _load, app, handled, out

TYPE_CHECKING = False
if TYPE_CHECKING:
    pass


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
