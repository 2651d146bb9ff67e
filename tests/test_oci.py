"""OCI image layouts: picking an image, verifying blobs, unpacking layers in overlayfs form.

Layouts are written from scratch here, as skopeo would: blobs/sha256/<hex>, index.json, oci-layout.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
from builder.layers.tarfiles import tarfile  # with extraction filters, as the unpacker uses it
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from conftest import needs_root, tally
from test_store import add

from builder.layers import oci
from builder.errors import UsageError
from builder.layers.unpack import layer_filter as _layer_filter, unpack_layer

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
TAR = "application/vnd.oci.image.layer.v1.tar"
TAR_GZ = TAR + "+gzip"
TAR_ZSTD = TAR + "+zstd"
HOST = oci.host_platform()
OTHER = ("linux", "s390x" if HOST[1] != "s390x" else "amd64", "")

Entry = Callable[[tarfile.TarFile], None]
NOISE = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(4096))  # 128 KiB that gzip cannot shrink


# --- writing layouts



def dir_(name: str) -> Entry:
    return lambda t: add(t, name, type=tarfile.DIRTYPE, mode=0o755)


def file_(name: str, data: bytes = b"x\n") -> Entry:
    return lambda t: add(t, name, data, mode=0o644)


def symlink(name: str, target: str) -> Entry:
    return lambda t: add(t, name, type=tarfile.SYMTYPE, linkname=target)


def tar_bytes(*entries: Entry, compress: bool | str = True) -> bytes:
    """A tarball of `entries`: gzip (compress=True), plain (False), "zstd" or "zstd-frames" (several
    frames and a skippable one between them, as zstd:chunked writes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in entries:
            entry(tar)
    data = buf.getvalue()
    if compress == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if compress == "zstd-frames":
        half = len(data) // 2
        skippable = b"\x50\x2a\x4d\x18" + (8).to_bytes(4, "little") + b"manifest"
        c = zstandard.ZstdCompressor()
        return c.compress(data[:half]) + skippable + c.compress(data[half:])
    return gzip.compress(data, mtime=0) if compress else data


def put(layout: Path, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    """Write a blob; its descriptor."""
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data), **extra}


def put_json(layout: Path, doc: dict[str, Any], media_type: str, **extra: Any) -> dict[str, Any]:
    return put(layout, json.dumps(doc).encode(), media_type, **extra)


def image(layout: Path, *layers: bytes, layer_type: str = TAR_GZ, runs_on: tuple[str, str, str] = HOST,
          manifest_type: str = OCI_MANIFEST, config_type: str = OCI_CONFIG, run_config: dict[str, Any] | None = None,
          **extra: Any) -> dict[str, Any]:
    """Write config (its "config" section `run_config`: Env, Cmd, ...), layers and manifest; the manifest's
    descriptor (with `extra`, e.g. annotations)."""
    os_, arch, variant = runs_on
    config = put_json(layout, {"os": os_, "architecture": arch, **({"variant": variant} if variant else {}),
                               "rootfs": {"type": "layers", "diff_ids": []},
                               **({"config": run_config} if run_config is not None else {})}, config_type)
    descs = [put(layout, data, layer_type) for data in layers]
    return put_json(layout, {"schemaVersion": 2, "mediaType": manifest_type, "config": config, "layers": descs},
                    manifest_type, **extra)


def tagged(name: str) -> dict[str, Any]:
    return {"annotations": {oci.REF_NAME: name}}


def on(platform: tuple[str, str, str]) -> dict[str, Any]:
    os_, arch, variant = platform
    return {"platform": {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}}


def finish(layout: Path, *manifests: dict[str, Any]) -> Path:
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                   "manifests": list(manifests)}))
    return layout


def blob_path(layout: Path, desc: dict[str, Any]) -> Path:
    return layout / "blobs" / "sha256" / desc["digest"].removeprefix("sha256:")


def error(call: Callable[[], object]) -> str:
    with pytest.raises(UsageError) as e:
        call()
    return f"{e.value} | {e.value.hint}"


# --- picking an image

