"""Where an export goes: an OCI layout written here (write_layout), or a registry (push.py); and the blobs
an export writes, as both of them take them."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from typing import Any

from builder.errors import UsageError
from builder.layers import oci


@dataclasses.dataclass(frozen=True)
class Blob:
    """A blob of the image being written: its descriptor and where its bytes are now."""
    media_type: str
    digest: str
    size: int
    path: str                  # a file, or "" for a blob to copy from `source`
    diff_id: str = ""          # layers: sha256 of the uncompressed tar
    source: Any = None         # a registry.Client that has the blob (a lower pulled from a registry)


def descriptor(b: Blob) -> dict[str, Any]:
    return {"mediaType": b.media_type, "digest": b.digest, "size": b.size}



@dataclasses.dataclass(frozen=True)
class Dest:
    kind: str   # "oci" or "docker"
    path: str   # the layout directory, or the docker:// reference
    tag: str


def parse_dest(text: str) -> Dest:
    if text.startswith("oci:"):
        path, _, tag = text[len("oci:"):].partition(":")
        if not path:
            raise UsageError(f"'{text}' names no directory", "write oci:DIR[:TAG]")
        if tag and not oci_tag_ok(tag):
            raise UsageError(f"'{tag}' is not a valid tag", "use letters, digits, '.', '_', '-' (up to 128)")
        return Dest("oci", os.path.abspath(path), tag or "latest")
    if text.startswith("docker://"):
        from builder.images import registry

        try:
            ref = registry.parse(text)
        except registry.BadReference as e:
            raise UsageError(str(e), e.hint) from None
        if ref.digest:
            raise UsageError(f"'{text}': a push needs a tag, not a digest", "write docker://HOST/REPO:TAG")
        return Dest("docker", str(ref), ref.tag or "latest")
    raise UsageError(f"'{text}' is not an export destination", "write oci:DIR[:TAG] or docker://HOST[:PORT]/REPO:TAG")


def oci_tag_ok(tag: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", tag) is not None


def write_layout(dest: Dest, blobs: list[Blob], manifest: Blob) -> list[str]:
    """Blobs into DIR/blobs/sha256/ (each renamed into place complete), then index.json with TAG replaced."""
    top = os.path.join(dest.path, "blobs", "sha256")
    os.makedirs(top, exist_ok=True)
    report = []
    for b in blobs + [manifest]:
        target = os.path.join(top, b.digest.removeprefix("sha256:"))
        if os.path.exists(target) and os.path.getsize(target) == b.size:
            report.append(f"{b.digest} exists")
            continue
        tmp = f"{target}.{os.getpid()}.tmp"
        try:
            if b.path:
                shutil.copyfile(b.path, tmp)
            else:
                b.source.blob(b.digest, b.size, tmp, f"fetching {b.digest[7:19]}")  # a lower pulled from a registry
            os.rename(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        report.append(f"{b.digest} written")
    layout_file = os.path.join(dest.path, "oci-layout")
    if not os.path.exists(layout_file):
        _write_atomic(layout_file, b'{"imageLayoutVersion":"1.0.0"}')
    index_path = os.path.join(dest.path, "index.json")
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                             "manifests": []}
    if os.path.exists(index_path):
        with open(index_path, "rb") as f:
            index = json.load(f)
    keep = [d for d in index.get("manifests", []) if (d.get("annotations") or {}).get(oci.REF_NAME) != dest.tag]
    index["manifests"] = keep + [dict(descriptor(manifest), annotations={oci.REF_NAME: dest.tag})]
    _write_atomic(index_path, json.dumps(index, sort_keys=True).encode())
    return report


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)
