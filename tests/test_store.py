"""Archive layers: unpacked once into the content store, pinned by sha256, hostile archives refused."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from builder.layers.tarfiles import tarfile  # with extraction filters, as the unpacker uses it
from pathlib import Path

import pytest

from conftest import needs_root, tally

pytestmark = needs_root


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def archive(path: Path, build) -> Path:  # noqa: ANN001 - a callable filling the tar
    with tarfile.open(path, "w:gz") as tar:
        build(tar)
    return path


def good(tar: tarfile.TarFile) -> None:
    add(tar, "etc", type=tarfile.DIRTYPE, mode=0o755)
    add(tar, "etc/motd", b"from the tarball\n", mode=0o640, uid=1000, gid=1000)
    add(tar, "usr", type=tarfile.DIRTYPE, mode=0o755)
    add(tar, "tmp", type=tarfile.DIRTYPE, mode=0o1777)
    add(tar, "sbin-tool", b"#!/bin/sh\n", mode=0o4755)
    add(tar, "motd-link", type=tarfile.SYMTYPE, linkname="etc/motd")
    add(tar, "motd-hard", type=tarfile.LNKTYPE, linkname="etc/motd", mode=0o640, uid=1000, gid=1000)
    for link in ("bin", "lib", "lib64"):
        add(tar, link, type=tarfile.SYMTYPE, linkname="usr/" + link)


def recipe(tmp_path: Path, tar: Path, extra: str = "") -> Path:
    path = tmp_path / "r.toml"
    path.write_text(f'[sandbox]\nname = "arch"\n[[layer]]\narchive = "{tar.name}"\n{extra}'
                    '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n')
    return path


def sh(nsfs: str, script: str) -> str:
    return subprocess.run(["nsenter", f"--mount={nsfs}", "sh", "-c", script], capture_output=True, text=True,
                          check=True).stdout


def test_archive_layer_is_unpacked_once_with_owners_and_modes(nsbuild, tmp_path: Path) -> None:
    tar = archive(tmp_path / "root.tar.gz", good)
    digest = hashlib.sha256(tar.read_bytes()).hexdigest()
    r = recipe(tmp_path, tar, f'sha256 = "{digest}"\n')
    nsfs = json.loads(nsbuild("build", str(r), "--json").stdout)["nsfs"]
    out = sh(nsfs, "cat /etc/motd /motd-link /motd-hard; stat -c '%a %u:%g' /etc/motd /tmp /sbin-tool")
    assert out == "from the tarball\n" * 3 + "640 1000:1000\n1777 0:0\n4755 0:0\n"
    entry = tmp_path / "store" / "sha256" / digest
    assert entry.is_dir() and os.listdir(tmp_path / "store" / "tmp") == []
    stamp = entry.stat().st_ino, (entry / "etc/motd").stat().st_mtime_ns
    nsbuild("build", str(r), "--replace")  # warm: the store entry is reused, nothing unpacked again
    assert ((entry.stat().st_ino, (entry / "etc/motd").stat().st_mtime_ns)) == stamp
    assert sorted(os.listdir(tmp_path / "store" / "sha256")) == [digest]
    plan = json.loads(nsbuild("plan", str(r), "--json").stdout)
    assert any(str(entry) in step["text"] for step in plan["steps"])
    nsbuild("rm", "arch")


def test_setuid_files_are_kept_but_inert(nsbuild, tmp_path: Path) -> None:
    """A root filesystem needs its setuid bits (su, passwd), so they are unpacked; the root is
    mounted nosuid unless the recipe lifts it, so no layer brings a working setuid binary."""
    proc = '[[mount]]\ntarget = "/proc"\ntype = "proc"\n'
    nsfs = json.loads(nsbuild("build", str(recipe(tmp_path, archive(tmp_path / "s.tar.gz", good), proc)),
                              "--json").stdout)["nsfs"]
    assert sh(nsfs, "stat -c %a /sbin-tool") == "4755\n"
    assert "nosuid" in sh(nsfs, "findmnt -n -o VFS-OPTIONS /").strip().split(",")
    nsbuild("rm", "arch")


def test_an_in_process_build_releases_the_store(state_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The Python API (build.build) holds the store's gc lock only until the sandbox is persisted:
    the autouse host_unchanged fixture checks no fd stays open."""
    from builder.sandbox.build import build, resolve_layers
    from builder.recipe.load import load
    from builder.sandbox.state import StateDir

    monkeypatch.setenv("NSBUILD_STORE", str(tmp_path / "store"))
    state = StateDir(str(state_dir))
    r = load(str(recipe(tmp_path, archive(tmp_path / "s.tar.gz", good))))
    built = build(resolve_layers(r), state)
    assert sh(built.nsfs, "cat /etc/motd") == "from the tarball\n"
    assert state.remove("arch")


