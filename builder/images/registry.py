"""Pulling images from registries, as the OCI distribution spec describes: `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]`.

- Manifests and indexes are fetched with an Accept list of the OCI and Docker types; an index is resolved
  by platform, as in a layout (oci.py).
- Auth: a 401 names a scheme in WWW-Authenticate. Bearer: a token is fetched from the realm, with the
  user's credentials if there are any. Basic: the credentials themselves. Credentials are read only
  from the files users already have and the credential helpers they name (auth.py).
- HTTPS, except for loopback registries (127.0.0.0/8, ::1, localhost), which are spoken to in plain
  HTTP as Docker and podman do. A registry that registries.conf marks `insecure` is tried in HTTPS
  without certificate checks, then in plain HTTP, as containers/image does; one marked `blocked` is
  refused (registriesconf.py).
- Blobs stream to a file with their sha256 and size checked on the way; a dropped connection resumes
  with a Range request. The caller renames or unpacks a blob only once it is verified.

The HTTP client is urllib3: one well-kept package without dependencies of its own (httpx brings
httpcore, h11, anyio, sniffio, idna and certifi), with streamed bodies, Range-friendly responses and
certificate checks against the system store. Retries are done here, not by urllib3, so that each one
can resume a blob where it stopped and every failure can name the layer and the registry.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import ipaddress
import json
import re
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from builder.layers import oci
from builder import progress
from builder.errors import NsbuildError
from builder.images.auth import basic, challenge, credentials, token_of, token_url

ACCEPT = ", ".join(sorted(oci.INDEX_TYPES | oci.MANIFEST_TYPES))
MAX_JSON = 4 << 20      # manifests and configs: the distribution spec's limit for manifests
ATTEMPTS = 4            # per request: the first try and three retries
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF = re.compile(rf"(?P<host>[^/@]+)/(?P<repo>{_COMPONENT}(?:/{_COMPONENT})*)"
                  r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(?:@(?P<digest>[^@]+))?")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
PREFIX = "docker://"
DOCKER_HUB_API = "registry-1.docker.io"  # where a reference's docker.io is asked


class _Broken(Exception):
    """A body that broke off while read (retried by the caller)."""


class BadReference(ValueError):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@dataclasses.dataclass(frozen=True)
class Reference:
    host: str               # HOST[:PORT], as in auth.json keys
    repo: str
    tag: str | None
    digest: str | None      # sha256:<hex>

    def __str__(self) -> str:
        return (f"{PREFIX}{self.host}/{self.repo}" + (f":{self.tag}" if self.tag else "") +
                (f"@{self.digest}" if self.digest else ""))

    @property
    def loopback(self) -> bool:
        name = self.host.rsplit(":", 1)[0] if not self.host.startswith("[") else self.host[1:self.host.index("]")]
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False


def parse(text: str) -> Reference:
    """`docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]` (skopeo's transport syntax); raises BadReference."""
    hint = "write docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST], e.g. docker://registry.example.org/debian:bookworm"
    if not text.startswith(PREFIX):
        raise BadReference(f"'{text}' is not a docker:// reference", hint)
    m = _REF.fullmatch(text[len(PREFIX):])
    if not m:
        raise BadReference(f"'{text}' is not a valid image reference (repository names are lower-case)", hint)
    host, digest = m["host"], m["digest"]
    if not _HOST.fullmatch(host) or not ("." in host or ":" in host or host == "localhost"):
        raise BadReference(f"'{text}' names no registry host ('{host}' is not HOST[:PORT])",
                           "name the registry, e.g. docker://docker.io/library/debian:bookworm")
    if digest is not None and not oci._DIGEST.fullmatch(digest):
        raise BadReference(f"'{text}': '{digest}' is not sha256:<64 lower-case hex digits>", hint)
    repo = m["repo"]
    if host in ("docker.io", "index.docker.io"):  # as docker and skopeo read them: docker.io/debian is library/debian
        host, repo = "docker.io", repo if "/" in repo else f"library/{repo}"
    return Reference(host, repo, m["tag"] if m["tag"] or digest else "latest", digest)


class Client:
    """One registry and repository, for one layer of a recipe (named in every error). `insecure`: as
    registries.conf says of `ref` (which must not be blocked) when None; else `ref` is a mirror or
    rewritten location of an image name that was checked already."""

    def __init__(self, ref: Reference, origin: str, insecure: bool | None = None) -> None:
        import urllib3

        from builder.images.registriesconf import Policy, policy

        self.ref, self.origin = ref, origin
        self.policy = policy(ref.host, ref.repo) if insecure is None else Policy(insecure)
        if self.policy.blocked:
            raise self.error(f"{ref} is blocked by {self.policy.source}",
                             "pull from another registry, or ask who manages that file")
        api = DOCKER_HUB_API if ref.host == "docker.io" else ref.host
        self.base = ("http" if ref.loopback else "https") + "://" + api
        self.plain_fallback = self.policy.insecure and not ref.loopback  # until HTTPS has answered once
        if self.policy.insecure:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the user asked for it
        # redirects are followed (blob storage); urllib3 drops Authorization when one leaves the host
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10.0, read=60.0),
                                        cert_reqs="CERT_NONE" if self.policy.insecure else "CERT_REQUIRED",
                                        retries=urllib3.Retry(total=5, connect=0, read=0, status=0, other=0,
                                                              redirect=5))
        self.authorization: str | None = None
        self.actions = "pull"  # a push asks for "pull,push" tokens

    def error(self, message: str, hint: str = "") -> NsbuildError:
        return NsbuildError(f"{self.origin}: registry {self.ref.host}: {message}", hint)

    # --- requests

    def request(self, path: str, headers: dict[str, str] | None = None, what: str = "", method: str = "GET",
                body: bytes | BinaryIO | None = None, ok: tuple[int, ...] = (200, 206)) -> Any:
        """`method` base+path (or an absolute URL, as upload Locations are), the response body not read yet:
        auth challenges answered, connection errors, 429 and 5xx retried with backoff (a file body is
        rewound). A status not in `ok` is an error naming `what`."""
        import urllib3

        authed = False
        for attempt in range(ATTEMPTS):
            url = path if "://" in path else self.base + path
            h = dict(headers or {})
            if self.authorization:
                h["Authorization"] = self.authorization
            if hasattr(body, "seek"):
                body.seek(0)  # type: ignore[union-attr]
            try:
                r = self.http.request(method, url, headers=h, body=body, preload_content=False)
            except urllib3.exceptions.HTTPError as e:
                if self.plain_fallback and self.base.startswith("https:"):
                    self.base = "http" + self.base[len("https"):]  # an insecure registry without TLS
                    continue
                if attempt + 1 == ATTEMPTS:
                    raise self.error(f"cannot reach {self.base} ({_reason(e)})", _unreachable_hint(self, e)) from None
                _pause(attempt)
                continue
            self.plain_fallback = False
            if r.status in ok:
                return r
            answer = _drain(r)
            if r.status == 401 and not authed and r.headers.get("WWW-Authenticate"):
                authed = True
                self._authenticate(r.headers.get("WWW-Authenticate", ""))
                continue
            if r.status in RETRY_STATUS and attempt + 1 < ATTEMPTS:
                _pause(attempt, r.headers.get("Retry-After"))
                continue
            raise self._status_error(r.status, what, answer)
        raise AssertionError("not reached")

    def _status_error(self, status: int, what: str, body: bytes) -> NsbuildError:
        detail = _error_detail(body)
        where = f"{what} of {self.ref}"
        if status == 401:
            return self.error(f"{where}: authentication failed (401{detail})",
                              "log in with `skopeo login` or `podman login` (they write "
                              "$XDG_RUNTIME_DIR/containers/auth.json), or `docker login` (~/.docker/config.json)")
        if status == 403:
            return self.error(f"{where}: access denied (403{detail})", "check the account's rights on the repository")
        if status == 404:
            return self.error(f"{where}: not found (404{detail})", "check the repository, tag and digest")
        if status == 429:
            return self.error(f"{where}: too many requests (429{detail}), still after {ATTEMPTS} tries",
                              "wait and build again")
        if status >= 500:
            return self.error(f"{where}: the registry failed ({status}{detail}), still after {ATTEMPTS} tries",
                              "try again later")
        return self.error(f"{where}: unexpected HTTP status {status}{detail}")

    def _authenticate(self, header: str) -> None:
        scheme, params = challenge(header)
        creds = credentials(self.ref.host, self.ref.repo)
        if scheme == "basic":
            if creds is None:
                raise self.error(f"{self.ref} needs a login (HTTP Basic) and no credentials for "
                                 f"{self.ref.host} were found",
                                 "log in with `skopeo login` or `podman login`, or `docker login`")
            self.authorization = basic(creds)
            return
        if scheme != "bearer" or not params.get("realm"):
            raise self.error(f"unsupported authentication challenge {header!r}")
        self.authorization = "Bearer " + self._token(params, creds)

    def _token(self, params: dict[str, str], creds: tuple[str, str] | None) -> str:
        import urllib3

        url = token_url(params, self.ref.repo, self.actions)
        headers = {"Authorization": basic(creds)} if creds else {}
        try:
            r = self.http.request("GET", url, headers=headers, preload_content=False)
        except urllib3.exceptions.HTTPError as e:
            raise self.error(f"cannot reach the token service {params['realm']} ({_reason(e)})") from None
        body = _drain(r)
        if r.status != 200:
            raise self.error(f"the token service {params['realm']} refused ({r.status}{_error_detail(body)})",
                             "check the credentials in auth.json / ~/.docker/config.json" if r.status in (401, 403)
                             else "")
        token = token_of(body)
        if token is None:
            raise self.error(f"the token service {params['realm']} sent no token")
        return token

    # --- manifests and blobs

    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        """A manifest or index by tag or digest: (body, media type, digest). A digest asked for is checked."""
        for attempt in range(ATTEMPTS):
            r = self.request(f"/v2/{self.ref.repo}/manifests/{reference}", {"Accept": ACCEPT},
                             f"manifest {reference}")
            try:
                body = self._read_small(r, f"manifest {reference}")
                break
            except _Broken as e:
                if attempt + 1 == ATTEMPTS:
                    raise self.error(f"manifest {reference}: the connection broke ({e}), {ATTEMPTS} tries",
                                     "try again") from None
                _pause(attempt)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise self.error(f"manifest {reference} arrived with sha256 {digest}: wrong digest",
                             "the registry or something between is corrupting data")
        media_type = r.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            inner = json.loads(body).get("mediaType")
        except (ValueError, AttributeError, RecursionError):
            raise self.error(f"manifest {reference} is not a JSON object") from None
        return body, inner if isinstance(inner, str) and inner else media_type, digest

    def small_blob(self, digest: str, size: int, what: str) -> bytes:
        """A config blob, read whole and verified (resumed like a layer)."""
        if size > MAX_JSON:
            raise self.error(f"{what} {digest} is {size} bytes, more than the {MAX_JSON} allowed")
        buf = io.BytesIO()
        self._stream(digest, size, buf, lambda n: None)
        return buf.getvalue()

    def _read_small(self, r: Any, what: str) -> bytes:
        import urllib3

        try:
            body = r.read(MAX_JSON + 1)
        except urllib3.exceptions.HTTPError as e:
            raise _Broken(_reason(e)) from None
        finally:
            r.release_conn()
        if len(body) > MAX_JSON:
            raise self.error(f"{what} is larger than {MAX_JSON} bytes")
        return body

    def blob(self, digest: str, size: int, dest: str, label: str) -> None:
        """Stream blob `digest` into the new file `dest`, resuming after dropped connections; raise
        (leaving `dest` to the caller to delete) unless it has exactly `size` bytes with that sha256."""
        with open(dest, "wb") as f, progress.bar(label, size) as advance:
            self._stream(digest, size, f, advance)

    def _stream(self, digest: str, size: int, f: BinaryIO, advance: Callable[[int], None]) -> None:
        import urllib3

        path = f"/v2/{self.ref.repo}/blobs/{digest}"
        h, got, failure = hashlib.sha256(), 0, ""
        for attempt in range(ATTEMPTS):
            r = self.request(path, {"Range": f"bytes={got}-"} if got else None, f"blob {digest}")
            if got and r.status != 206:  # the server ignored Range: start again from 0
                f.seek(0)
                f.truncate()
                h, got = hashlib.sha256(), 0
            try:
                # read1: what has arrived, so a body that breaks off keeps every byte before the break
                while chunk := r.read1(1 << 16):
                    if got + len(chunk) > size:
                        raise self.error(f"blob {digest} is larger than the {size} bytes the manifest says")
                    f.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
                    advance(len(chunk))
                failure = f"the connection ended after {got} of {size} bytes"
            except urllib3.exceptions.HTTPError as e:  # dropped, reset, or shorter than Content-Length
                failure = f"the connection broke after {got} of {size} bytes ({_reason(e)})"
            finally:
                r.release_conn()
            if got == size:
                break
            if attempt + 1 < ATTEMPTS:
                _pause(attempt)
        if got != size:
            raise self.error(f"blob {digest} is truncated: {failure}, {ATTEMPTS} tries",
                             "the network or the registry keeps breaking off: try again")
        if "sha256:" + h.hexdigest() != digest:
            raise self.error(f"blob {digest} arrived with sha256:{h.hexdigest()}: wrong digest",
                             "the registry or something between is corrupting data")


