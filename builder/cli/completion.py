"""Shell completion of the values nsbuild knows (typer calls these while the user types)."""
from __future__ import annotations

import os

import typer

from builder.kernel import features as feat
from builder.errors import NsbuildError


def complete_strategy(incomplete: str) -> list[str]:
    return [s for s in ("auto",) + tuple(feat.STRATEGIES) if s.startswith(incomplete)]


def complete_format(incomplete: str) -> list[str]:
    return [f for f in ("table", "strace", "json") if f.startswith(incomplete)]


def complete_name(ctx: typer.Context, incomplete: str) -> list[str]:
    """Persisted sandboxes in the state dir of the command line (or NSBUILD_STATE_DIR); none if it
    cannot be read: completion must never print an error."""
    from builder.sandbox.state import StateDir, state_dir as resolve

    try:
        names = StateDir(resolve(ctx.params.get("state_dir"))).names()
    except (NsbuildError, OSError):
        return []
    return [n for n in names if n.startswith(incomplete)]


def complete_target(ctx: typer.Context, incomplete: str) -> list[str]:
    """`run`'s TARGET: a sandbox name, or a recipe file (directories, to get there)."""
    import glob

    files = [p + "/" if os.path.isdir(p) else p for p in sorted(glob.glob(glob.escape(incomplete) + "*"))]
    return complete_name(ctx, incomplete) + [p for p in files if p.endswith(("/", ".toml"))]
