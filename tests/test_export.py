"""`nsbuild export`: layouts read by skopeo and umoci and run by crun, pushes to a real registry, the
image pulled back into nsbuild, whiteouts in OCI form, reproducible digests."""
from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import RECIPES, needs_root
from registries import fault_proxy, images, registry  # noqa: F401

pytestmark = needs_root
DEMO_LAYERS = [d["digest"] for d in json.loads((RECIPES / "oci/layout/blobs/sha256" /
                                                 "53d1c3a752da96e287e82341eb4066a09a23597942835ad624ebe62a3975d639")
                                                .read_text())["layers"]]
SCRIPT = "cat /etc/motd /etc/hostname; ls /opt/demo; echo $GREETING"
EXPECTED = "from layer 2\nexported\nc\nhi\n"


def recipe(tmp_path: Path, extra: str = "") -> Path:
    """The demo image, a binaries layer with a shell above it, a [[path]] and [run] with env."""
    path = tmp_path / "export.toml"
    path.write_text(f'[sandbox]\nname = "exp"\n[[layer]]\noci = "{RECIPES / "oci/layout"}"\nref = "demo"\n'
                    '[[layer]]\nbinaries = ["/bin/sh", "/bin/cat", "/bin/ls", "/usr/bin/find", "/usr/bin/sort", "/usr/bin/stat", '
                    '"/usr/bin/md5sum", "/usr/bin/rm"]\n'
                    f'{extra}[[path]]\npath = "/etc/hostname"\ncontent = "exported\\n"\n'
                    f'[run]\ncommand = ["/bin/sh", "-c", "{SCRIPT}"]\nenv = {{ GREETING = "hi" }}\n')
    return path


def export(nsbuild, *args: str, env: dict[str, str] | None = None) -> dict:
    if env:
        nsbuild.env.update(env)
    try:
        return json.loads(nsbuild("export", "--json", *args).stdout)
    finally:
        for k in env or {}:
            nsbuild.env.pop(k)


def inspect(ref: str) -> dict:
    return json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", ref], capture_output=True, text=True,
                                     check=True).stdout)


def crun_run(bundle: Path, tmp_path: Path) -> str:
    """Run an umoci bundle with crun as root. umoci writes terminal = true (we have none); this host's cgroups
    are hybrid, which crun refuses, so the v2 hierarchy is unmounted in a private mount namespace first."""
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    (bundle / "config.json").write_text(json.dumps(config))
    script = ("if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi; "
              f"exec crun --root={tmp_path / 'crun'} --cgroup-manager=disabled run -b {bundle} nsbuild-export-test")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_export_to_a_layout_runs_under_crun_and_is_reproducible(nsbuild, tmp_path: Path) -> None:
    r = recipe(tmp_path)
    out = export(nsbuild, str(r), f"oci:{tmp_path / 'out'}:v1")
    info = inspect(f"oci:{tmp_path / 'out'}:v1")
    assert info["Digest"] == out["digest"]
    assert info["Layers"][:2] == DEMO_LAYERS and len(info["Layers"]) == 4  # demo, binaries, [[path]]
    assert "GREETING=hi" in info["Env"]
    config = json.loads((tmp_path / "out/blobs/sha256" /
                         json.loads((tmp_path / "out/blobs/sha256" / out["digest"][7:]).read_bytes())["config"]["digest"][7:])
                        .read_text())["config"]
    assert config["Cmd"] == ["/bin/sh", "-c", SCRIPT] and config["WorkingDir"] == "/" and "User" not in config
    subprocess.run(["umoci", "unpack", "--image", f"{tmp_path / 'out'}:v1", str(tmp_path / "bundle")], check=True,
                   capture_output=True)
    assert crun_run(tmp_path / "bundle", tmp_path) == EXPECTED
    # the same inputs, the same digest: into a second layout, and again into the first
    assert export(nsbuild, str(r), f"oci:{tmp_path / 'again'}:v1")["digest"] == out["digest"]
    again = export(nsbuild, str(r), f"oci:{tmp_path / 'out'}:v1")
    assert again["digest"] == out["digest"] and all(line.endswith(" exists") for line in again["blobs"])
    assert len(json.loads((tmp_path / "out/index.json").read_text())["manifests"]) == 1  # the tag was replaced