def test_the_only_manifest_needs_no_ref(tmp_path: Path) -> None:
    m = image(tmp_path, tar_bytes(file_("a")), tar_bytes(file_("b")))
    img = oci.open_layout(str(finish(tmp_path, m))).image()
    manifest = json.loads(blob_path(tmp_path, m).read_bytes())
    assert img.manifest_digest == m["digest"] and img.config_digest == manifest["config"]["digest"]
    assert [b.digest for b in img.layers] == [d["digest"] for d in manifest["layers"]]  # bottom -> top
    assert all(b.media_type == TAR_GZ and Path(b.path) == blob_path(tmp_path, d) and b.size == d["size"]
               for b, d in zip(img.layers, manifest["layers"]))
    assert img.config["architecture"] == HOST[1]


def test_pick_by_tag_and_by_digest(tmp_path: Path) -> None:
    one = image(tmp_path, tar_bytes(file_("one")), **tagged("1.0"))
    two = image(tmp_path, tar_bytes(file_("two")), **tagged("2.0"))
    layout = oci.open_layout(str(finish(tmp_path, one, two)))
    assert layout.tags() == ["1.0", "2.0"]
    assert layout.image("2.0").manifest_digest == two["digest"]
    assert layout.image("1.0").manifest_digest == one["digest"]
    assert layout.image(one["digest"]).manifest_digest == one["digest"]


def test_several_manifests_without_ref_list_the_tags(tmp_path: Path) -> None:
    finish(tmp_path, image(tmp_path, tar_bytes(file_("one")), **tagged("1.0")),
           image(tmp_path, tar_bytes(file_("two")), **tagged("2.0")))
    msg = error(oci.open_layout(str(tmp_path)).image)
    assert str(tmp_path) in msg and "several images" in msg and "1.0, 2.0" in msg


def test_unknown_tag_and_digest(tmp_path: Path) -> None:
    layout = oci.open_layout(str(finish(tmp_path, image(tmp_path, tar_bytes(file_("a")), **tagged("latest")))))
    msg = error(lambda: layout.image("3.0"))
    assert str(tmp_path) in msg and "'3.0'" in msg and "available tags: latest" in msg
    msg = error(lambda: layout.image("sha256:" + "0" * 64))
    assert "no image or index has digest sha256:000" in msg


def nested(layout: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """index.json -> an index blob -> one manifest per platform (as `skopeo copy --all` writes it)."""
    host = image(layout, tar_bytes(file_("host")), runs_on=HOST, **on(HOST))
    other = image(layout, tar_bytes(file_("other")), runs_on=OTHER, **on(OTHER))
    index = put_json(layout, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [other, host]}, OCI_INDEX,
                     **tagged("multi"))
    finish(layout, index)
    return index, host, other


def test_nested_index_picks_the_host_platform_or_the_one_asked_for(tmp_path: Path) -> None:
    index, host, other = nested(tmp_path)
    layout = oci.open_layout(str(tmp_path))
    assert layout.image("multi").manifest_digest == host["digest"]
    assert layout.image().manifest_digest == host["digest"]
    assert layout.image("multi", "/".join(p for p in OTHER if p)).manifest_digest == other["digest"]
    assert layout.image(index["digest"], "/".join(OTHER[:2])).manifest_digest == other["digest"]
    assert layout.image(other["digest"]).manifest_digest == other["digest"]  # a platform's own digest
    msg = error(lambda: layout.image("multi", "linux/mips64le"))
    assert "no image for platform linux/mips64le" in msg and "/".join(OTHER[:2]) in msg and "/".join(HOST[:2]) in msg


def test_platform_variants_compare_by_meaning(tmp_path: Path) -> None:
    arm64 = image(tmp_path, tar_bytes(file_("arm64")), runs_on=("linux", "arm64", ""), **on(("linux", "arm64", "")))
    armv7 = image(tmp_path, tar_bytes(file_("v7")), runs_on=("linux", "arm", "v7"), **on(("linux", "arm", "v7")))
    armv6 = image(tmp_path, tar_bytes(file_("v6")), runs_on=("linux", "arm", "v6"), **on(("linux", "arm", "v6")))
    layout = oci.open_layout(str(finish(tmp_path, armv6, armv7, arm64)))
    assert layout.image(platform="linux/arm64/v8").manifest_digest == arm64["digest"]
    assert layout.image(platform="linux/arm").manifest_digest == armv7["digest"]  # arm means v7
    assert layout.image(platform="linux/arm/v6").manifest_digest == armv6["digest"]
    assert "os/arch[/variant]" in error(lambda: layout.image(platform="arm64"))


