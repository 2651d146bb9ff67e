"""End to end through the CLI, mounting for real: build, inspect, run, rm.

Parametrized over the three strategies; a strategy the running kernel lacks is
skipped here and runs in test_kernel_vm.py, inside Debian's 7.2 kernel.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from builder.kernel.features import STRATEGIES, probe, supported

from conftest import RECIPES, mountinfo, needs_root, tally

pytestmark = needs_root
FEATURES = probe()


def strategies() -> list:
    return [pytest.param(s, marks=pytest.mark.skipif(not supported(FEATURES, s),
                                                     reason=f"kernel {FEATURES.release} lacks {s}"))
            for s in STRATEGIES]


def findmnt(nsfs: str) -> dict[str, dict]:
    out = subprocess.run(["nsenter", f"--mount={nsfs}", "findmnt", "-J", "-l", "-o",
                          "TARGET,FSTYPE,OPTIONS,PROPAGATION"], capture_output=True, text=True, check=True).stdout
    return {fs["target"]: fs for fs in json.loads(out)["filesystems"]}


def opts(fs: dict) -> set[str]:
    return set(fs["options"].split(","))


def in_sandbox(nsfs: str, *cmd: str) -> str:
    return subprocess.run(["nsenter", f"--mount={nsfs}", *cmd], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("strategy", strategies())
def test_dev_recipe_build_inspect_run_rm(nsbuild, state_dir: Path, tmp_path: Path, strategy: str) -> None:
    (tmp_path / "cwd" / "marker").write_text("from the host\n")
    built = json.loads(nsbuild("build", str(RECIPES / "dev.toml"), "--strategy", strategy, "--json").stdout)
    assert built["name"] == "dev" and built["strategy"] == strategy
    nsfs = built["nsfs"]
    assert nsfs == str(state_dir / "dev.mnt")

    mounts = findmnt(nsfs)
    assert set(mounts) == {"/", "/usr", "/etc/resolv.conf", "/proc", "/dev", "/dev/pts", "/dev/shm", "/tmp",
                           "/work"}
    assert mounts["/"]["fstype"] == "tmpfs" and {"rw", "nosuid", "nodev"} <= opts(mounts["/"])
    assert {"ro", "nosuid", "nodev"} <= opts(mounts["/usr"])
    assert {"ro", "nosuid", "nodev"} <= opts(mounts["/etc/resolv.conf"])
    assert mounts["/proc"]["fstype"] == "proc" and {"nosuid", "nodev", "noexec"} <= opts(mounts["/proc"])
    assert mounts["/dev"]["fstype"] == "tmpfs" and {"nosuid", "noexec"} <= opts(mounts["/dev"])
    assert "nodev" not in opts(mounts["/dev"])  # it holds the device nodes
    assert mounts["/dev/pts"]["fstype"] == "devpts" and "ptmxmode=666" in opts(mounts["/dev/pts"])
    assert mounts["/tmp"]["fstype"] == "tmpfs" and {"nosuid", "nodev", "size=524288k"} <= opts(mounts["/tmp"])
    assert {"rw", "nosuid", "nodev"} <= opts(mounts["/work"])
    assert all(fs["propagation"] == "private" for fs in mounts.values())

    assert in_sandbox(nsfs, "cat", "/etc/hostname") == "dev\n"
    assert in_sandbox(nsfs, "cat", "/work/marker") == "from the host\n"
    assert in_sandbox(nsfs, "readlink", "/bin") == "usr/bin\n"
    assert in_sandbox(nsfs, "stat", "-c", "%a %F", "/var/tmp", "/root", "/dev/null") == \
        "1777 directory\n700 directory\n666 character special file\n"

    # nsbuild run: [run] cwd and environment, the command's exit status
    proc = nsbuild("run", "dev", "--", "sh", "-c", "pwd; echo $LANG; python3 --version; exit 7", check=False)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["/work", "C.UTF-8"] and "Python 3" in proc.stdout
    assert nsbuild("run", "dev", "--", "/no/such/command", check=False).returncode == 127

    listed = json.loads(nsbuild("ls", "--json").stdout)
    assert [(s["name"], s["status"], s["nsfs"]) for s in listed] == [("dev", "ok", nsfs)]
    meta = json.loads((state_dir / "dev.json").read_text())
    assert meta["strategy"] == strategy and len(meta["recipe_sha256"]) == 64 and meta["upper"] == "tmpfs"
    assert meta["kernel"] == os.uname().release

    assert "dev: removed" in nsbuild("rm", "dev").stdout
    assert "dev: not found" in nsbuild("rm", "dev").stdout  # idempotent
    # no .mnt, .json or .run left; the template namespace stays for later builds (unshare only)
    assert {p.name for p in state_dir.iterdir()} - {".plans", ".seccomp"} in ({".lock"}, {".lock", ".template.mnt"})
    assert json.loads(nsbuild("ls", "--json").stdout) == []
    assert nsbuild("ls").stdout == f"no sandboxes in {state_dir}\n"


@pytest.mark.parametrize("strategy", strategies())
def test_layers_overlay(nsbuild, state_dir: Path, strategy: str) -> None:
    nsfs = json.loads(nsbuild("build", str(RECIPES / "layers.toml"), "-s", strategy, "--json").stdout)["nsfs"]
    mounts = findmnt(nsfs)
    assert mounts["/"]["fstype"] == "overlay" and "noatime" in opts(mounts["/"])
    assert "noexec" in opts(mounts["/tmp"])
    assert in_sandbox(nsfs, "cat", "/opt/app/version", "/opt/app/base.txt", "/etc/app.conf") == \
        "from config\nonly in base\ngreeting = hello\n"
    proc = nsbuild("run", "layers")
    assert proc.stdout == "hello from the tools layer; version: from config\n"
    # writes land in the tmpfs upper, never in a layer
    in_sandbox(nsfs, "sh", "-c", "echo new > /opt/app/version; rm /opt/app/base.txt")
    assert in_sandbox(nsfs, "cat", "/opt/app/version") == "new\n"
    assert (RECIPES / "layers/config/opt/app/version").read_text() == "from config\n"
    assert (RECIPES / "layers/base/opt/app/base.txt").exists()
    nsbuild("rm", "layers")


@pytest.mark.parametrize("strategy", strategies())
def test_persistent_upper_and_replace(nsbuild, state_dir: Path, tmp_path: Path, strategy: str) -> None:
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc/motd").write_text("layer\n")
    (layer / "bin").symlink_to("usr/bin")
    (layer / "lib64").symlink_to("usr/lib64")
    (layer / "lib").symlink_to("usr/lib")
    recipe = tmp_path / "keep.toml"
    recipe.write_text('[sandbox]\nname = "keep"\n[[layer]]\npath = "layer"\n[root]\nupper = "data/upper"\n'
                      '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n')
    (tmp_path / "data").mkdir()
    nsfs = json.loads(nsbuild("build", str(recipe), "-s", strategy, "--json").stdout)["nsfs"]
    in_sandbox(nsfs, "sh", "-c", "echo kept > /etc/motd")
    assert (tmp_path / "data/upper/etc/motd").read_text() == "kept\n"
    assert (layer / "etc/motd").read_text() == "layer\n"

    again = nsbuild("build", str(recipe), "-s", strategy, check=False)
    assert again.returncode == 1 and "exists already" in again.stderr and "--replace" in again.stderr
    nsbuild("build", str(recipe), "-s", strategy, "--replace")
    assert in_sandbox(nsfs, "cat", "/etc/motd") == "kept\n"  # same path, new namespace, kept upper
    nsbuild("rm", "keep")


def test_state_dir_inside_a_recursive_bind(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    """dev.toml binds $CWD recursively; run from a parent of the state dir, the nsfs mounts stay out."""
    nsbuild("build", str(RECIPES / "dev.toml"), "--name", "first", cwd=tmp_path)
    nsbuild("build", str(RECIPES / "dev.toml"), "--name", "second", cwd=tmp_path)
    nsfs = str(state_dir / "second.mnt")
    assert not any(t.startswith("/work/state/") for t in findmnt(nsfs))
    assert "unbindable" in subprocess.run(["findmnt", "-n", "-o", "PROPAGATION", str(state_dir)],
                                          capture_output=True, text=True).stdout
    nsbuild("rm", "first", "second")


@pytest.mark.skipif(not supported(FEATURES, "unshare"), reason="unshare strategy only")
def test_later_builds_unshare_from_the_template(nsbuild, state_dir: Path) -> None:
    recipe = str(RECIPES / "dev.toml")
    first = json.loads(nsbuild("plan", recipe, "-s", "unshare", "--json").stdout)
    assert not any(step["out"] == "%template" for step in first["steps"])
    nsfs = json.loads(nsbuild("build", recipe, "-s", "unshare", "--json").stdout)["nsfs"]
    before = findmnt(nsfs)
    assert (state_dir / ".template.mnt").exists()
    plan = json.loads(nsbuild("plan", recipe, "-s", "unshare", "--json").stdout)
    calls = [(s["call"], s["where"]) for s in plan["steps"] if s["call"] in ("setns", "unshare")]
    assert calls == [("setns", "child"), ("unshare", "child")]
    nsbuild("build", recipe, "-s", "unshare", "--replace")
    after = findmnt(nsfs)
    assert after == before  # same tree, from a template of one mount instead of the host's table
    assert in_sandbox(nsfs, "cat", "/etc/hostname") == "dev\n"
    nsbuild("rm", "dev")


def test_ephemeral_run_leaves_nothing(nsbuild, state_dir: Path) -> None:
    proc = nsbuild("run", str(RECIPES / "dev.toml"), "--", "cat", "/etc/hostname")
    assert proc.stdout == "dev\n"
    assert not state_dir.exists()


def test_bad_recipe_exit_2_no_traceback(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[sandbox]\nname = "bad"\n[[mount]]\ntarget = "/t"\ntype = "tmpfs"\nattrs = ["nosiud"]\n')
    proc = nsbuild("build", str(bad), check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"nsbuild: error: {bad}: mount[0].attrs[0]: unknown attribute 'nosiud'")
    assert "did you mean 'nosuid'?" in proc.stderr and "Traceback" not in proc.stderr
    assert not state_dir.exists()
    assert nsbuild("run", "nosuch", check=False).returncode == 2
    assert nsbuild("build", str(RECIPES / "dev.toml"), "-s", "warp", check=False).returncode == 2


def test_failed_build_leaves_no_trace(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "fail.toml"
    recipe.write_text('[sandbox]\nname = "fail"\n[[mount]]\ntarget = "/t"\ntype = "tmpfs"\n'
                      'options = { size = "lots" }\n')
    proc = nsbuild("build", str(recipe), check=False)
    assert proc.returncode == 1, proc.stderr
    assert "mount[0]" in proc.stderr and "fsconfig" in proc.stderr and "EINVAL" in proc.stderr
    assert "kernel says" in proc.stderr  # tmpfs logs its reason into the fs context
    assert "Traceback" not in proc.stderr
    assert not state_dir.exists()


@pytest.mark.parametrize("strategy", strategies())
def test_symlink_in_a_layer_cannot_redirect_a_mount_to_the_host(nsbuild, state_dir: Path, tmp_path: Path,
                                                                strategy: str) -> None:
    """Mount targets and [[path]] entries resolve inside the new root (RESOLVE_IN_ROOT)."""
    layer = tmp_path / "evil"
    (layer / "etc").mkdir(parents=True)
    (layer / "opt").mkdir()
    for link in ("bin", "lib", "lib64"):
        (layer / link).symlink_to("usr/" + link)
    (layer / "work").symlink_to("/etc")           # absolute: would be the host's /etc outside the root
    (layer / "up").symlink_to("../../../../../opt")  # relative escape
    (tmp_path / "src").mkdir()
    recipe = tmp_path / "evil.toml"
    recipe.write_text('[sandbox]\nname = "evil"\n[[layer]]\npath = "evil"\n'
                      '[[mount]]\ntarget = "/work"\ntype = "bind"\nsource = "src"\n'
                      '[[mount]]\ntarget = "/up/x"\ntype = "tmpfs"\n'
                      '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n'
                      '[[mount]]\ntarget = "/proc"\ntype = "proc"\n'
                      '[[path]]\npath = "/up/nsbuild-written"\ncontent = "inside\\n"\n')
    nsfs = json.loads(nsbuild("build", str(recipe), "--strategy", strategy, "--json").stdout)["nsfs"]
    targets = set(findmnt(nsfs))
    # all land inside the sandbox root (at its /etc, /opt/x and /opt), never on a host path
    assert "/etc" in targets and "/opt/x" in targets
    assert in_sandbox(nsfs, "cat", "/opt/nsbuild-written") == "inside\n"
    assert not Path("/opt/x").exists() and not Path("/opt/nsbuild-written").exists()
    tally(f"symlinks in a layer aimed at host paths, a mount and a file kept inside, {strategy}", 3)
    nsbuild("rm", "evil")


def test_plan_command_needs_no_root_and_shows_every_strategy(nsbuild) -> None:
    for strategy in STRATEGIES:
        proc = nsbuild("plan", str(RECIPES / "dev.toml"), "-s", strategy, "--format", "strace")
        assert f"strategy {strategy}" in proc.stdout.splitlines()[0]
    data = json.loads(nsbuild("plan", str(RECIPES / "dev.toml"), "--json").stdout)
    assert data["steps"] and all("text" in s for s in data["steps"])
    assert "syscall" in nsbuild("plan", str(RECIPES / "dev.toml")).stdout


def test_doctor(nsbuild) -> None:
    report = json.loads(nsbuild("doctor", "--json").stdout)
    assert report["kernel"] == os.uname().release and report["root"] is True
    assert report["auto"] in STRATEGIES and set(report["probes"]) == {"fsmount", "fsmount-namespace",
                                                                      "open-tree-namespace", "erofs-file"}
    assert report["features"]["erofs_file"] == probe(erofs=True).erofs_file
    assert report["seccomp"] == "yes"  # contained runs need libseccomp (set-up installs libseccomp2)


def test_rm_all_gives_the_host_back(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    """After the last sandbox, `rm --all` also unmounts the state dir's self-bind and the template
    namespace: the mount table and the file system are as before the first build."""
    before = mountinfo()
    for name in ("one", "two"):  # unshare: the first build pins the template, the second uses it
        nsbuild("build", str(RECIPES / "layers.toml"), "-s", "unshare", "--name", name)
    assert (state_dir / ".template.mnt").exists() and mountinfo() != before
    nsbuild("run", "one", "--", "true")  # a contained run keeps its seccomp programs there too
    assert (state_dir / ".seccomp").exists()
    proc = nsbuild("rm", "--all")
    assert proc.stdout == f"one: removed\ntwo: removed\nreleased {state_dir}\n" and proc.stderr == ""
    assert mountinfo() == before and not state_dir.exists()
    assert nsbuild("rm", "--all").stdout == f"nothing to remove: {state_dir} does not exist\n"


def test_rm_all_keeps_what_is_not_nsbuilds(nsbuild, state_dir: Path) -> None:
    before = mountinfo()
    nsbuild("build", str(RECIPES / "layers.toml"))
    (state_dir / "notes.txt").write_text("mine\n")
    assert nsbuild("rm", "--all").stdout.endswith("(kept the directory: it holds files that are not nsbuild's)\n")
    assert mountinfo() == before and sorted(p.name for p in state_dir.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("args", [("rm",), ("rm", "--all", "dev")])
def test_rm_needs_names_or_all(nsbuild, args: tuple[str, ...]) -> None:
    proc = nsbuild(*args, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("nsbuild: error: ") and "--all" in proc.stderr


@pytest.mark.parametrize("strategy", strategies())
def test_overlay_error_shows_the_kernels_reason_and_the_key(nsbuild, state_dir: Path, tmp_path: Path,
                                                            strategy: str) -> None:
    """overlayfs says why CMD_CREATE failed only in the kernel log: nsbuild reads it from /dev/kmsg and
    names root.upper, not just `root` and "see dmesg". Here a layer is the upper seen through a bind
    mount, which validation (comparing paths) cannot know."""
    (tmp_path / "data/upper/etc").mkdir(parents=True)
    alias = tmp_path / "data/alias"
    alias.mkdir()
    subprocess.run(["mount", "--bind", str(tmp_path / "data/upper"), str(alias)], check=True)
    try:
        recipe = tmp_path / "ov.toml"
        recipe.write_text('[sandbox]\nname = "ov"\n[[layer]]\npath = "data/alias"\n[root]\nupper = "data/upper"\n')
        proc = nsbuild("build", str(recipe), "-s", strategy, check=False)
    finally:
        subprocess.run(["umount", str(alias)], check=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("nsbuild: error: root.upper (step ") and "FSCONFIG_CMD_CREATE" in first, first
    assert first.endswith("failed: ELOOP (Too many levels of symbolic links); kernel says: "
                          "overlayfs: conflicting lowerdir path"), first
    assert "keep the upper outside every layer" in proc.stderr and "dmesg" not in proc.stderr
    assert not state_dir.exists()
