"""The lean entry point parses `build` and `run` exactly as the typer CLI does, or defers to it."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from typer.main import get_command

from builder.cli.app import app
from builder.cli.entry import parse_build, parse_run
from builder.runtime.run import command_args

GROUP = get_command(app)
TOKENS = ["r.toml", "dev", "--strategy", "-s", "unshare", "--strategy=auto", "--replace", "--json", "--name",
          "x1", "--name=x2", "--state-dir", "/st", "--state-dir=/s2", "--", "-", "sh", "-c", "--help", "-h",
          "-sunshare", "-s=auto", "--bogus", "true", "--locked", "--quiet", "-q", "-qs",
          "--count", "-n", "3", "--count=2", "x", "--no-check", "-n=4", "007", "--env", "A=1", "-e", "--env=B=2",
          "--cwd", "/w", "--user", "-u", "nobody", "-uroot", "--network", "none", "--hostname", "h", "--share",
          "pid", "--unconfined", "--unconfined=1"]


def typer_params(command: str, args: list[str]) -> dict | None:
    try:
        ctx = GROUP.commands[command].make_context(command, list(args))  # type: ignore[attr-defined]
    except BaseException:  # click reports usage errors and --help by raising
        return None
    return ctx.params


def check_build(args: list[str]) -> None:
    lean = parse_build(args)
    if lean is None:
        return  # typer decides
    assert typer_params("build", args) == lean, args


def check_run(args: list[str]) -> None:
    lean = parse_run(args)
    if lean is None:
        return
    params = typer_params("run", args)
    assert params is not None, args
    assert {"target": params["target"], "command": command_args(params["command"]),
            "state_dir": params["state_dir"], "strategy": params["strategy"], "env": list(params["env"] or []),
            "cwd": params["cwd"], "user": params["user"], "network": params["network"],
            "hostname": params["hostname"], "share": list(params["share"] or []),
            "unconfined": params["unconfined"]} == lean, args


@pytest.mark.parametrize("args", [
    ["r.toml"], [], ["r.toml", "--replace", "--json"], ["--replace", "r.toml"], ["-s", "unshare", "r.toml"],
    ["r.toml", "--strategy=unshare", "--name", "n"], ["--state-dir", "/x", "r.toml"], ["--", "r.toml"],
    ["--name=n", "--state-dir=/y", "--json"], ["r.toml", "--locked", "-q"], ["--quiet", "r.toml"],
    ["r.toml", "--count", "500"], ["-n", "3", "--no-check", "r.toml"], ["--count=2", "r.toml"],
])
def test_build_syntax(args: list[str]) -> None:
    assert parse_build(args) is not None
    check_build(args)


@pytest.mark.parametrize("args", [
    ["dev"], ["dev", "--", "sh", "-c", "exit 3"], ["dev", "true"], ["--state-dir", "/x", "dev", "--", "a"],
    ["--state-dir=/x", "-s", "unshare", "r.toml", "--", "--", "b"], ["--", "dev", "a"], ["r.toml", "--"],
    ["--env", "A=1", "-e", "B=2", "--env=C=3", "--cwd", "/w", "--user", "1000:1000", "dev", "--", "id"],
    ["-u", "nobody", "--network=none", "--hostname", "h", "--share", "pid", "--share=ipc", "--unconfined", "dev"],
])
def test_run_syntax(args: list[str]) -> None:
    assert parse_run(args) is not None
    check_run(args)


def test_help_and_unknown_options_go_to_typer() -> None:
    for args in (["--help"], ["-h"], ["r.toml", "--bogus"], ["a.toml", "b.toml"]):
        assert parse_build(args) is None
    for args in (["--help"], [], ["dev", "-x"], ["--bogus", "dev"]):
        assert parse_run(args) is None


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=7))
def test_same_meaning_as_typer(args: list[str]) -> None:
    check_build(args)
    check_run(args)
