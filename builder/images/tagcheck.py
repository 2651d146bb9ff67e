"""Has a registry tag moved? The one question a warm build of a cached plan asks a registry (plancache.py).

One HEAD of the manifest, with the Accept list the pull used; the answer's Docker-Content-Digest (the
distribution spec's) is compared with the digest the pull resolved. Anything else (401, an error, no
header) returns None, and the build plans anew, where the full client (registry.py) authenticates and
reports.

The HEAD is made by curl where it is installed, else by the standard library's http.client. A warm
build has 50 ms in all (bench/registry_rows.py): spawning curl costs ~10 ms, importing http.client
~30 ms (its `email` header parser, `ssl`), urllib3 ~85 ms more. curl is spawned with os.posix_spawnp,
as the subprocess module would cost 15 ms to import. This module imports nothing of nsbuild, for the
same reason.
"""
from __future__ import annotations

import os

ACCEPT = ", ".join(sorted((  # registry.ACCEPT, spelled out so that this module imports no OCI machinery
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json")))
TIMEOUT = 10


def digest(url: str, verify: bool = True) -> str | None:
    """The digest of the manifest at `url` (BASE/v2/REPO/manifests/TAG), or None if it cannot be told.
    verify=False: HTTPS without certificate checks, for a registry registries.conf marks insecure."""
    if not url.startswith(("http://", "https://")):
        return None
    try:
        return _curl(url, verify)
    except FileNotFoundError:
        return _http_client(url, verify)


def _curl(url: str, verify: bool) -> str | None:
    """FileNotFoundError: no curl on $PATH."""
    args = ["curl", "-q",  # first: ignore ~/.curlrc, so that the user's defaults cannot change the question
            "--silent", "--head", "--output", "/dev/null", "--max-time", str(TIMEOUT),
            "--noproxy", "*",  # as the pull, which urllib3 makes without proxies
            "--proto", "=http,https", "--header", f"Accept: {ACCEPT}",
            "--write-out", "%{response_code} %header{docker-content-digest}", "--url", url]
    if not verify:
        args.insert(2, "--insecure")
    for option, variable in (("--cacert", "SSL_CERT_FILE"), ("--capath", "SSL_CERT_DIR")):
        if os.environ.get(variable):  # OpenSSL's, so urllib3's and http.client's; curl 7.88 reads neither
            args[2:2] = [option, os.environ[variable]]
    r, w = os.pipe()
    try:
        pid = os.posix_spawnp("curl", args, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, w, 1),
            (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    out = b""
    try:
        while chunk := os.read(r, 4096):
            out += chunk
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    code, _, found = out.decode(errors="replace").partition(" ")
    if os.waitstatus_to_exitcode(status) != 0 or code != "200":  # unreachable, refused, bad TLS, a timeout:
        return None  # the slow path says which
    return found.strip() or None


def _http_client(url: str, verify: bool) -> str | None:
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        import ssl

        context = ssl.create_default_context()  # the certificate and host name, by the system's store
        if not verify:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.netloc, timeout=TIMEOUT,
                                                                       context=context)
    else:
        conn = http.client.HTTPConnection(parts.netloc, timeout=TIMEOUT)
    try:
        conn.request("HEAD", parts.path, headers={"Accept": ACCEPT})
        r = conn.getresponse()
        return r.getheader("Docker-Content-Digest") if r.status == 200 else None
    except (OSError, http.client.HTTPException):  # unreachable, refused, bad TLS: the slow path says which
        return None
    finally:
        conn.close()
