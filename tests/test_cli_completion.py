"""Shell completion (typer's, as bash asks for it): commands, options, and the values nsbuild knows:
sandbox names for run and rm, strategies, plan formats, recipe files."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import nsbuild_cmd


def complete(words: str, state: Path, cwd: Path) -> list[str]:
    """What `nsbuild` offers for the last word of `words` (bash: one candidate a line)."""
    parts = words.split(" ")
    env = dict(os.environ, _NSBUILD_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(len(parts) - 1),
               NSBUILD_STATE_DIR=str(state))
    proc = subprocess.run(nsbuild_cmd(), env=env, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc
    return proc.stdout.split()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    for name in ("alpha", "beta", "dev"):
        (path / f"{name}.json").write_text("{}")
    return path


@pytest.mark.parametrize("words,expected", [
    ("nsbuild r", ["run", "rm"]),
    ("nsbuild run ", ["alpha", "beta", "dev", "sub/", "x.toml"]),
    ("nsbuild run a", ["alpha"]),
    ("nsbuild run x", ["x.toml"]),
    ("nsbuild run -s unshare d", ["dev"]),
    ("nsbuild rm ", ["alpha", "beta", "dev"]),
    ("nsbuild rm alpha b", ["beta"]),
    ("nsbuild build --strategy ", ["auto", "fsmount-namespace", "open-tree-namespace", "unshare"]),
    ("nsbuild run -s o", ["open-tree-namespace"]),
    ("nsbuild plan x.toml -s f", ["fsmount-namespace"]),
    ("nsbuild plan -f ", ["table", "strace", "json"]),
])
def test_completes(state: Path, tmp_path: Path, words: str, expected: list[str]) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "x.toml").write_text("")
    (work / "notes.txt").write_text("")
    assert complete(words, state, work) == expected


def test_names_from_the_state_dir_on_the_command_line(state: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "gamma.json").write_text("{}")
    assert complete(f"nsbuild rm --state-dir {other} ", state, tmp_path) == ["gamma"]
    assert complete(f"nsbuild run --state-dir {other} g", state, tmp_path) == ["gamma"]


def test_an_unreadable_state_dir_completes_nothing_and_says_nothing(tmp_path: Path) -> None:
    assert complete("nsbuild rm ", tmp_path / "absent", tmp_path) == []
