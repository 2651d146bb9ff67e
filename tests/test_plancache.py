"""Warm builds run the cached plan; any change to what the plan was made from plans anew."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import needs_root, nsbuild_cmd

pytestmark = needs_root

RECIPE = """[sandbox]
name = "cached"
[[layer]]
path = "layer"
[[mount]]
target = "/extra"
type = "bind"
source = "extra"
optional = true
[[path]]
path = "/etc/motd"
content = "{motd}"
"""


def warm_build_modules(nsbuild, recipe: Path) -> set[str]:
    """Build through the lean entry point in a fresh interpreter; the modules it imported."""
    code = ("import sys; from builder.cli.entry import main; "
            f"sys.argv = ['nsbuild', 'build', {str(recipe)!r}, '--replace', '-q']; main(); "
            "print(' '.join(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=nsbuild.env,
                          cwd=recipe.parent / "cwd", check=True)  # where the nsbuild fixture runs: $CWD is in the key
    return set(proc.stdout.split())


def motd(nsbuild) -> str:
    return nsbuild("run", "cached", "--", "/bin/sh", "-c", "cat /etc/motd; ls /extra; true").stdout


def test_warm_build_skips_toml_recipe_and_planner(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "layer" / "usr").mkdir(parents=True)
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(motd="one") + '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n'
                      '[[path]]\npath = "/bin"\nsymlink = "usr/bin"\n[[path]]\npath = "/lib64"\nsymlink = "usr/lib64"\n'
                      '[[path]]\npath = "/lib"\nsymlink = "usr/lib"\n')
    nsbuild("build", str(recipe))
    nsbuild("build", str(recipe), "--replace")  # the template is pinned now: this plan is cached
    modules = warm_build_modules(nsbuild, recipe)
    heavy = {"tomllib", "dataclasses", "builder.recipe.model", "builder.plan.planner", "json", "socket", "typing"}
    assert not modules & heavy, modules & heavy
    assert motd(nsbuild) == "one"

    # the recipe changes: planned anew
    recipe.write_text(recipe.read_text().replace('content = "one"', 'content = "two"'))
    nsbuild("build", str(recipe), "--replace")
    assert motd(nsbuild) == "two"

    # an optional bind source that was missing appears: planned anew, and it is mounted
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "file").write_text("x")
    nsbuild("build", str(recipe), "--replace")
    assert motd(nsbuild) == "twofile\n"

    # a layer directory replaced by another one (new inode): planned anew, not a stale fd path
    os.rename(tmp_path / "layer", tmp_path / "old-layer")
    (tmp_path / "layer" / "usr").mkdir(parents=True)
    (tmp_path / "layer" / "etc").mkdir()
    (tmp_path / "layer" / "etc" / "issue").write_text("new layer\n")
    nsbuild("build", str(recipe), "--replace")
    assert nsbuild("run", "cached", "--", "/bin/cat", "/etc/issue").stdout == "new layer\n"

    # a layer directory removed: the same clear recipe error (exit 2) as without a cache
    os.rename(tmp_path / "layer", tmp_path / "gone")
    proc = nsbuild("build", str(recipe), "--replace", check=False)
    assert proc.returncode == 2 and "layer[0].path" in proc.stderr and "Traceback" not in proc.stderr
    nsbuild("rm", "cached")


def test_archive_and_oci_plans_are_cached_until_the_input_changes(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    from test_oci import two_layer_image
    from test_store import archive, good

    archive(tmp_path / "base.tar.gz", good)
    two_layer_image(tmp_path / "layout")
    recipe = tmp_path / "r.toml"
    recipe.write_text('[sandbox]\nname = "cached"\n[[layer]]\narchive = "base.tar.gz"\n'
                      '[[layer]]\noci = "layout"\nref = "v1"\n'
                      '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n')
    nsbuild("build", str(recipe))
    nsbuild("build", str(recipe), "--replace")
    modules = warm_build_modules(nsbuild, recipe)
    assert not modules & {"tarfile", "tomllib", "builder.layers.store", "builder.layers.oci"}, modules
    # the archive is replaced by another one: its new content is unpacked and used
    archive(tmp_path / "base.tar.gz", lambda t: (good(t), t.add(str(recipe), "etc/added")))
    nsbuild("build", str(recipe), "--replace")
    assert "[sandbox]" in nsbuild("run", "cached", "--", "/usr/bin/cat", "/etc/added").stdout
    assert len(os.listdir(tmp_path / "store" / "sha256")) == 4  # two archives, two OCI blobs
    # a gc meanwhile keeps what the cached plan uses (the sandbox references it)
    nsbuild("gc")
    nsbuild("build", str(recipe), "--replace")
    assert "[sandbox]" in nsbuild("run", "cached", "--", "/usr/bin/cat", "/etc/added").stdout
    # another store: the plan names the old store's paths, so it is made anew from the new store
    env = dict(nsbuild.env, NSBUILD_STORE=str(tmp_path / "store2"))  # type: ignore[attr-defined]
    subprocess.run(nsbuild_cmd() + ["build", str(recipe), "--replace"], env=env, cwd=tmp_path / "cwd", check=True,
                   capture_output=True)
    assert len(os.listdir(tmp_path / "store2" / "sha256")) == 3
    nsbuild("rm", "cached")
