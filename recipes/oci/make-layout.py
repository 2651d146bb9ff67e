#!/usr/bin/env python3
"""Write recipes/oci/layout: a two-layer OCI image layout (tag "demo") for recipes/oci.toml.

Layer 1 adds /etc/motd, /etc/legacy.conf and /opt/demo/{a,b}; layer 2 deletes /etc/legacy.conf
(a .wh. whiteout), replaces /opt/demo wholesale (an opaque directory) and changes /etc/motd.
Real images come from `skopeo copy docker://IMAGE oci:DIR:TAG`; this one is small enough to ship.
Deterministic: running it again gives the same bytes.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import tarfile

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "layout")
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def layer(entries: list[tuple[str, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def blob(data: bytes, media_type: str, **extra: object) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(HERE, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data), **extra}


def main() -> None:
    shutil.rmtree(HERE, ignore_errors=True)
    os.makedirs(os.path.join(HERE, "blobs", "sha256"))
    layers = [
        layer([("etc", None), ("etc/motd", b"from layer 1\n"), ("etc/legacy.conf", b"old=1\n"),
               ("opt", None), ("opt/demo", None), ("opt/demo/a", b"a\n"), ("opt/demo/b", b"b\n")]),
        layer([("etc", None), ("etc/motd", b"from layer 2\n"), ("etc/.wh.legacy.conf", b""),
               ("opt", None), ("opt/demo", None), ("opt/demo/.wh..wh..opq", b""), ("opt/demo/c", b"c\n")]),
    ]
    kind = "application/vnd.oci.image.layer.v1.tar+gzip"
    descs = [blob(data, kind) for data in layers]
    diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(d)).hexdigest() for d in layers]
    config = blob(json.dumps({"architecture": ARCH, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
                              "config": {"Cmd": ["/bin/sh"]}}, sort_keys=True).encode(),
                  "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "config": config, "layers": descs}, sort_keys=True).encode(),
                    "application/vnd.oci.image.manifest.v1+json",
                    annotations={"org.opencontainers.image.ref.name": "demo"})
    with open(os.path.join(HERE, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [manifest]}, f, sort_keys=True)
    with open(os.path.join(HERE, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(f"wrote {HERE}: manifest {manifest['digest']}")


if __name__ == "__main__":
    main()
