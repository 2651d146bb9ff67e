"""Has a registry tag moved? The one question a warm build of a cached plan asks a registry (plancache.py).

One HEAD of the manifest, with the Accept list the pull used; the answer's Docker-Content-Digest (the
distribution spec's) is compared with the digest the pull resolved. Anything else (401, an error, no
header) returns None, and the build plans anew, where the full client (registry.py) authenticates and
reports. This is the standard library's http.client, on which urllib3 is built: one request needs none
of urllib3's pooling or retries, and importing urllib3 would cost a warm build about 60 ms of its 50 ms
budget (bench/registry_rows.py). This module imports nothing of nsbuild, for the same reason.
"""
from __future__ import annotations

ACCEPT = ", ".join(sorted((  # registry.ACCEPT, spelled out so that this module imports no OCI machinery
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json")))
TIMEOUT = 10.0


def digest(url: str) -> str | None:
    """The digest of the manifest at `url` (BASE/v2/REPO/manifests/TAG), or None if it cannot be told."""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    # HTTPSConnection checks the certificate and host name against the system's store by default
    kind = {"http": http.client.HTTPConnection, "https": http.client.HTTPSConnection}.get(parts.scheme)
    if kind is None or not parts.netloc:
        return None
    conn = kind(parts.netloc, timeout=TIMEOUT)
    try:
        conn.request("HEAD", parts.path, headers={"Accept": ACCEPT})
        r = conn.getresponse()
        return r.getheader("Docker-Content-Digest") if r.status == 200 else None
    except (OSError, http.client.HTTPException):  # unreachable, refused, bad TLS: the slow path says which
        return None
    finally:
        conn.close()
