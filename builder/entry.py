"""The `nsbuild` console script: hot paths first, typer for everything else."""
from __future__ import annotations

import sys

COMMANDS = ("build", "run", "plan", "ls", "rm", "doctor")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "run":
        from builder.run import lean_main

        code = lean_main(args[1:])
        if code is not None:
            sys.exit(code)
    elif args and args[0] not in COMMANDS and not args[0].startswith("-"):
        args.insert(0, "build")  # `nsbuild recipe.toml` means `nsbuild build recipe.toml`
    from builder.cli import app

    app(args=args, prog_name="nsbuild")


if __name__ == "__main__":
    main()