def test_an_explicit_platform_is_checked_also_for_a_single_image(tmp_path: Path) -> None:
    layout = oci.open_layout(str(finish(tmp_path, image(tmp_path, tar_bytes(file_("a")), runs_on=OTHER))))
    assert layout.image().manifest_digest  # no platform asked for: the only image
    msg = error(lambda: layout.image(platform="linux/mips64le"))
    assert "is for platform " + "/".join(OTHER[:2]) in msg


def test_docker_media_types(tmp_path: Path) -> None:
    m = image(tmp_path, tar_bytes(file_("a")), layer_type="application/vnd.docker.image.rootfs.diff.tar.gzip",
              manifest_type="application/vnd.docker.distribution.manifest.v2+json",
              config_type="application/vnd.docker.container.image.v1+json")
    img = oci.open_layout(str(finish(tmp_path, m))).image()
    assert img.manifest_digest == m["digest"] and len(img.layers) == 1


# --- errors

def test_missing_blobs(tmp_path: Path) -> None:
    m = image(tmp_path, tar_bytes(file_("a")), **tagged("a"))
    layout = oci.open_layout(str(finish(tmp_path, m)))
    layer = layout.image("a").layers[0]
    os.unlink(layer.path)
    msg = error(lambda: layout.image("a"))
    assert f"blob {layer.path} is missing" in msg and "copy the image again" in msg
    blob_path(tmp_path, m).unlink()
    assert f"manifest {m['digest']}: blob" in error(lambda: layout.image("a"))


def test_corrupt_manifest_is_a_digest_mismatch(tmp_path: Path) -> None:
    m = image(tmp_path, tar_bytes(file_("a")))
    path = blob_path(tmp_path, finish(tmp_path, m) and m)
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion": 3'))  # same size
    msg = error(oci.open_layout(str(tmp_path)).image)
    assert str(tmp_path) in msg and f"not {m['digest']}" in msg and "corrupt or was modified" in msg


def test_blob_type_must_match_its_descriptor(tmp_path: Path) -> None:
    m = image(tmp_path, tar_bytes(file_("a")))
    finish(tmp_path, dict(m, mediaType=OCI_INDEX))  # index.json says index, the blob says manifest
    assert "blob says it is" in error(oci.open_layout(str(tmp_path)).image)


