"""Host-binaries layers (programs copied with their shared-library closure) and the pre-flight
check (`nsbuild check`, and `nsbuild build` before it mounts anything)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import RECIPES, mountinfo, needs_root
from test_images import loops, make_image, wait_for_loops

pytestmark = needs_root


def test_tools_recipe_runs_python_and_sh_from_copies_only(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    nsbuild("build", str(RECIPES / "tools.toml"))
    assert nsbuild("run", "tools").stdout.startswith("python 3.") and "ok" in nsbuild("run", "tools").stdout
    listing = nsbuild("run", "tools", "--", "/bin/sh", "-c", "ls /usr/bin; ls /; test ! -e /usr/bin/bash").stdout
    assert set(listing.split()) >= {"sh", "dash", "python3", "python3.11", "ls", "cat", "usr", "proc"}
    assert "bash" not in listing.split()  # only the closure: nothing else of the host's /usr
    store = tmp_path / "store" / "sha256"
    [entry] = os.listdir(store)
    assert entry.endswith("-bin") and (store / entry / "lib64").is_symlink()  # symlink chains kept
    inode = (store / entry).stat().st_ino
    nsbuild("build", str(RECIPES / "tools.toml"), "--replace")  # warm: the store entry is reused
    assert os.listdir(store) == [entry] and (store / entry).stat().st_ino == inode
    nsbuild("rm", "tools")


def test_binaries_lock_drift_in_extra_files(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "conf").write_text("a=1\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[sandbox]\nname = "bin"\n[[layer]]\nbinaries = ["/bin/sh"]\nfiles = ["{tmp_path}/conf"]\n'
                      f'[run]\ncommand = ["/bin/sh", "-c", "read x < {tmp_path}/conf; echo $x"]\n')
    nsbuild("lock", str(recipe))
    nsbuild("build", str(recipe), "--locked")
    assert nsbuild("run", "bin").stdout == "a=1\n"  # the extra file, copied at its host path
    (tmp_path / "conf").write_text("a=2\n")
    proc = nsbuild("build", str(recipe), "--locked", "--replace", check=False)
    assert proc.returncode == 2 and "layer[0]" in proc.stderr, proc.stderr


def whiteout_libc(tmp_path: Path) -> Path:
    """A directory layer that deletes libc from a binaries layer below it."""
    top = tmp_path / "top" / "usr" / "lib" / "x86_64-linux-gnu"
    top.mkdir(parents=True)
    os.mknod(top / "libc.so.6", 0o020000 | 0o600, os.makedev(0, 0))
    recipe = tmp_path / "r.toml"
    recipe.write_text('[sandbox]\nname = "broken"\n[[layer]]\nbinaries = ["/bin/sh"]\n[[layer]]\npath = "top"\n'
                      '[run]\ncommand = ["/bin/sh", "-c", "true"]\n')
    return recipe


def test_check_names_the_missing_library_and_build_refuses(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    if os.uname().machine != "x86_64":
        return  # the whiteout path above is x86_64's multiarch directory
    recipe = whiteout_libc(tmp_path)
    before = mountinfo()
    proc = nsbuild("check", str(recipe), check=False)
    assert proc.returncode == 2 and "libc.so.6" in proc.stderr and "layer[1]" in proc.stderr, proc.stderr
    proc = nsbuild("build", str(recipe), check=False)
    assert proc.returncode == 2 and "libc.so.6" in proc.stderr and "--no-check" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (state_dir / "broken.mnt").exists() and mountinfo() == before
    nsbuild("build", str(recipe), "--no-check")  # the check can be skipped; then the command fails at run
    assert nsbuild("run", "broken", check=False).returncode != 0
    nsbuild("rm", "broken")


def test_check_reads_image_layers_through_detached_mounts(nsbuild, tmp_path: Path) -> None:
    src = tmp_path / "src" / "etc"
    src.mkdir(parents=True)
    (src / "motd").write_text("hi\n")
    make_image("squashfs", tmp_path / "src", tmp_path / "root.sqfs")
    recipe = tmp_path / "r.toml"
    recipe.write_text('[sandbox]\nname = "img"\n[[layer]]\nimage = "root.sqfs"\n[run]\ncommand = ["/bin/sh"]\n')
    before = loops()
    proc = nsbuild("check", str(recipe), check=False)
    assert proc.returncode == 2 and "/bin/sh" in proc.stderr, proc.stderr
    recipe.write_text(recipe.read_text() + '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n'
                      '[[path]]\npath = "/bin"\nsymlink = "usr/bin"\n[[path]]\npath = "/lib64"\nsymlink = "usr/lib64"\n'
                      '[[path]]\npath = "/lib"\nsymlink = "usr/lib"\n')
    assert "ok" in nsbuild("check", str(recipe)).stdout
    assert wait_for_loops(before) == before


def test_a_passed_check_is_remembered(nsbuild, state_dir: Path) -> None:
    nsbuild("build", str(RECIPES / "layers.toml"))
    meta = json.loads((state_dir / "layers.json").read_text())
    assert len(meta["checked"]) == 64
    nsbuild("rm", "layers")
