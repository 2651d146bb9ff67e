"""The same recipe gives the same tree under every strategy (mount ids aside)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder.kernel.features import STRATEGIES, probe, supported

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


HASHES = ("find / -path /proc -prune -o -path /usr -prune -o -path /sys -prune -o -path /dev -prune -o "
          "-type f -exec sha256sum {} + | sort")


def every_kind_recipe(tmp_path: Path) -> Path:
    """A directory, an archive, an OCI layout (with a whiteout), an image and host binaries, bottom to top."""
    from test_images import make_image
    from test_oci import two_layer_image
    from test_store import archive, good

    archive(tmp_path / "base.tar.gz", good)
    two_layer_image(tmp_path / "layout")
    (tmp_path / "img" / "etc").mkdir(parents=True)
    (tmp_path / "img" / "etc" / "from-image").write_text("image\n")
    make_image("squashfs", tmp_path / "img", tmp_path / "top.sqfs")
    (tmp_path / "dir" / "etc").mkdir(parents=True)
    (tmp_path / "dir" / "etc" / "from-dir").write_text("dir\n")
    recipe = tmp_path / "kinds.toml"
    recipe.write_text('[sandbox]\nname = "kinds"\n'
                      '[[layer]]\npath = "dir"\n[[layer]]\narchive = "base.tar.gz"\n'
                      '[[layer]]\noci = "layout"\nref = "v1"\n[[layer]]\nimage = "top.sqfs"\n'
                      '[[layer]]\nbinaries = ["/bin/sh"]\n'
                      '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n'
                      '[[mount]]\ntarget = "/proc"\ntype = "proc"\n')
    return recipe


def test_same_recipe_and_lock_give_the_same_tree(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    """Built twice per strategy from one lock file: identical listings, content hashes included."""
    recipe = every_kind_recipe(tmp_path)
    nsbuild("lock", str(recipe))
    trees = []
    for strategy in AVAILABLE:
        for attempt in range(2):
            name = f"kinds-{attempt}-{strategy}"
            nsfs = json.loads(nsbuild("build", str(recipe), "--locked", "-s", strategy, "--name", name,
                                      "--json").stdout)["nsfs"]
            hashes = subprocess.run(["nsenter", f"--mount={nsfs}", "/usr/bin/sh", "-c", HASHES],
                                    capture_output=True, text=True, check=True).stdout
            trees.append((strategy, tree(nsfs), hashes))
            nsbuild("rm", name)
    first = trees[0]
    assert "/etc/keep" in first[1][1] and "/etc/gone" not in first[1][1] and "/etc/from-image" in first[1][1]
    assert "/etc/from-dir" in first[1][1] and "/etc/motd" in first[1][1] and len(first[2].splitlines()) >= 6
    assert "/lib64 l" in first[1][1]  # from the binaries layer: the closure's symlink chain
    for strategy, listing, hashes in trees[1:]:
        assert (listing, hashes) == (first[1], first[2]), f"{strategy} differs from {first[0]}"
