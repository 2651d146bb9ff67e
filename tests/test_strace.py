"""Strace equals plan: the mount-API and namespace syscalls a real build makes are, in order, the
syscalls `nsbuild plan` printed for it just before, persisting included."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.kernel.features import probe
from builder.plan import render
from builder.plan.steps import Pin
from builder.plan.planner import make_template_plan

from conftest import RECIPES, needs_root, nsbuild_cmd

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("strace") is None,
                                             reason="strace is not installed (apt-get install strace)")]

# the syscalls that make mounts and namespaces: what a plan is about
TRACED = ("fsopen", "fsconfig", "fsmount", "open_tree", "move_mount", "mount_setattr", "setns", "unshare",
          "pivot_root", "umount2")
_LINE = re.compile(r"^\d+\s+(?:<\.\.\. )?(\w+)(?: resumed>|\()(.*)$")


def traced(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> list[tuple[str, str]]:
    """(syscall, its text) of each traced call `cmd` makes, its children's too (-f), in order."""
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=" + ",".join(TRACED), "-o", str(log)] + cmd,
                          env=env, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = []
    for line in log.read_text().splitlines():
        m = _LINE.match(line)
        if not m or " resumed>" in line:  # a call's second half under -f: counted at its start
            continue
        calls.append((m.group(1), m.group(2)))
    return calls


def without_probes(calls: list[tuple[str, str]]) -> list[str]:
    """The one exclusion: the feature probes (kernel/features.py, KERNEL-NOTES.md) call fsmount and
    open_tree on fd -1, which the kernel refuses (EBADF, EINVAL) before it does anything."""
    return [name for name, text in calls if not (name in ("fsmount", "open_tree") and text.startswith("-1,"))]


def planned(doc: dict) -> list[str]:
    """The traced calls of a plan (as `nsbuild plan --format json` prints it), in the order the
    executor makes them. A namespace block that the (single-threaded) executor runs itself ends
    with its return home, setns() back into its own namespace, as the block's note says."""
    calls = []
    for block in doc["blocks"]:
        start, end = block["steps"]
        calls += [s["call"] for s in doc["steps"][start:end] if s["call"] in TRACED]
        if block["kind"] == "namespace":
            assert "returns to its own" in block["text"]
            calls.append("setns")
    return calls


def test_a_build_makes_exactly_the_planned_syscalls(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    recipe = str(RECIPES / "layers.toml")
    env, cwd = nsbuild.env, tmp_path / "cwd"  # type: ignore[attr-defined]

    # 1. the first build in a fresh state directory: it sets the directory up, and (unshare
    # strategy) pins the template namespace that later builds copy, by a plan of its own
    first = json.loads(nsbuild("plan", recipe, "--format", "json").stdout)
    assert [s["call"] for s in first["steps"][first["blocks"][-1]["steps"][0]:]][:2] == ["open_tree", "move_mount"]
    made = without_probes(traced(nsbuild_cmd() + ["build", recipe], env, cwd, tmp_path / "first.strace"))
    expected = planned(first)
    if first["strategy"] == "unshare":
        template = make_template_plan(probe(), Pin(str(state_dir / ".template.mnt")))
        expected += planned(render.as_dict(template))
    assert made == expected

    # 2. a warm rebuild that replaces it: the cached plan, from the template, its tmpfs upper and
    # namespace persisted beneath the old ones, which are then detached
    second = json.loads(nsbuild("plan", recipe, "--format", "json").stdout)
    persist = second["steps"][second["blocks"][-1]["steps"][0]:]
    assert [s["call"] for s in persist] == ["mount_setattr", "move_mount", "umount2", "open_tree", "move_mount",
                                            "umount2"]
    assert "MOVE_MOUNT_BENEATH" in persist[1]["args"][4]["flags"] and "MOVE_MOUNT_BENEATH" in persist[4]["args"][4]["flags"]
    calls = traced(nsbuild_cmd() + ["build", "--replace", recipe], env, cwd, tmp_path / "second.strace")
    assert without_probes(calls) == planned(second)
    # strace 6.1 shows MOVE_MOUNT_BENEATH (0x200) as a number
    beneath = [text for name, text in calls if name == "move_mount" and re.search(r"MOVE_MOUNT_BENEATH|0x200", text)]
    assert len(beneath) == 2 and str(state_dir / "layers.upper") in beneath[0] and str(state_dir / "layers.mnt") in beneath[1]
    nsbuild("rm", "layers")
