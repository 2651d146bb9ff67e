"""The README documents each option of `build` and `run` that the option table (builder/cli/options.py)
defines, for the commands that take it, and nothing that the table lacks."""
from __future__ import annotations

import re

from conftest import REPO

from builder.cli.options import BUILD, RUN

README = (REPO / "README.md").read_text()


def option_rows() -> dict[str, set[str]]:
    """The README's option table: each option name (long and short) -> the commands its row names."""
    rows: dict[str, set[str]] = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`-"):
            commands = {c.strip() for c in cells[1].split(",")}
            for name in re.findall(r"`(-[-\w]+)", cells[0]):
                rows[name] = commands
    return rows


def run_row() -> str:
    return next(line for line in README.splitlines() if line.startswith("| `nsbuild run "))


def documented(command: str) -> set[str]:
    names = {name for name, commands in option_rows().items() if command in commands}
    if command == "run":  # run's own options are listed in its row of the command table: `--env/-e KEY=VALUE`
        for long, short in re.findall(r"`(--[\w-]+)(?:/(-\w))?", run_row()):
            names |= {long, short} - {""}
    return names


def test_every_option_is_documented_for_its_command() -> None:
    for command, table in (("build", BUILD), ("run", RUN)):
        names = documented(command)
        for option in table:
            assert names & set(option.names), f"README documents none of {option.names} for {command}"


def test_the_readme_documents_no_option_the_table_lacks() -> None:
    for command, table in (("build", BUILD), ("run", RUN)):
        known = {name for option in table for name in option.names} | {"--help", "-h"}
        assert documented(command) <= known, documented(command) - known


def test_the_parser_of_the_readme_reads_rows() -> None:
    rows = option_rows()
    assert rows["--strategy"] == {"build", "run", "plan"} and rows["-s"] == rows["--strategy"]
    assert {"--env", "-e", "--share", "--unconfined"} <= documented("run")
