"""Batches: `nsbuild build --count N` makes N sandboxes from one plan with one worker process."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import RECIPES, needs_root, nsbuild_cmd

pytestmark = needs_root


def test_batch_builds_independent_sandboxes(nsbuild, state_dir: Path) -> None:
    out = json.loads(nsbuild("build", str(RECIPES / "layers.toml"), "--count", "40", "--json").stdout)
    assert out["names"] == [f"layers-{i}" for i in range(40)]
    listed = json.loads(nsbuild("ls", "--json").stdout)
    assert sorted(row["name"] for row in listed) == sorted(out["names"])
    assert all(row["status"] == "ok" for row in listed)
    # each has its own tmpfs upper: a write in one is not seen in another
    nsbuild("run", "layers-0", "--", "/bin/sh", "-c", "echo mine > /opt/app/note")
    assert nsbuild("run", "layers-0", "--", "/bin/cat", "/opt/app/note").stdout == "mine\n"
    assert nsbuild("run", "layers-39", "--", "/bin/sh", "-c", "test ! -e /opt/app/note && /usr/local/bin/hello"
                   ).stdout.startswith("hello from the tools layer")
    nsbuild("rm", *out["names"])
    assert json.loads(nsbuild("ls", "--json").stdout) == []


def test_a_failing_batch_removes_what_it_made(nsbuild, state_dir: Path) -> None:
    nsbuild("build", str(RECIPES / "layers.toml"), "--name", "x-3")  # in the way of the batch's 4th sandbox
    before = sorted(os.listdir(state_dir))
    proc = nsbuild("build", str(RECIPES / "layers.toml"), "--name", "x", "--count", "6", check=False)
    assert proc.returncode == 1 and "'x-3' exists already" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(state_dir)) == before  # x-0 ... x-2 were removed again; x-3 is untouched
    nsbuild("rm", "x-3")


def test_a_failing_step_stops_the_batch_cleanly(nsbuild, state_dir: Path) -> None:
    env = dict(nsbuild.env, NSBUILD_TEST_FAULT="5:EIO")
    proc = subprocess.run(nsbuild_cmd() + ["build", str(RECIPES / "layers.toml"), "--count", "5", "--no-check"],
                          capture_output=True, text=True, env=env, cwd=state_dir.parent / "cwd")
    assert proc.returncode == 1 and "step 6" in proc.stderr and "EIO" in proc.stderr, proc.stderr
    assert not state_dir.exists()  # a batch that fails at once leaves nothing, as one build does