def test_zstd_layer_with_bad_data_is_a_digest_mismatch(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    img = oci.open_layout(str(finish(layout, image(layout, b"(\xb5/\xfd not really zstd",
                                                   layer_type=TAR_ZSTD)))).image()
    blob = img.layers[0]
    Path(blob.path).write_bytes(b"(\xb5/\xfd also not zstd, other bytes")  # the descriptor no longer matches
    msg = error(lambda: unpack(blob, tmp_path / "l"))
    assert "corrupt or was modified" in msg


@pytest.mark.parametrize("kind, data", [
    ("zstd", b"(\xb5/\xfd not really zstd"),
    ("gzip", b"\x1f\x8b\x08\x00 not really gzip"),
    ("gzip", gzip.compress(tar_bytes(file_("a", NOISE), compress=False))[:-5000]),  # a truncated stream
])
def test_layer_with_a_matching_digest_but_bad_data_is_a_tar_error(tmp_path: Path, kind: str, data: bytes) -> None:
    """A blob that is what its descriptor says but no valid stream: tarfile.ReadError, which the store
    reports as a layer it cannot unpack (not a traceback from the binding)."""
    layout = tmp_path / "layout"
    img = oci.open_layout(str(finish(layout, image(layout, data,
                                                   layer_type=TAR_ZSTD if kind == "zstd" else TAR_GZ)))).image()
    with pytest.raises(tarfile.ReadError, match=kind):
        unpack(img.layers[0], tmp_path / "l")


def test_a_gzip_layer_of_several_members_unpacks_whole(tmp_path: Path) -> None:
    """pigz and concatenated gzip write several members: all of them are the layer."""
    data = tar_bytes(file_("a", b"first\n"), file_("b", NOISE), file_("c", b"third\n"), compress=False)
    half = len(data) // 2
    layer = gzip.compress(data[:half], mtime=0) + gzip.compress(data[half:], mtime=0)
    layout = tmp_path / "layout"
    img = oci.open_layout(str(finish(layout, image(layout, layer)))).image()
    unpack(img.layers[0], tmp_path / "l")
    assert (tmp_path / "l" / "a").read_text() == "first\n" and (tmp_path / "l" / "c").read_text() == "third\n"
    assert (tmp_path / "l" / "b").read_bytes() == NOISE


@pytest.mark.parametrize("case", ["no dir", "no oci-layout", "version 2", "not json", "no index.json", "bad index"])
def test_bad_layouts(tmp_path: Path, case: str) -> None:
    finish(tmp_path, image(tmp_path, tar_bytes(file_("a"))))
    if case == "no dir":
        target = tmp_path / "nowhere"
    else:
        target = tmp_path
        {"no oci-layout": lambda: (tmp_path / "oci-layout").unlink(),
         "version 2": lambda: (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}'),
         "not json": lambda: (tmp_path / "oci-layout").write_text("{"),
         "no index.json": lambda: (tmp_path / "index.json").unlink(),
         "bad index": lambda: (tmp_path / "index.json").write_text('{"schemaVersion": 2, "manifests": [{}]}'),
         }[case]()
    msg = error(lambda: oci.open_layout(str(target)))
    assert f"OCI layout {target}:" in msg
    assert {"no dir": "not a directory", "no oci-layout": "oci-layout is missing", "version 2": "'2.0.0', not 1.x",
            "not json": "cannot read oci-layout", "no index.json": "index.json is missing",
            "bad index": "manifests[0] has no mediaType"}[case] in msg
    if case != "bad index":
        assert "skopeo copy" in msg  # the hint says what a layout is


# --- unpacking layers

def unpack(blob: oci.Blob, dest: Path) -> Path:
    dest.mkdir()
    unpack_layer(blob, str(dest), _layer_filter(False))
    return dest


def is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@needs_root
@pytest.mark.parametrize("layer_type,compress", [
    (TAR, False), (TAR_GZ, True), ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", True),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", True), (TAR_ZSTD, "zstd"),
    (TAR_ZSTD, "zstd-frames"), ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", "zstd")])
def test_layer_media_types_unpack(tmp_path: Path, layer_type: str, compress: bool | str) -> None:
    layout = tmp_path / "layout"
    data = tar_bytes(dir_("etc"), file_("etc/motd", b"hi\n"), compress=compress)
    img = oci.open_layout(str(finish(layout, image(layout, data, layer_type=layer_type)))).image()
    dest = unpack(img.layers[0], tmp_path / "l")
    assert (dest / "etc/motd").read_text() == "hi\n"


def two_layers(tmp_path: Path) -> tuple[Path, Path]:
    """Layer 2 deletes etc/file and gone/, empties opq/ (adding new), replaces redo/ by a new one."""
    layout = tmp_path / "layout"
    l1 = tar_bytes(dir_("etc"), file_("etc/keep"), file_("etc/file"), dir_("opq"), file_("opq/old"),
                   dir_("opq/sub"), file_("opq/sub/old2"), dir_("gone"), file_("gone/x"), dir_("redo"),
                   file_("redo/old"), dir_("deep"), dir_("deep/er"), file_("deep/er/x"))
    l2 = tar_bytes(file_("etc/.wh.file", b""), dir_("opq"), file_("opq/new"), file_("opq/.wh..wh..opq", b""),
                   file_(".wh.gone", b""), file_(".wh.redo", b""), dir_("redo"), file_("redo/new"),
                   file_("deep/er/.wh.x", b""))  # a whiteout whose parents the layer does not list
    img = oci.open_layout(str(finish(layout, image(layout, l1, l2)))).image()
    return unpack(img.layers[0], tmp_path / "l1"), unpack(img.layers[1], tmp_path / "l2")


@needs_root
def test_whiteouts_become_overlayfs_whiteouts(tmp_path: Path) -> None:
    _, l2 = two_layers(tmp_path)
    assert is_whiteout(l2 / "etc/file") and is_whiteout(l2 / "gone") and is_whiteout(l2 / "deep/er/x")
    assert opaque(l2 / "opq") and not opaque(l2 / "etc")
    assert opaque(l2 / "redo") and (l2 / "redo/new").is_file()  # the layer's own redo/ stays, made opaque
    assert not [name for name in tree(l2) if ".wh." in name]
    assert tree(l2) == ["deep", "deep/er", "deep/er/x", "etc", "etc/file", "gone", "opq", "opq/new", "redo",
                        "redo/new"]


@needs_root
def test_overlay_of_the_layers_hides_what_layer_two_deleted(tmp_path: Path) -> None:
    l1, l2 = two_layers(tmp_path)
    merged = tmp_path / "merged"
    merged.mkdir()
    script = f"mount -t overlay nsbuild-test -o lowerdir={l2}:{l1} {merged} && cd {merged} && find . | sort"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [".", "./deep", "./deep/er", "./etc", "./etc/keep", "./opq", "./opq/new",
                                   "./redo", "./redo/new"]
    assert os.listdir(merged) == []  # the mount lived in the private namespace only


@needs_root
@pytest.mark.parametrize("corruption", ["file data", "gzip stream", "trailing bytes"])
def test_corrupt_layer_is_a_digest_mismatch(tmp_path: Path, corruption: str) -> None:
    layout = tmp_path / "layout"
    data = tar_bytes(dir_("etc"), file_("etc/motd", os.urandom(4096)))  # incompressible: the middle is file data
    img = oci.open_layout(str(finish(layout, image(layout, data)))).image()
    broken = bytearray(data)
    if corruption == "file data":  # tarfile unpacks it without noticing (it checks no gzip CRC)
        broken[len(data) // 2] ^= 0xFF
    elif corruption == "gzip stream":  # tarfile fails first: still reported as the digest mismatch
        broken[10:] = bytes(len(data) - 10)
    else:  # the tar reads fine; the file is not the blob
        broken += b"trailing"
    Path(img.layers[0].path).write_bytes(bytes(broken))
    msg = error(lambda: unpack(img.layers[0], tmp_path / "l"))
    assert f"({len(broken)} bytes), not {img.layers[0].digest} ({len(data)} bytes)" in msg
    assert "corrupt or was modified" in msg


HOSTILE: dict[str, Callable[[Path], list[Entry]]] = {  # the directory outside the layer -> tar entries
    "dotdot": lambda out: [file_("../.wh.x", b"")],
    "dotdot opaque": lambda out: [file_("a/../../.wh..wh..opq", b"")],
    "through a symlink out": lambda out: [symlink("d", str(out)), file_("d/.wh.y", b"")],
    "through a relative symlink out": lambda out: [symlink("d", "../../outside"), file_("d/.wh..wh..opq", b"")],
    "symlink unpacked after the whiteout": lambda out: [file_("d/.wh.y", b""), symlink("d", str(out))],
    # inside the layer, yet refused: whiteouts never follow symlinks (tarfile would resolve this one)
    "through a symlink inside": lambda out: [dir_("e"), symlink("d", "e"), file_("d/.wh.x", b"")],
}


@needs_root
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_whiteouts_are_refused(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "y").write_text("host file\n")
    layout = tmp_path / "layout"
    img = oci.open_layout(str(finish(layout, image(layout, tar_bytes(file_("ok"), *HOSTILE[case](outside)))))).image()
    (tmp_path / "layer").mkdir()
    with pytest.raises(tarfile.FilterError):
        unpack(img.layers[0], tmp_path / "layer" / "dest")
    assert tree(outside) == ["y"] and (outside / "y").read_text() == "host file\n"
    assert os.listdir(tmp_path / "layer") == ["dest"]
    assert not opaque(outside) and not opaque(tmp_path / "layer") and not opaque(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["layer", "layout", "outside"]
    tally("hostile OCI layers (whiteouts) rejected, nothing written outside")


@needs_root
def test_absolute_whiteouts_stay_inside_the_layer(tmp_path: Path) -> None:
    """Like every member with an absolute name, the filter strips the leading "/" (see test_store)."""
    layout = tmp_path / "layout"
    data = tar_bytes(file_("/nsbuild-abs-test/.wh.x", b""), file_("/.wh.nsbuild-abs-test2", b""))
    img = oci.open_layout(str(finish(layout, image(layout, data)))).image()
    dest = unpack(img.layers[0], tmp_path / "l")
    assert is_whiteout(dest / "nsbuild-abs-test/x") and is_whiteout(dest / "nsbuild-abs-test2")
    assert not Path("/nsbuild-abs-test").exists() and not Path("/nsbuild-abs-test2").exists()


# --- through nsbuild: an OCI layer in a recipe

def two_layer_image(layout: Path) -> Path:
    """Layer 1: /etc/keep, /etc/gone, /data/{a,b}; layer 2 deletes /etc/gone, makes /data opaque with /data/c."""
    l1 = tar_bytes(dir_("etc"), file_("etc/keep", b"keep\n"), file_("etc/gone", b"gone\n"), dir_("data"),
                   file_("data/a"), file_("data/b"))
    l2 = tar_bytes(dir_("etc"), file_("etc/.wh.gone", b""), dir_("data"), file_("data/.wh..wh..opq", b""),
                   file_("data/c", b"c\n"))
    return finish(layout, image(layout, l1, l2, **tagged("v1")))


@needs_root
def test_oci_layer_builds_and_runs_with_deletions(nsbuild, tmp_path: Path, state_dir: Path) -> None:
    two_layer_image(tmp_path / "layout")
    recipe = tmp_path / "r.toml"
    recipe.write_text('[sandbox]\nname = "oci"\n[[layer]]\noci = "layout"\nref = "v1"\n'
                      '[[mount]]\ntarget = "/usr"\ntype = "bind"\nsource = "/usr"\n'
                      '[[path]]\npath = "/bin"\nsymlink = "usr/bin"\n'
                      '[[path]]\npath = "/lib64"\nsymlink = "usr/lib64"\n'
                      '[[path]]\npath = "/lib"\nsymlink = "usr/lib"\n')
    nsbuild("build", str(recipe))
    out = nsbuild("run", "oci", "--", "sh", "-c", "cat /etc/keep; ls /etc; ls /data; test ! -e /etc/gone").stdout
    assert out == "keep\nkeep\nc\n"  # /etc/gone deleted by layer 2, /data/a and /data/b hidden (opaque)
    entries = sorted(os.listdir(tmp_path / "store" / "sha256"))
    assert len(entries) == 2 and all(e.endswith("-oci") for e in entries)  # one store entry per layer blob
    # a rebuild reuses the store: nothing is unpacked again
    stamps = {e: os.stat(tmp_path / "store" / "sha256" / e).st_ino for e in entries}
    nsbuild("build", str(recipe), "--replace")
    assert {e: os.stat(tmp_path / "store" / "sha256" / e).st_ino for e in entries} == stamps
    # a corrupted layer blob is refused before anything is mounted, and leaves no half entry
    nsbuild("rm", "oci")
    for e in entries:
        shutil.rmtree(tmp_path / "store" / "sha256" / e)
    blob = max((tmp_path / "layout" / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[-20] ^= 0xFF
    blob.write_bytes(bytes(data))
    proc = nsbuild("build", str(recipe), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert os.listdir(tmp_path / "store" / "tmp") == [] and not (state_dir / "oci.mnt").exists()


@needs_root
def test_skopeo_zstd_layout_builds_like_the_gzip_one(nsbuild, tmp_path: Path) -> None:
    """skopeo recompresses the demo layout with zstd: the media types say +zstd, the tree is the same."""
    from conftest import RECIPES

    out = tmp_path / "zstd"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-compress-format", "zstd",
                    f"oci:{RECIPES / 'oci/layout'}:demo", f"oci:{out}:demo"], check=True)
    img = oci.open_layout(str(out)).image("demo")
    assert [b.media_type for b in img.layers] == [TAR_ZSTD] * 2
    recipe = tmp_path / "r.toml"
    recipe.write_text((RECIPES / "oci.toml").read_text().replace('oci = "oci/layout"', f'oci = "{out}"'))
    nsbuild("build", str(recipe))
    assert nsbuild("run", "oci").stdout == "from layer 2\nc\n"
    nsbuild("rm", "oci")


def test_skopeo_transport_syntax_names_the_layout_and_tag(tmp_path: Path) -> None:
    from builder.errors import RecipeError
    from builder.recipe.load import parse

    two_layer_image(tmp_path / "layout")
    doc = {"sandbox": {"name": "x"}, "layer": [{"oci": "oci:layout:v1"}]}
    layer = parse(doc, str(tmp_path / "r.toml"), "0" * 64, str(tmp_path)).layers[0]
    assert (layer.kind, layer.path, layer.ref) == ("oci", str(tmp_path / "layout"), "v1")
    assert parse({"sandbox": {"name": "x"}, "layer": [{"oci": "oci:layout"}]}, str(tmp_path / "r.toml"), "0" * 64,
                 str(tmp_path)).layers[0].ref is None
    with pytest.raises(RecipeError, match="names its tag twice"):
        parse({"sandbox": {"name": "x"}, "layer": [{"oci": "oci:layout:v1", "ref": "v1"}]},
              str(tmp_path / "r.toml"), "0" * 64, str(tmp_path))