def _unreachable_hint(client: Client, e: Exception) -> str:
    import urllib3

    if isinstance(getattr(e, "reason", None) or e, urllib3.exceptions.SSLError) and not client.policy.insecure:
        return (f"if {client.ref.host} serves plain HTTP or a self-signed certificate, mark it insecure in "
                f"registries.conf: [[registry]] location = \"{client.ref.host}\" insecure = true")
    return "check that the registry runs and the address is right"


def _drain(r: Any) -> bytes:
    try:
        return r.read(64 << 10)
    except Exception:  # an error body is only for the message
        return b""
    finally:
        r.release_conn()


def _error_detail(body: bytes) -> str:
    """The registry's own words: {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "..."}]}."""
    try:
        errors = json.loads(body).get("errors") or []
        words = [f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError, TypeError, RecursionError):  # whatever the body is, no traceback
        return ""
    return ", " + "; ".join(words) if words else ""


def _reason(e: Exception) -> str:
    reason = getattr(e, "reason", None)  # MaxRetryError wraps the real one
    text = str(reason or e)
    m = re.search(r"\[Errno -?\d+\] ([^')]+)", text)
    return m.group(1) if m else text


def _pause(attempt: int, retry_after: str | None = None) -> None:
    delay = 0.2 * 2 ** attempt
    if retry_after and retry_after.isdigit():
        delay = max(delay, min(float(retry_after), 5.0))  # honoured, but a build does not hang on it
    time.sleep(delay)
