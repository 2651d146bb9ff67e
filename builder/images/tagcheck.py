"""Has a registry tag moved? The one question a warm build of a cached plan asks a registry (plancache.py).

One HEAD of the manifest, with the Accept list the pull used; the answer's Docker-Content-Digest (the
distribution spec's) is compared with the digest the pull resolved. A registry that answers 401 gets
what the pull gave it (auth.py), then the HEAD again: for a Bearer challenge (Docker Hub, ghcr.io,
quay.io: even anonymous pulls need a token) a token, with the user's credentials if any; for Basic
those credentials. Anything else returns None, and the build plans anew, where the full client
(registry.py) authenticates and reports.

The requests are made by curl (7.84 or later) where it is installed, else by the standard library's
http.client. A warm build has 50 ms in all (bench/registry_rows.py): spawning curl costs ~10 ms,
importing http.client ~30 ms (its `email` header parser, `ssl`), urllib3 ~85 ms more. curl is spawned
with os.posix_spawnp, as the subprocess module would cost 15 ms to import, and is given the
Authorization header on stdin, so that no credential or token is on its command line for other users
to read. This module imports nothing of nsbuild, for the same reason, until a registry asks for a login.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

ACCEPT = ", ".join(sorted((  # registry.ACCEPT, spelled out so that this module imports no OCI machinery
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json")))
TIMEOUT = 10
MAX_BODY = 1 << 20      # a token service's answer: tokens are a few kB
MAX_OUT = MAX_BODY + (1 << 18)  # what curl may print: the body, then --write-out's status and headers


class _Answer:
    """What the check reads of one response (status 0: no answer)."""

    def __init__(self, status: int, digest: str = "", challenge: str = "", body: bytes = b"") -> None:
        self.status, self.digest, self.challenge, self.body = status, digest, challenge, body


def digest(url: str, verify: bool = True) -> str | None:
    """The digest of the manifest at `url` (BASE/v2/REPO/manifests/TAG), or None if it cannot be told.
    verify=False: HTTPS without certificate checks, for a registry registries.conf marks insecure."""
    if not url.startswith(("http://", "https://")):
        return None
    try:
        ask = _curl
        answer = ask("HEAD", url, verify, "")
    except FileNotFoundError:  # no curl on $PATH
        ask = _http_client
        answer = ask("HEAD", url, verify, "")
    if answer.status == 401:
        authorization = _authorization(ask, url, answer.challenge, verify)
        answer = ask("HEAD", url, verify, authorization) if authorization else _Answer(0)
    return (answer.digest or None) if answer.status == 200 else None


def _authorization(ask: Callable[[str, str, bool, str], _Answer], url: str, challenge: str,
                   verify: bool) -> str | None:
    """The Authorization header a 401's challenge asks for, as the pull's client makes it
    (registry.Client._authenticate): Basic with the user's login, or a Bearer token."""
    from builder.images import auth

    scheme, params = auth.challenge(challenge)
    host, _, path = url.split("://", 1)[1].partition("/")
    repo = path[len("v2/"):].rsplit("/manifests/", 1)[0]
    creds = auth.credentials(host, repo)
    if scheme == "basic":
        return auth.basic(creds) if creds else None
    token = _token(ask, params, repo, creds, verify) if scheme == "bearer" else None
    return f"Bearer {token}" if token else None


def _token(ask: Callable[[str, str, bool, str], _Answer], params: dict[str, str], repo: str,
           creds: tuple[str, str] | None, verify: bool) -> str | None:
    from builder.images import auth

    if not params.get("realm", "").startswith(("https://", "http://")):
        return None
    answer = ask("GET", auth.token_url(params, repo, "pull"), verify, auth.basic(creds) if creds else "")
    token = auth.token_of(answer.body) if answer.status == 200 else None
    # printable ASCII only: it goes into a header, and into curl's config, where a newline would start an option
    return token if token and token.isascii() and token.isprintable() else None


def _curl(method: str, url: str, verify: bool, authorization: str) -> _Answer:
    """FileNotFoundError: no curl on $PATH."""
    args = ["curl", "-q",  # first: ignore ~/.curlrc, so that the user's defaults cannot change the question
            "--silent", "--max-time", str(TIMEOUT), "--max-filesize", str(MAX_BODY),
            "--globoff",  # one request: a registry's realm="...{1,2}[1-9]" must not make curl ask many
            "--noproxy", "*",  # as the pull, which urllib3 makes without proxies
            "--proto", "=http,https", "--header", f"Accept: {ACCEPT}", "--config", "-",
            # after the body, on its last three lines
            "--write-out", "\n%{response_code}\n%header{docker-content-digest}\n%header{www-authenticate}",
            "--url", url]
    if method == "HEAD":
        args[2:2] = ["--head", "--output", "/dev/null"]
    if not verify:
        args[2:2] = ["--insecure"]
    for option, variable in (("--cacert", "SSL_CERT_FILE"), ("--capath", "SSL_CERT_DIR")):
        if os.environ.get(variable):  # OpenSSL's, so urllib3's and http.client's; curl 7.88 reads neither
            args[2:2] = [option, os.environ[variable]]
    config = f'header = "Authorization: {_quoted(authorization)}"\n' if authorization else ""
    stdin_r, stdin_w = os.pipe()  # curl's --config
    out_r, out_w = os.pipe()  # its stdout: one pipe, read to its end, so nothing can wait on another
    try:
        pid = os.posix_spawnp("curl", args, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, stdin_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
    except BaseException:
        os.close(stdin_w)
        os.close(out_r)
        raise
    finally:
        os.close(stdin_r)
        os.close(out_w)
    out = b""
    try:
        try:
            os.write(stdin_w, config.encode())  # a few bytes: the pipe takes them without blocking
        except BrokenPipeError:
            pass  # curl is gone already: its exit status says so
        finally:
            os.close(stdin_w)
        while len(out) <= MAX_OUT and (chunk := os.read(out_r, 65536)):
            out += chunk  # beyond that, closing the pipe ends curl (EPIPE), which the exit status shows
    finally:
        os.close(out_r)
        _, status = os.waitpid(pid, 0)
    body, code, found, challenge = (b"\n\n\n" + out).rsplit(b"\n", 3)
    if os.waitstatus_to_exitcode(status) != 0 or not code.isdigit():  # unreachable, refused, bad TLS, timed out
        return _Answer(0)
    return _Answer(int(code), found.decode(errors="replace").strip(), challenge.decode(errors="replace").strip(),
                   body[3:])


def _quoted(value: str) -> str:
    """`value` inside a double-quoted curl config string."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _http_client(method: str, url: str, verify: bool, authorization: str) -> _Answer:
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
    headers = {"Accept": ACCEPT, **({"Authorization": authorization} if authorization else {})}
    try:
        conn.request(method, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), headers=headers)
        r = conn.getresponse()
        return _Answer(r.status, r.getheader("Docker-Content-Digest") or "", r.getheader("WWW-Authenticate") or "",
                       r.read(MAX_BODY) if method == "GET" else b"")
    except (OSError, http.client.HTTPException):  # unreachable, refused, bad TLS: the slow path says which
        return _Answer(0)
    finally:
        conn.close()
