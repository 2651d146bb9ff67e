"""Pushing an exported image to a registry (OCI distribution spec, push section).

Each blob: HEAD first, and nothing is sent when the registry has it; else a monolithic upload
(POST /v2/REPO/blobs/uploads/, then PUT LOCATION?digest=...). A lower pulled from another repository of
the same registry is mounted across (POST ...?mount=DIGEST&from=REPO) instead of being sent. The
manifest goes last, so the tag appears only once every blob it names is there.
"""
from __future__ import annotations

from typing import Any

from builder.images import registry
from builder.images.dest import Blob, Dest


def push(dest: Dest, blobs: list[Blob], manifest: Blob) -> list[str]:
    ref = registry.parse(dest.path)
    client = registry.Client(ref, "export")
    client.actions = "pull,push"
    report = []
    for b in blobs:
        report.append(f"{b.digest} {_push_blob(client, b)}")
    with open(manifest.path, "rb") as f:
        body = f.read()
    r = client.request(f"/v2/{ref.repo}/manifests/{dest.tag}", {"Content-Type": manifest.media_type},
                       f"manifest {dest.tag}", method="PUT", body=body, ok=(200, 201))
    registry._drain(r)
    report.append(f"{manifest.digest} manifest {dest.tag}")
    return report


def _push_blob(client: registry.Client, b: Blob) -> str:
    repo = client.ref.repo
    r = client.request(f"/v2/{repo}/blobs/{b.digest}", what=f"blob {b.digest}", method="HEAD", ok=(200, 404))
    registry._drain(r)
    if r.status == 200:
        return "exists"  # the registry has it: nothing is sent
    source = b.source
    if source is not None and source.ref.host == client.ref.host and source.ref.repo != repo:
        r = client.request(f"/v2/{repo}/blobs/uploads/?mount={b.digest}&from={source.ref.repo}",
                           what=f"blob {b.digest}", method="POST", ok=(201, 202))
        registry._drain(r)
        if r.status == 201:
            return f"mounted from {source.ref.repo}"
        location = r.headers.get("Location", "")  # 202: no mount, an ordinary upload session instead
    else:
        r = client.request(f"/v2/{repo}/blobs/uploads/", what=f"blob {b.digest}", method="POST", ok=(202,))
        registry._drain(r)
        location = r.headers.get("Location", "")
    if not location:
        raise client.error(f"the registry opened no upload session for blob {b.digest} (no Location)")
    if location.startswith("/"):
        location = client.base + location
    url = location + ("&" if "?" in location else "?") + f"digest={b.digest}"
    if b.path:
        with open(b.path, "rb") as f:
            _put(client, url, b, f)
    else:  # a lower pulled from a registry that is not this one: fetched again, then sent
        import tempfile

        with tempfile.TemporaryFile() as f:
            tmp = f"/proc/self/fd/{f.fileno()}"
            b.source.blob(b.digest, b.size, tmp, f"fetching {b.digest[7:19]}")
            _put(client, url, b, f)
    return "uploaded"


def _put(client: registry.Client, url: str, b: Blob, f: Any) -> None:
    r = client.request(url, {"Content-Type": "application/octet-stream", "Content-Length": str(b.size)},
                       f"blob {b.digest}", method="PUT", body=f, ok=(201,))
    registry._drain(r)
