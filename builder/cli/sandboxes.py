"""Commands on what nsbuild keeps: ls and rm (sandboxes), gc (the content store)."""
from __future__ import annotations

import json
import os
from typing import List, Optional

import typer

from builder.cli.commands import need_root
from builder.cli.completion import complete_name
from builder.errors import NsbuildError, UsageError
from builder.cli.base import JsonOpt, StateOpt, _join, app, handled, out

TYPE_CHECKING = False
if TYPE_CHECKING:
    pass


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
    from builder.sandbox.mounts import mount_points
    from builder.sandbox.state import StateDir, state_dir as resolve

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
