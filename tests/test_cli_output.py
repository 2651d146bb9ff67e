"""What the CLI prints for humans, also when stdout is a pipe or a file."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RECIPES, needs_root


@needs_root
def test_ls_cuts_nothing_when_piped(nsbuild, tmp_path: Path) -> None:
    state = tmp_path / ("a-rather-long-state-directory-" * 3)
    name = "n" * 63
    env = {"NSBUILD_STATE_DIR": str(state)}
    try:
        nsbuild("build", str(RECIPES / "layers.toml"), "--name", name, env=dict(nsbuild.env, **env))
        listed = nsbuild("ls", env=dict(nsbuild.env, **env)).stdout  # captured: not a terminal
        assert "…" not in listed
        assert name in listed and str(state / f"{name}.mnt") in listed
    finally:
        nsbuild("rm", "--all", env=dict(nsbuild.env, **env))
    assert not state.exists()


def test_gc_dry_run_says_what_it_would_do(nsbuild, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    assert nsbuild("gc", "-n").stdout == f"would remove 0 entries from {tmp_path / 'store'}\n"


@pytest.mark.parametrize("command,text", [
    ("check", "Check that [run]'s command starts in RECIPE's tree"),
    ("run", "Command to run [default: [run] command]."),
    ("build", "Persist under this name instead of [sandbox] name."),
    ("build", "Check first that [run]'s command starts in the tree"),
])
def test_help_keeps_words_in_brackets(nsbuild, command: str, text: str) -> None:
    helptext = nsbuild(command, "--help", env=dict(nsbuild.env, COLUMNS="200")).stdout
    assert text in " ".join(helptext.split()), helptext
