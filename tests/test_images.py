"""Image layers (erofs, squashfs, ext4) mounted for real: read inside the sandbox; loop devices
released after every build, rm and failure."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.plan import executor
from builder.kernel import syscalls as sc
from builder.sandbox.build import plan_for
from builder.errors import BuildError
from builder.kernel.features import STRATEGIES, probe, supported
from builder.recipe.load import load

from conftest import mountinfo, needs_root, open_fds, own_loops, tally

pytestmark = needs_root
TOOLS = {"erofs": "mkfs.erofs", "squashfs": "mksquashfs", "ext4": "mkfs.ext4"}


def loops() -> set[tuple[str, str]]:
    """Attached loop devices of this test session and their backing files."""
    return own_loops()


def wait_for_loops(expected: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """A namespace's mounts (and so its loop devices) go away shortly after its last reference."""
    for _ in range(100):
        if loops() == expected:
            break
        time.sleep(0.05)
    return loops()


def make_image(kind: str, src: Path, out: Path) -> Path:
    tool = shutil.which(TOOLS[kind])
    assert tool, f"{TOOLS[kind]} is missing: the README's test command installs it"
    if kind == "erofs":
        cmd = [tool, "--quiet", str(out), str(src)]
    elif kind == "squashfs":
        cmd = [tool, str(src), str(out), "-quiet", "-noappend", "-no-progress"]
    else:
        cmd = [tool, "-q", "-d", str(src), str(out), "8M"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def image_recipe(tmp_path: Path, kinds: tuple[str, ...] = ("erofs", "squashfs", "ext4"),
                 upper: str = "tmpfs") -> Path:
    """One image per kind, bottom to top; each adds /layers/KIND and overrides /etc/top."""
    layers = []
    for kind in kinds:
        src = tmp_path / f"src-{kind}"
        (src / "layers").mkdir(parents=True)
        (src / "etc").mkdir()
        (src / "layers" / kind).write_text(f"from {kind}\n")
        (src / "etc" / "top").write_text(f"{kind}\n")
        make_image(kind, src, tmp_path / f"img.{kind}")
        layers.append(f'[[layer]]\nimage = "img.{kind}"\n')
    recipe = tmp_path / "images.toml"
    recipe.write_text(f'[sandbox]\nname = "images"\n{"".join(layers)}[root]\nupper = "{upper}"\n'
                      '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n'
                      '[[path]]\npath = "/lib64"\nsymlink = "usr/lib64"\n'
                      '[[path]]\npath = "/lib"\nsymlink = "usr/lib"\n'
                      '[run]\ncommand = ["/usr/bin/cat", "/etc/top"]\n')
    return recipe


def strategies() -> list:
    features = probe(erofs=True)
    return [pytest.param(s, marks=pytest.mark.skipif(not supported(features, s),
                                                     reason=f"kernel {features.release} lacks {s}"))
            for s in STRATEGIES]


def read_inside(nsfs: str, path: str) -> tuple[str, bool]:
    """A file's text and whether "/" is read-only, read by a forked child in the namespace
    (a root made of one image holds no programs to run)."""
    r, w = os.pipe()
    with open(nsfs) as ns:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(r)
                sc.setns(ns.fileno(), sc.FLAGS["CLONE_NEWNS"])
                with open(path) as f:
                    text = f.read()
                ro = bool(os.statvfs("/").f_flag & os.ST_RDONLY)
                os.write(w, json.dumps([text, ro]).encode())
            except BaseException as e:
                os.write(w, json.dumps([repr(e), None]).encode())
            finally:
                os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    text, ro = json.loads(data)
    return text, ro


@pytest.mark.parametrize("strategy", strategies())
def test_each_image_kind_is_read_inside(nsbuild, state_dir: Path, tmp_path: Path, strategy: str) -> None:
    before = loops()
    recipe = image_recipe(tmp_path)
    built = json.loads(nsbuild("build", str(recipe), "--strategy", strategy, "--json").stdout)
    nsfs = built["nsfs"]
    listing = subprocess.run(["nsenter", f"--mount={nsfs}", "/usr/bin/cat", "/layers/erofs", "/layers/squashfs",
                              "/layers/ext4", "/etc/top"], capture_output=True, text=True, check=True).stdout
    assert listing == "from erofs\nfrom squashfs\nfrom ext4\next4\n"  # all three, the top one wins
    assert nsbuild("run", "images").stdout == "ext4\n"
    # the images are read-only underneath; writes land in the tmpfs upper
    nsbuild("run", "images", "--", "/usr/bin/sh", "-c", "echo new > /etc/top")
    assert nsbuild("run", "images", "--", "/usr/bin/cat", "/etc/top").stdout == "new\n"
    assert (tmp_path / "src-ext4" / "etc" / "top").read_text() == "ext4\n"
    nsbuild("rm", "images")
    assert wait_for_loops(before) == before, "a loop device outlived its sandbox"


@pytest.mark.parametrize("strategy", strategies())
@pytest.mark.parametrize("kind", ["erofs", "squashfs", "ext4"])
def test_an_image_alone_is_the_root(nsbuild, state_dir: Path, tmp_path: Path, strategy: str, kind: str) -> None:
    before = loops()
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "os-release").write_text("ID=image\n")
    make_image(kind, src, tmp_path / "root.img")
    recipe = tmp_path / "r.toml"
    recipe.write_text('[sandbox]\nname = "one"\n[[layer]]\nimage = "root.img"\n[root]\nupper = "none"\n')
    built = json.loads(nsbuild("build", str(recipe), "--strategy", strategy, "--json").stdout)
    assert read_inside(built["nsfs"], "/etc/os-release") == ("ID=image\n", True)
    nsbuild("rm", "one")
    assert wait_for_loops(before) == before