def new_layers(layout: Path, digest: str) -> list[tarfile.TarFile]:
    manifest = json.loads((layout / "blobs/sha256" / digest[7:]).read_bytes())
    return [tarfile.open(fileobj=io.BytesIO(gzip.decompress((layout / "blobs/sha256" / d["digest"][7:]).read_bytes())))
            for d in manifest["layers"] if d["digest"] not in DEMO_LAYERS]


LISTING = ("find / -xdev | sort | while read -r f; do stat -c '%n %F %a %u:%g %h' \"$f\"; "
           "if [ -f \"$f\" ]; then cat \"$f\" | md5sum; fi; done")


def trees(nsbuild, r: Path, tmp_path: Path) -> tuple[str, str]:
    """The tree of recipe `r` (sandbox `exp`), and that of the image exported to out/:v1 pulled back
    into a sandbox `exp` (which stays, for the caller to run and remove): each as listed inside."""
    nsbuild("build", str(r))
    before = nsbuild("run", "exp", "--", "/bin/sh", "-c", LISTING).stdout
    nsbuild("rm", "exp")
    back = tmp_path / "back.toml"
    back.write_text(f'[sandbox]\nname = "exp"\n[[layer]]\noci = "oci:{tmp_path / "out"}:v1"\n')
    nsbuild("build", str(back))
    return before, nsbuild("run", "exp", "--", "/bin/sh", "-c", LISTING).stdout