def test_pinned_digest_mismatch_is_refused_before_anything(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    tar = archive(tmp_path / "root.tar.gz", good)
    proc = nsbuild("build", str(recipe(tmp_path, tar, f'sha256 = "{"0" * 64}"\n')), check=False)
    assert proc.returncode == 2 and "layer[0].sha256" in proc.stderr and "pins" in proc.stderr
    assert not (tmp_path / "store").exists() and not state_dir.exists()


HOSTILE = {
    "traversal": lambda t: add(t, "../../escaped", b"x"),
    "hardlink leaving the layer": lambda t: add(t, "shadow2", type=tarfile.LNKTYPE, linkname="../../etc/shadow"),
    "symlink then write through it": lambda t: (add(t, "d", type=tarfile.SYMTYPE, linkname="/tmp"),
                                                add(t, "d/nsbuild-through-link", b"x")),
    "hardlink to a host file": lambda t: add(t, "shadow", type=tarfile.LNKTYPE, linkname="/etc/shadow"),
    "device node": lambda t: add(t, "mem", type=tarfile.CHRTYPE, devmajor=1, devminor=1),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archives_are_refused(nsbuild, state_dir: Path, tmp_path: Path, kind: str) -> None:
    tar = archive(tmp_path / "evil.tar.gz", lambda t: (add(t, "ok", b"fine"), HOSTILE[kind](t)))
    proc = nsbuild("build", str(recipe(tmp_path, tar)), check=False)
    assert proc.returncode == 1 and "layer[0]: cannot unpack" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "store").exists()  # the first unpack failed: no store was left behind
    assert not Path("/tmp/nsbuild-through-link").exists()
    assert not (tmp_path.parent / "escaped").exists() and not state_dir.exists()
    tally("hostile archive layers rejected, nothing written outside")


def test_absolute_member_names_stay_inside_the_layer(nsbuild, tmp_path: Path) -> None:
    """Like GNU tar, tarfile's filters strip the leading "/": the file lands in the layer."""
    tar = archive(tmp_path / "abs.tar.gz", lambda t: (good(t), add(t, "/etc/nsbuild-absolute", b"inside\n")))
    nsfs = json.loads(nsbuild("build", str(recipe(tmp_path, tar)), "--json").stdout)["nsfs"]
    assert sh(nsfs, "cat /etc/nsbuild-absolute") == "inside\n"
    assert not Path("/etc/nsbuild-absolute").exists()
    nsbuild("rm", "arch")


def test_absolute_symlinks_point_inside_the_sandbox(nsbuild, tmp_path: Path) -> None:
    """Root filesystems are full of them (/etc/alternatives): allowed, and they resolve in the root."""
    tar = archive(tmp_path / "abs.tar.gz", lambda t: (
        good(t), add(t, "etc/motd-abs", type=tarfile.SYMTYPE, linkname="/etc/motd"),
        add(t, "etc/chain", type=tarfile.SYMTYPE, linkname="motd-abs"),  # relative, through an absolute one
        add(t, "etc/up", type=tarfile.SYMTYPE, linkname="../../../../..")))  # above the root: the root
    nsfs = json.loads(nsbuild("build", str(recipe(tmp_path, tar)), "--json").stdout)["nsfs"]
    assert sh(nsfs, "cat /etc/motd-abs /etc/chain; readlink /etc/motd-abs; ls /etc/up/etc/motd") == \
        "from the tarball\n" * 2 + "/etc/motd\n/etc/up/etc/motd\n"
    nsbuild("rm", "arch")


def test_device_nodes_when_the_recipe_allows_them(nsbuild, tmp_path: Path) -> None:
    tar = archive(tmp_path / "dev.tar.gz", lambda t: (good(t), add(t, "null", type=tarfile.CHRTYPE, devmajor=1,
                                                                         devminor=3, mode=0o666)))
    nsfs = json.loads(nsbuild("build", str(recipe(tmp_path, tar, "devices = true\n")), "--json").stdout)["nsfs"]
    assert sh(nsfs, "stat -c '%t:%T %F' /null") == "1:3 character special file\n"
    nsbuild("rm", "arch")


def test_xattrs_come_back_but_never_overlayfs_ones(nsbuild, tmp_path: Path) -> None:
    """PAX xattrs: user data, ACLs and file capabilities are restored; trusted.* (where overlayfs
    keeps whiteouts and redirects) is not, so a layer cannot forge them."""
    cap = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep, as on Debian's ping
    with tarfile.open(tmp_path / "x.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "dir", type=tarfile.DIRTYPE, mode=0o755, pax_headers={"SCHILY.xattr.trusted.overlay.opaque": "y"})
        add(tar, "dir/ping", b"\x7fELF", mode=0o755,
            pax_headers={"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape"),
                         "SCHILY.xattr.user.origin": "tarball"})
    digest = hashlib.sha256((tmp_path / "x.tar").read_bytes()).hexdigest()
    nsbuild("build", str(recipe(tmp_path, tmp_path / "x.tar")))
    entry = tmp_path / "store" / "sha256" / digest
    assert os.getxattr(entry / "dir" / "ping", "user.origin") == b"tarball"
    assert os.getxattr(entry / "dir" / "ping", "security.capability") == cap
    assert "trusted.overlay.opaque" not in os.listxattr(entry / "dir")
    nsbuild("rm", "arch")


@pytest.mark.parametrize("other_build", [False, True])
def test_a_failed_first_unpack_removes_the_store_only_if_unused(tmp_path: Path, other_build: bool) -> None:
    """The store dirs and lock files a failed first unpack made go, unless another build holds the
    store by now: unlinking a lock file someone holds would split the lock in two."""
    import fcntl

    from builder.layers import gclock
    from builder.errors import NsbuildError
    from builder.layers.store import Store

    path = tmp_path / "store"
    path.mkdir()  # made by someone else: it stays either way
    holder = None
    if other_build:
        holder = os.open(path / ".gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(holder, fcntl.LOCK_SH)

    def fail(tmp: str) -> None:
        raise tarfile.ReadError("truncated")

    try:
        with pytest.raises(NsbuildError, match="cannot unpack"):
            Store(str(path)).fill("layer[0]", "x.tar", str(path / "sha256" / ("0" * 64)), fail)
        left = sorted(p.name for p in path.iterdir())
        assert left == ([".gc.lock", ".lock", "sha256", "tmp"] if other_build else []), left
    finally:
        gclock.release()
        if holder is not None:
            os.close(holder)


def zstd_archive(path: Path, build, frames: int = 1) -> Path:  # noqa: ANN001 - a callable filling the tar
    """A .tar.zst as `zstd` writes it (in `frames` frames, as `zstd -T0` may)."""
    import zstandard

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        build(tar)
    data, step = buf.getvalue(), -(-len(buf.getvalue()) // frames)
    c = zstandard.ZstdCompressor()
    path.write_bytes(b"".join(c.compress(data[i:i + step]) for i in range(0, len(data), step)))
    return path


@pytest.mark.parametrize("frames", [1, 3])
def test_zstd_archive_layer(nsbuild, tmp_path: Path, frames: int) -> None:
    tar = zstd_archive(tmp_path / "root.tar.zst", good, frames)
    digest = hashlib.sha256(tar.read_bytes()).hexdigest()
    nsfs = json.loads(nsbuild("build", str(recipe(tmp_path, tar, f'sha256 = "{digest}"\n')), "--json").stdout)["nsfs"]
    assert sh(nsfs, "cat /etc/motd; stat -c '%a %u:%g' /etc/motd /sbin-tool") == \
        "from the tarball\n640 1000:1000\n4755 0:0\n"
    assert sorted(os.listdir(tmp_path / "store" / "sha256")) == [digest]
    nsbuild("rm", "arch")


@pytest.mark.parametrize("kind", ["zstd", "gzip"])
def test_corrupt_compressed_archive_is_one_error_and_leaves_no_entry(nsbuild, state_dir: Path, tmp_path: Path,
                                                                    kind: str) -> None:
    tar = zstd_archive(tmp_path / "root.tar.zst", good) if kind == "zstd" else archive(tmp_path / "root.tar.gz", good)
    data = bytearray(tar.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
    tar.write_bytes(bytes(data))
    proc = nsbuild("build", str(recipe(tmp_path, tar)), check=False)
    assert proc.returncode == 1, proc.stderr
    assert "layer[0]: cannot unpack" in proc.stderr and kind in proc.stderr and "Traceback" not in proc.stderr
    assert not state_dir.exists()
    assert not (tmp_path / "store").exists()  # the first unpack failed: no store was left behind