def test_image_type_from_magic_and_override(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for kind in TOOLS:
        make_image(kind, src, tmp_path / f"x.{kind}")
    recipe = tmp_path / "r.toml"
    body = "".join(f'[[layer]]\nimage = "x.{k}"\n' for k in TOOLS)
    recipe.write_text(f'[sandbox]\nname = "t"\n{body}[[layer]]\nimage = "x.ext4"\ntype = "ext4"\n')
    assert [layer.fstype for layer in load(str(recipe)).layers] == ["erofs", "squashfs", "ext4", "ext4"]


def test_pinned_image_mismatch_is_refused_before_mounting(nsbuild, tmp_path: Path, state_dir: Path) -> None:
    before = loops()
    recipe = image_recipe(tmp_path, kinds=("squashfs",))
    recipe.write_text(recipe.read_text().replace('image = "img.squashfs"\n',
                                                 'image = "img.squashfs"\nsha256 = "' + "0" * 64 + '"\n'))
    proc = nsbuild("build", str(recipe), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "layer[0].sha256" in proc.stderr and "Traceback" not in proc.stderr
    assert not state_dir.exists() and loops() == before


@pytest.mark.parametrize("strategy", strategies())
def test_a_fault_at_every_step_releases_loop_devices(tmp_path: Path, monkeypatch, strategy: str) -> None:
    """Every step of an image build fails once (injected); each time nothing stays behind."""
    recipe = load(str(image_recipe(tmp_path, kinds=("squashfs", "ext4"))))
    plan = plan_for(recipe, strategy)
    before_loops, before_mounts, before_fds = loops(), mountinfo(), open_fds()
    steps = [i for i, s in enumerate(plan.steps) if s.call != "fork"]
    for index in steps:
        monkeypatch.setenv("NSBUILD_TEST_FAULT", f"{index}:EIO")
        with pytest.raises(BuildError):
            os.close(executor.execute(plan))  # (closed if the fault did not fire)
        assert wait_for_loops(before_loops) == before_loops, f"step {index} left a loop device"
        assert mountinfo() == before_mounts and open_fds() == before_fds
    monkeypatch.delenv("NSBUILD_TEST_FAULT")
    os.close(executor.execute(plan))
    assert wait_for_loops(before_loops) == before_loops
    tally(f"faults injected and survived, image layers on loop devices, {strategy}", len(steps))


def test_concurrent_builds_race_for_loop_devices(tmp_path: Path) -> None:
    """Eight processes take free loop devices at once: LOOP_CONFIGURE's EBUSY is retried."""
    recipe = load(str(image_recipe(tmp_path, kinds=("squashfs", "ext4"))))
    plan = plan_for(recipe, "unshare")
    before = loops()
    pids = []
    for _ in range(8):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                os.close(executor.execute(plan))
                code = 0
            except BaseException as e:  # shown with the failure: which step, which errno
                print(f"builder {os.getpid()}: {e}", file=sys.stderr)
            finally:
                os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert codes == [0] * 8
    assert wait_for_loops(before) == before
