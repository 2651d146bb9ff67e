"""Planner: golden plans, strategy selection from faked probes, renderings. No root needed."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from builder.plan import render
from builder.errors import UsageError
from builder.kernel.features import STRATEGIES, Features, pick_strategy, supported
from builder.plan.steps import Pin
from builder.plan.planner import make_plan
from builder.layers.resolved import Resolved
from builder.recipe.load import load
from builder.sandbox.session import Session

from conftest import RECIPES

GOLDEN = Path(__file__).parent / "golden"
K72 = Features("7.2.13-test", new_mount_api=True, fsmount_namespace=True, open_tree_namespace=True)
K618 = Features("6.18.0-test", new_mount_api=True, fsmount_namespace=False, open_tree_namespace=False)
K68 = Features("6.8.0-test", new_mount_api=True, fsmount_namespace=False, open_tree_namespace=False)
CWD = "/tmp"  # exists everywhere; golden plans show it as the bind source of $CWD


def resolved(path: str, cwd: str | None = None) -> Resolved:
    """A recipe as the planner takes it: loaded, its layers resolved (nothing written; these recipes
    have directory and image layers, which need no content store)."""
    return Session().resolve(load(path, cwd), unpack=False)


K72_FILES = dataclasses.replace(K72, release="7.2.13-erofs-file", erofs_file=True)
# recipes with directory layers only (the others need their layers resolved or their image made)
CASES = [(name, strategy, K72) for name in ("dev", "layers") for strategy in STRATEGIES]
CASES.append(("layers", "unshare", K68))  # overlayfs without fd layers: /proc/self/fd/N strings
CASES += [("images", strategy, f) for f in (K72, K72_FILES) for strategy in STRATEGIES]
CASES += [("image-root", strategy, K72) for strategy in STRATEGIES]

IMAGES = """[sandbox]
name = "images"
[[layer]]
image = "$IMAGES/base.erofs"
type = "erofs"
[[layer]]
image = "$IMAGES/tools.sqfs"
type = "squashfs"
[[mount]]
target = "/proc"
type = "proc"
"""


def image_recipe(name: str, tmp: Path) -> Path:
    """Image layers need files to exist; their content does not matter for planning."""
    for image in ("base.erofs", "tools.sqfs"):
        (tmp / image).write_bytes(b"")
    text = IMAGES.replace("$IMAGES", str(tmp))
    if name == "image-root":  # one image as the whole root: FSMOUNT_NAMESPACE mounts it as a namespace
        text = text.split("[[layer]]\nimage = \"" + str(tmp) + "/tools.sqfs")[0] + '[root]\nupper = "none"\n'
    path = tmp / f"{name}.toml"
    path.write_text(text.replace('name = "images"', f'name = "{name}"'))
    return path


def plan_text(name: str, strategy: str, features: Features, tmp: Path | None = None) -> str:
    path = image_recipe(name, tmp) if name.startswith("image") and tmp else RECIPES / f"{name}.toml"
    recipe = resolved(str(path), cwd=CWD)
    # persisted as the first build in a fresh state directory does (the default one)
    pin = Pin(f"/run/nsbuild/{recipe.name}.mnt", setup="bind", upper=False)
    text = render.strace(make_plan(recipe, features, strategy, pin=pin))
    return text.replace(str(RECIPES), "$RECIPES").replace(str(tmp), "$IMAGES") if tmp else \
        text.replace(str(RECIPES), "$RECIPES")


@pytest.mark.parametrize("name,strategy,features", CASES,
                         ids=[f"{n}-{s}-{f.release}" for n, s, f in CASES])
def test_golden_plan(name: str, strategy: str, features: Features, tmp_path: Path) -> None:
    """Regenerate with NSBUILD_UPDATE_GOLDEN=1 after an intended change, and review the diff."""
    text = plan_text(name, strategy, features, tmp_path)
    golden = GOLDEN / f"{name}.{strategy}.{features.release}.strace"
    if os.environ.get("NSBUILD_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


def test_plan_is_a_pure_function() -> None:
    recipe = resolved(str(RECIPES / "dev.toml"), cwd=CWD)
    assert make_plan(recipe, K72, "unshare") == make_plan(recipe, K72, "unshare")


def test_every_step_names_its_recipe_entry() -> None:
    for strategy in STRATEGIES:
        plan = make_plan(resolved(str(RECIPES / "dev.toml"), cwd=CWD), K72, strategy)
        assert all(step.origin for step in plan.steps)
        origins = {step.origin for step in plan.steps}
        assert {"root", "root.upper", "mount[0]", "path[0]"} <= origins or {"root", "mount[0]", "path[0]"} <= origins


def test_strategy_shapes() -> None:
    recipe = resolved(str(RECIPES / "layers.toml"), cwd=CWD)
    fsm = make_plan(recipe, K72, "fsmount-namespace")
    root = [s for s in fsm.steps if s.call == "fsmount" and s.out == "%ns"]
    assert len(root) == 1 and "FSMOUNT_NAMESPACE" in root[0].args[1]
    assert [s.call for s in fsm.steps if s.where == "child"][:2] == ["setns", "openat"]
    assert not any(s.call in ("pivot_root", "unshare") for s in fsm.steps)

    otn = make_plan(recipe, K72, "open-tree-namespace")
    assert all(s.where == "host" for s in otn.steps)
    assert otn.steps[-1].call == "open_tree" and "OPEN_TREE_NAMESPACE" in otn.steps[-1].args[2]

    uns = make_plan(recipe, K618, "unshare")
    child = [s.call for s in uns.steps if s.where == "child"]
    assert child[:4] == ["unshare", "openat", "mount_setattr", "move_mount"]
    assert child[-4:] == ["fchdir", "pivot_root", "umount2", "chdir"]


def test_layers_are_fds_not_paths() -> None:
    plan = make_plan(resolved(str(RECIPES / "layers.toml"), cwd=CWD), K618, "unshare")
    lowers = [s for s in plan.steps if s.call == "fsconfig" and s.args[2] == "lowerdir+"]
    assert len(lowers) == 3 and all(s.args[1] == ("FSCONFIG_SET_FD",) for s in lowers)
    # top layer first: layer[2] is "config"
    assert [s.origin for s in lowers] == ["layer[2]", "layer[1]", "layer[0]"]


def test_sandbox_paths_resolve_in_root() -> None:
    plan = make_plan(resolved(str(RECIPES / "dev.toml"), cwd=CWD), K618, "unshare")
    opens = [s for s in plan.steps if s.call == "openat2"]
    assert opens and all("RESOLVE_IN_ROOT" in s.args[3] and s.args[0] == "%root" for s in opens)
    # every move_mount onto a sandbox path goes through an fd from openat2
    targets = {s.out for s in opens}
    moves = [s for s in plan.steps if s.call == "move_mount" and s.args[2] != "AT_FDCWD"]
    assert moves and all(s.args[2] in targets for s in moves)


def test_json_and_table_render_the_same_steps() -> None:
    plan = make_plan(resolved(str(RECIPES / "dev.toml"), cwd=CWD), K72, "open-tree-namespace")
    data = json.loads(json.dumps(render.as_dict(plan)))
    assert len(data["steps"]) == len(plan.steps)
    assert [s["text"] for s in data["steps"]] == [render.strace_line(s) for s in plan.steps]
    from rich.console import Console

    console = Console(record=True, width=300)
    console.print(render.table(plan))
    assert render.strace_line(plan.steps[0]) in console.export_text()


@pytest.mark.parametrize("features,expected", [
    (K72, "fsmount-namespace"),
    (Features("7.0.0", True, False, True), "open-tree-namespace"),
    (K618, "unshare"),
])
def test_auto_picks_the_best_supported(features: Features, expected: str) -> None:
    assert pick_strategy(features, "auto") == expected


def test_forcing_a_missing_strategy_is_a_clear_error() -> None:
    with pytest.raises(UsageError) as info:
        pick_strategy(K618, "fsmount-namespace")
    assert "needs Linux 7.1+" in str(info.value) and info.value.exit_code == 2
    with pytest.raises(UsageError):
        pick_strategy(K72, "clone3")


def test_no_new_mount_api() -> None:
    old = Features("5.4.0", new_mount_api=False, fsmount_namespace=False, open_tree_namespace=False)
    assert not any(supported(old, s) for s in STRATEGIES)
    with pytest.raises(UsageError):
        pick_strategy(old)


def test_fsmount_namespace_with_a_bind_root_uses_open_tree(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "r.toml").write_text('[sandbox]\nname = "r"\n[[layer]]\npath = "rootfs"\n[root]\nupper = "none"\n')
    plan = make_plan(resolved(str(tmp_path / "r.toml")), K72, "fsmount-namespace")
    assert plan.strategy == "open-tree-namespace" and plan.notes
