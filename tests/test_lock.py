"""Lock files (`nsbuild lock`, `build --locked`) and store garbage collection (`nsbuild gc`)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


from builder.layers.kinds.path import tree_digest

from conftest import needs_root
from test_store import archive, good

pytestmark = needs_root


def dir_recipe(tmp_path: Path) -> Path:
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "motd").write_text("hello\n")
    os.symlink("motd", layer / "etc" / "link")
    tar = archive(tmp_path / "base.tar.gz", good)
    path = tmp_path / "r.toml"
    path.write_text(f'[sandbox]\nname = "locked"\n[[layer]]\narchive = "{tar.name}"\n'
                    '[[layer]]\npath = "layer"\n[root]\nupper = "tmpfs"\n')
    return path


def test_tree_digest_is_content_not_times(tmp_path: Path) -> None:
    src = tmp_path / "a"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x" * 10)
    os.symlink("d/f", src / "l")
    first = tree_digest(str(src))
    copy = tmp_path / "b"
    shutil.copytree(src, copy, symlinks=True)
    os.utime(copy / "d" / "f", (1, 1))
    assert tree_digest(str(copy)) == first  # same paths, modes, owners, contents, targets
    os.chmod(copy / "d" / "f", 0o600)
    assert tree_digest(str(copy)) != first
    os.chmod(copy / "d" / "f", os.stat(src / "d" / "f").st_mode & 0o7777)
    os.setxattr(copy / "d" / "f", "user.k", b"v")
    assert tree_digest(str(copy)) != first
    os.removexattr(copy / "d" / "f", "user.k")
    os.unlink(copy / "l")
    os.symlink("d", copy / "l")
    assert tree_digest(str(copy)) != first


def test_lock_then_locked_build_then_drift(nsbuild, tmp_path: Path, state_dir: Path) -> None:
    recipe = dir_recipe(tmp_path)
    proc = nsbuild("build", str(recipe), "--locked", check=False)
    assert proc.returncode == 2 and "no lock file" in proc.stderr and "nsbuild lock" in proc.stderr
    assert not state_dir.exists()

    nsbuild("lock", str(recipe))
    lock = json.loads(Path(str(recipe) + ".lock").read_text())
    assert set(lock["layers"]) == {"layer[0]", "layer[1]"}
    assert lock["layers"]["layer[0]"]["kind"] == "archive" and len(lock["store"]) == 1
    nsbuild("build", str(recipe), "--locked", "--json")

    # a file of the directory layer changes: the locked build says which layer drifted
    (tmp_path / "layer" / "etc" / "motd").write_text("changed\n")
    proc = nsbuild("build", str(recipe), "--locked", "--replace", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "layer[1]" in proc.stderr and "layer[0]" not in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "layer" / "etc" / "motd").write_text("hello\n")
    nsbuild("build", str(recipe), "--locked", "--replace")

    # the archive is replaced by another one
    archive(tmp_path / "base.tar.gz", lambda t: (good(t), t.add(str(recipe), "extra")))
    proc = nsbuild("build", str(recipe), "--locked", "--replace", check=False)
    assert proc.returncode == 2 and "layer[0]" in proc.stderr and "layer[1]" not in proc.stderr, proc.stderr

    # the recipe itself is edited
    nsbuild("lock", str(recipe))
    recipe.write_text(recipe.read_text() + '[run]\ncommand = ["/bin/true"]\n')
    proc = nsbuild("build", str(recipe), "--locked", "--replace", check=False)
    assert proc.returncode == 2 and "the recipe itself changed" in proc.stderr


def test_gc_keeps_what_locks_and_sandboxes_use(nsbuild, tmp_path: Path, state_dir: Path) -> None:
    store = tmp_path / "store" / "sha256"
    recipes = {}
    (tmp_path / "r0").write_text("x")
    for name in ("kept-by-lock", "kept-by-sandbox", "garbage"):
        d = tmp_path / name
        d.mkdir()
        tar = archive(d / "a.tar.gz", lambda t, n=name: (good(t), t.add(str(tmp_path / "r0"), n)))
        recipes[name] = d / "r.toml"
        recipes[name].write_text(f'[sandbox]\nname = "{name}"\n[[layer]]\narchive = "{tar.name}"\n')
    for name, path in recipes.items():
        nsbuild("build", str(path))
    assert len(os.listdir(store)) == 3
    nsbuild("lock", str(recipes["kept-by-lock"]))
    nsbuild("rm", "kept-by-lock", "garbage")

    dry = json.loads(nsbuild("gc", "--dry-run", "--json").stdout)
    assert len(dry["removed"]) == 1 and len(os.listdir(store)) == 3  # a dry run removes nothing
    done = json.loads(nsbuild("gc", "--json").stdout)
    assert done["removed"] == dry["removed"] and len(os.listdir(store)) == 2
    # both survivors still build from the store, without unpacking again
    before = set(os.listdir(store))
    nsbuild("build", str(recipes["kept-by-lock"]))
    nsbuild("build", str(recipes["kept-by-sandbox"]), "--replace")
    assert set(os.listdir(store)) == before

    # once the lock file and the sandboxes are gone, gc frees everything
    os.unlink(str(recipes["kept-by-lock"]) + ".lock")
    nsbuild("rm", "kept-by-lock", "kept-by-sandbox")
    nsbuild("gc")
    assert os.listdir(store) == []
    roots = tmp_path / "store" / "roots"
    assert [os.readlink(roots / n) for n in os.listdir(roots)] == [str(state_dir)]  # the lock's root went too
