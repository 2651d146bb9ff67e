"""The same recipe gives the same tree under every strategy (mount ids aside)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder.features import STRATEGIES, probe, supported

from conftest import RECIPES, needs_root

pytestmark = needs_root
AVAILABLE = [s for s in STRATEGIES if supported(probe(), s)]
LISTING = ("find / -path /proc -prune -o -path /usr -prune -o -path /work -prune -o -path /sys -prune -o "
           "-printf '%p %y %m %U:%G %s %l\\n' | sort")


def tree(nsfs: str) -> tuple[list, str]:
    mounts = json.loads(subprocess.run(
        ["nsenter", f"--mount={nsfs}", "findmnt", "-J", "-l", "-o", "TARGET,FSTYPE,OPTIONS,PROPAGATION"],
        capture_output=True, text=True, check=True).stdout)["filesystems"]
    mounts.sort(key=lambda fs: fs["target"])  # mountinfo order follows mount ids, which differ
    files = subprocess.run(["nsenter", f"--mount={nsfs}", "sh", "-c", LISTING],
                           capture_output=True, text=True, check=True).stdout
    return mounts, files


@pytest.mark.skipif(len(AVAILABLE) < 2, reason=f"only {AVAILABLE} on this kernel: compared in test_kernel_vm.py")
@pytest.mark.parametrize("recipe", ["dev", "layers"])
def test_every_strategy_builds_the_same_tree(nsbuild, state_dir: Path, recipe: str) -> None:
    trees = {}
    for strategy in AVAILABLE:
        name = f"{recipe}-{strategy}"
        nsfs = json.loads(nsbuild("build", str(RECIPES / f"{recipe}.toml"), "-s", strategy, "--name", name,
                                  "--json").stdout)["nsfs"]
        trees[strategy] = tree(nsfs)
        nsbuild("rm", name)
    first = trees[AVAILABLE[0]]
    assert len(first[0]) >= 5 and first[1].count("\n") > 10
    for strategy in AVAILABLE[1:]:
        assert trees[strategy][0] == first[0], f"mounts differ: {AVAILABLE[0]} vs {strategy}"
        assert trees[strategy][1] == first[1], f"files differ: {AVAILABLE[0]} vs {strategy}"