def test_tarballs_are_sorted_with_numeric_owners_and_source_date_epoch(nsbuild, tmp_path: Path) -> None:
    r = recipe(tmp_path)
    out = export(nsbuild, str(r), f"oci:{tmp_path / 'out'}:v1", env={"SOURCE_DATE_EPOCH": "1700000000"})
    for tar in new_layers(tmp_path / "out", out["digest"]):
        members = tar.getmembers()
        assert members and {m.mtime for m in members} == {1700000000}
        assert {(m.uname, m.gname) for m in members} == {("", "")}
        names = [m.name for m in members]
        assert names == sorted(names, key=lambda n: n.split("/"))  # depth first, each directory's names sorted
    assert export(nsbuild, str(r), f"oci:{tmp_path / 'zero'}:v1")["digest"] != out["digest"]  # times are in it
    manifest = json.loads((tmp_path / "out/blobs/sha256" / out["digest"][7:]).read_bytes())
    config = json.loads((tmp_path / "out/blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes())
    assert config["created"] == "2023-11-14T22:13:20Z"


def test_whiteouts_leave_in_oci_form_and_the_tree_comes_back(nsbuild, tmp_path: Path) -> None:
    """A directory layer with an overlayfs whiteout and an opaque directory: exported as .wh. entries,
    and the image pulled back into nsbuild gives the same tree as the recipe."""
    top = tmp_path / "top"
    (top / "opt/demo").mkdir(parents=True)
    (top / "opt/demo/new").write_text("new\n")
    os.setxattr(top / "opt/demo", "trusted.overlay.opaque", b"y")
    (top / "etc").mkdir()
    os.mknod(top / "etc/legacy.conf", 0o600 | 0o020000, os.makedev(0, 0))
    r = recipe(tmp_path, '[[layer]]\npath = "top"\n')
    out = export(nsbuild, str(r), f"oci:{tmp_path / 'out'}:v1")
    names = {m.name for tar in new_layers(tmp_path / "out", out["digest"]) for m in tar.getmembers()}
    assert {"etc/.wh.legacy.conf", "opt/demo/.wh..wh..opq", "opt/demo/new"} <= names
    before, after = trees(nsbuild, r, tmp_path)
    assert after == before
    assert nsbuild("run", "exp").stdout == "from layer 2\nexported\nnew\nhi\n"  # the image's own [run]
    nsbuild("rm", "exp")


def test_a_persisted_sandbox_with_a_directory_upper_exports_its_changes(nsbuild, tmp_path: Path) -> None:
    r = recipe(tmp_path, "")
    r.write_text(r.read_text().replace("[[path]]", '[root]\nupper = "upper"\n[[path]]', 1))
    nsbuild("build", str(r))
    nsbuild("run", "exp", "--", "/bin/sh", "-c", "echo made > /made; rm /etc/motd")
    out = export(nsbuild, "exp", f"oci:{tmp_path / 'out'}:v1")
    nsbuild("rm", "exp")
    back = tmp_path / "back.toml"
    back.write_text(f'[sandbox]\nname = "back"\n[[layer]]\noci = "oci:{tmp_path / "out"}:v1"\n'
                    '[run]\ncommand = ["/bin/sh", "-c", "cat /made; test ! -e /etc/motd"]\n')
    nsbuild("build", str(back))
    assert nsbuild("run", "back").stdout == "made\n"
    nsbuild("rm", "back")
    assert out["digest"].startswith("sha256:")


def test_a_sandbox_cannot_swap_a_file_for_a_symlink_to_a_host_file_while_it_is_exported(nsbuild, tmp_path: Path) -> None:
    """The attack: a directory upper is live, so what runs in the sandbox can flip a name between a file
    and a symlink to a host path while export reads it. A reader that follows links would put the host
    file into the image. Each export must hold the file or the symlink, or stop with one clear error.
    (The window is microseconds wide, so this is a stress test; the next test proves the check itself.)"""
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET-host-file\n")
    r = recipe(tmp_path, "")
    r.write_text(r.read_text().replace("[[path]]", '[root]\nupper = "upper"\n[[path]]', 1))
    nsbuild("build", str(r))
    upper = tmp_path / "upper"
    swapper = subprocess.Popen([sys.executable, "-c", f"""
import os
d = {str(upper)!r}
while True:
    for i in range(8):
        x, t = os.path.join(d, f"x{{i}}"), os.path.join(d, f".t{{i}}")
        os.symlink({str(secret)!r}, t); os.rename(t, x)
        with open(t, "w") as f: f.write("harmless\\n")
        os.rename(t, x)
"""])
    outcomes = []
    try:
        for k in range(12):
            proc = nsbuild("export", "exp", f"oci:{tmp_path / 'out'}:v{k}", check=False)
            assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
            if proc.returncode:
                assert "changed while it was exported" in proc.stderr, proc.stderr
            outcomes.append(proc.returncode)
    finally:
        swapper.kill()
        swapper.wait()
    assert 0 in outcomes, outcomes  # the race is rare: most exports pass
    for blob in (tmp_path / "out/blobs/sha256").iterdir():
        data = blob.read_bytes()
        assert b"TOPSECRET" not in data and b"TOPSECRET" not in (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else b"")
    nsbuild("rm", "exp")


def test_an_entry_replaced_between_stat_and_open_is_refused(tmp_path: Path) -> None:
    from builder.errors import NsbuildError
    from builder.images.export import _open_same

    (tmp_path / "f").write_text("x")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    held = os.open(tmp_path / "f", os.O_RDONLY)  # so that no new file gets its inode number
    try:
        st = os.stat("f", dir_fd=fd, follow_symlinks=False)
        os.close(_open_same(fd, "f", st, 0, "f"))  # the same file: opened
        os.unlink(tmp_path / "f")
        os.symlink("/etc/passwd", tmp_path / "f")
        with pytest.raises(NsbuildError, match="/f changed while it was exported"):
            _open_same(fd, "f", st, 0, "f")  # a symlink now: not followed
        os.unlink(tmp_path / "f")
        (tmp_path / "f").write_text("other")
        with pytest.raises(NsbuildError, match="it was replaced"):
            _open_same(fd, "f", st, 0, "f")  # another file under the same name
    finally:
        os.close(fd)
        os.close(held)


def test_a_tmpfs_sandbox_exports_what_changed_in_it(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    """The tmpfs upper is pinned beside the namespace (read-only, nosuid, nodev, noexec), so export sees
    what was done in the sandbox since its build, like `podman commit`; rm and --replace take it along."""
    r = recipe(tmp_path)
    nsbuild("build", str(r))
    upper = state_dir / "exp.upper"
    options = next(line.split()[5] for line in open("/proc/self/mountinfo") if line.split()[4] == str(upper))
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(options.split(",")), options
    nsbuild("run", "exp", "--", "/bin/sh", "-c", "echo made > /made; rm /etc/motd")
    assert (upper / "upper" / "made").read_text() == "made\n"
    proc = nsbuild("export", "exp", f"oci:{tmp_path / 'out'}:v1")
    assert "note" not in proc.stderr, proc.stderr
    back = tmp_path / "back.toml"
    back.write_text(f'[sandbox]\nname = "back"\n[[layer]]\noci = "oci:{tmp_path / "out"}:v1"\n'
                    '[run]\ncommand = ["/bin/sh", "-c", "cat /made /etc/hostname; test ! -e /etc/motd"]\n')
    nsbuild("build", str(back))
    assert nsbuild("run", "back").stdout == "made\nexported\n"
    nsbuild("build", str(r), "--replace")  # a fresh upper: the change is gone, in the sandbox and its pin
    assert not (upper / "upper" / "made").exists()
    assert nsbuild("run", "exp", "--", "/bin/sh", "-c", "test ! -e /made && cat /etc/motd").stdout == "from layer 2\n"
    nsbuild("rm", "exp")
    nsbuild("rm", "back")
    assert not upper.exists() and sorted(p.name for p in state_dir.iterdir() if not p.name.startswith(".")) == []


def test_a_batch_sandbox_exports_the_tree_as_built_and_says_so(nsbuild, tmp_path: Path) -> None:
    nsbuild("build", str(recipe(tmp_path)), "--count", "2")
    proc = nsbuild("export", "exp-1", f"oci:{tmp_path / 'out'}:v1")
    assert "is not pinned" in proc.stderr and "--count" in proc.stderr
    assert inspect(f"oci:{tmp_path / 'out'}:v1")["Layers"][:2] == DEMO_LAYERS
    nsbuild("rm", "exp-0", "exp-1")


def test_export_pushes_skips_what_the_registry_has_and_rebuilds_from_it(nsbuild, registry, fault_proxy,
                                                                      tmp_path: Path) -> None:
    proxy = fault_proxy("pass")
    r = recipe(tmp_path)
    ref = proxy.ref("pushed:v1")
    out = export(nsbuild, str(r), ref)
    assert sum(" uploaded" in line for line in out["blobs"]) == 5  # 4 layers and the config
    info = inspect(registry.ref("pushed:v1"))
    assert info["Digest"] == out["digest"] and info["Layers"][:2] == DEMO_LAYERS
    n = len(proxy.requests())
    again = export(nsbuild, str(r), ref)
    assert again["digest"] == out["digest"] and sum(" exists" in line for line in again["blobs"]) == 5
    second = proxy.requests()[n:]
    assert [line.split()[0] for line in second] == ["HEAD"] * 5 + ["PUT"], second  # blobs not sent again
    back = tmp_path / "back.toml"
    back.write_text(f'[sandbox]\nname = "exp"\n[[layer]]\noci = "{registry.ref("pushed:v1")}"\n')
    nsbuild("build", str(back))
    assert nsbuild("run", "exp").stdout == EXPECTED
    nsbuild("rm", "exp")


def test_a_pulled_lower_keeps_its_digest_in_a_push_to_another_repository(nsbuild, registry, tmp_path: Path) -> None:
    path = tmp_path / "pulled.toml"
    path.write_text(f'[sandbox]\nname = "p"\n[[layer]]\noci = "{registry.ref("demo:gzip")}"\n'
                    '[[path]]\npath = "/etc/hostname"\ncontent = "p\\n"\n')
    out = export(nsbuild, str(path), registry.ref("copied:v1"))
    assert [line.split(" ", 1)[1] for line in out["blobs"][:2]] == ["mounted from demo"] * 2
    assert inspect(registry.ref("copied:v1"))["Layers"][:2] == DEMO_LAYERS
    layout = export(nsbuild, str(path), f"oci:{tmp_path / 'out'}:v1")  # the blobs are fetched for a layout
    assert inspect(f"oci:{tmp_path / 'out'}:v1")["Layers"][:2] == DEMO_LAYERS and layout["digest"] == out["digest"]


@pytest.mark.parametrize("dest", ["nowhere", "oci:", "docker://host.example/x@sha256:" + "a" * 64, "oci:/tmp/x:bad*tag"])
def test_bad_destinations_are_usage_errors(nsbuild, tmp_path: Path, dest: str) -> None:
    proc = nsbuild("export", str(recipe(tmp_path)), dest, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("kind", ["erofs", "squashfs", "ext4"])
def test_an_image_layer_is_exported_as_its_tree(nsbuild, tmp_path: Path, kind: str) -> None:
    """An image layer leaves as a tarball of the mounted image (owners, modes, set-uid bits, links), the
    image pulled back gives the same tree, and nothing stays mounted or attached (the session checks)."""
    from test_images import make_image

    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/motd").write_text(f"from {kind}\n")
    os.chown(src / "etc/motd", 1000, 1001)
    (src / "bin").mkdir()
    (src / "bin/tool").write_text("#!/bin/sh\n")
    os.chmod(src / "bin/tool", 0o4755)
    os.symlink("../etc/motd", src / "bin/motd")
    os.link(src / "etc/motd", src / "etc/motd.hard")
    make_image(kind, src, tmp_path / "img")
    r = tmp_path / "img.toml"
    r.write_text(recipe(tmp_path).read_text().replace(
        f'oci = "{RECIPES / "oci/layout"}"\nref = "demo"\n', f'image = "img"\ntype = "{kind}"\n'))
    out = export(nsbuild, str(r), f"oci:{tmp_path / 'out'}:v1")
    members = {m.name: m for m in new_layers(tmp_path / "out", out["digest"])[0].getmembers()}
    assert (members["etc/motd"].uid, members["etc/motd"].gid) == (1000, 1001)
    assert members["bin/tool"].mode == 0o4755 and members["bin/motd"].linkname == "../etc/motd"
    assert members["etc/motd.hard"].islnk() or members["etc/motd"].islnk()
    before, after = trees(nsbuild, r, tmp_path)
    assert after == before
    assert "/etc/motd regular file 644 1000:1001 2\n" in before  # the image's file, in the tree compared
    nsbuild("rm", "exp")


def test_a_push_retries_5xx_with_the_same_body_and_logs_in_for_tokens(nsbuild, registry, fault_proxy,
                                                                     tmp_path: Path) -> None:
    """Every first request of a path answers 503 (blob checks, upload sessions, uploads, the manifest):
    each is sent again whole. Then a push through Bearer auth, with credentials from ~/.docker/config.json."""
    from registries import PASSWORD, USER, docker_config

    r = recipe(tmp_path)
    flaky = fault_proxy("5xx-once")
    out = export(nsbuild, str(r), flaky.ref("flaky:v1"))
    assert inspect(registry.ref("flaky:v1"))["Digest"] == out["digest"]
    assert sum(line.endswith("-> 503") for line in flaky.requests()) >= 3
    token = fault_proxy(f"token:{USER}:{PASSWORD}")
    home = tmp_path / "home"
    docker_config(home, token.host)
    nsbuild.env["HOME"] = str(home)
    nsbuild.env.pop("XDG_RUNTIME_DIR", None)
    out = export(nsbuild, str(r), token.ref("tokened:v1"))
    assert inspect(registry.ref("tokened:v1"))["Digest"] == out["digest"]
    assert any(line.startswith("GET /token?") and "push" in line and line.endswith("200") for line in token.requests())


def test_a_sandbox_whose_recipe_changed_is_not_exported_as_the_new_recipe(nsbuild, tmp_path: Path) -> None:
    r = recipe(tmp_path)
    nsbuild("build", str(r))
    r.write_text(r.read_text().replace("exported\\n", "changed\\n"))
    proc = nsbuild("export", "exp", f"oci:{tmp_path / 'out'}", check=False)
    assert proc.returncode == 2 and "changed since the sandbox was built" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
    nsbuild("rm", "exp")


def test_a_push_to_an_unreachable_registry_is_one_error(nsbuild, tmp_path: Path) -> None:
    from registries import free_port

    host = f"127.0.0.1:{free_port()}"
    proc = nsbuild("export", str(recipe(tmp_path)), f"docker://{host}/x:v1", check=False)
    assert proc.returncode == 1 and f"registry {host}: cannot reach http://{host}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.listdir(tmp_path / "store" / "tmp") == []  # the new layers were written under tmp/ and are gone


def test_a_layer_that_fails_half_written_does_not_hang_the_process_at_exit(tmp_path: Path) -> None:
    """The compressor's threads are stopped on the error path: a writer left to the interpreter's exit
    (the error's traceback keeps it alive) would wait there for threads that have already gone."""
    script = f"""
import io, tarfile
from builder.images import export
def fill(tar):
    info = tarfile.TarInfo("a"); info.size = 3_000_000; tar.addfile(info, io.BytesIO(bytes(info.size)))
    raise RuntimeError("half written")
try:
    export._new_layer({str(tmp_path)!r}, fill)
except RuntimeError as e:
    KEEP = e
print("done")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
