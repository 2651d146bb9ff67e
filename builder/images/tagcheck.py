"""Has a registry tag moved? The one question a warm build of a cached plan asks a registry (plancache.py).

Kept apart from registry.py, which imports the OCI and tar machinery: this path imports urllib3 only.
One HEAD of the manifest, with the Accept list the pull used; the answer's Docker-Content-Digest (the
distribution spec's) is compared with the digest the pull resolved. Anything else (401, an error, no
header) returns None, and the build plans anew, where the full client authenticates and reports.
"""
from __future__ import annotations

ACCEPT = ", ".join(sorted((  # registry.ACCEPT, spelled out so this module imports nothing of nsbuild
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json")))


def digest(url: str) -> str | None:
    """The digest of the manifest at `url` (BASE/v2/REPO/manifests/TAG), or None if it cannot be told."""
    try:
        import urllib3

        r = urllib3.request("HEAD", url, headers={"Accept": ACCEPT}, timeout=urllib3.Timeout(connect=5.0, read=10.0),
                            retries=False, redirect=False)
    except Exception:  # noqa: BLE001 - unreachable, refused, bad TLS: the slow path says which
        return None
    return r.headers.get("Docker-Content-Digest") if r.status == 200 else None
