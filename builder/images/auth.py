"""Registry credentials and tokens: the user's login from the files the usual tools write, the
WWW-Authenticate challenge, and the Bearer token request. Shared by the full client (registry.py) and
the warm tag check (tagcheck.py), which imports this only when a registry asks for a login.

Credentials are read only from the files `skopeo login`, `podman login` and `docker login` write, and
from the credential helpers those files name (auth_files): never from a recipe, never written anywhere.
"""
from __future__ import annotations

import base64
import json
import os
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

# Docker Hub's names in auth files (docker.io: podman's; index.docker.io: docker's) and its API's host,
# which is what the warm check has of it (registry.DOCKER_HUB_API)
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
HELPER_TIMEOUT = 10     # seconds a credential helper may take (ECR's and gcloud's ask the network)
HELPER_OUTPUT = 1 << 16  # bytes of its answer read: a login is a few hundred


def auth_files() -> list[str]:
    """Where logins are, in the order containers-auth.json(5) reads them: $REGISTRY_AUTH_FILE (podman's
    and skopeo's override) or $XDG_RUNTIME_DIR/containers/auth.json (without it, /run/containers/UID/, as
    containers/image does), then the one under $XDG_CONFIG_HOME, then docker's ($DOCKER_CONFIG/config.json,
    default ~/.docker)."""
    paths = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(os.environ["REGISTRY_AUTH_FILE"])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    else:
        paths.append(f"/run/containers/{os.getuid()}/auth.json")
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    paths.append(os.path.join(config, "containers", "auth.json"))
    paths.append(os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker"), "config.json"))
    return paths


def credentials(host: str, repo: str = "") -> tuple[str, str] | None:
    """(user, password) for the image HOST/REPO from the first auth file that has them: the file's
    credential helper for `host` (credHelpers), else its login with the longest matching key (a key may
    name a namespace: quay.io/team is tried before quay.io), else its default helper (credsStore)."""
    name = f"{host}/{repo}".rstrip("/")
    for path in auth_files():
        try:
            with open(path, "rb") as f:
                doc = json.load(f)
        except (OSError, ValueError, RecursionError):
            continue
        if not isinstance(doc, dict):
            continue
        helpers = doc.get("credHelpers") if isinstance(doc.get("credHelpers"), dict) else {}
        key = next((k for k in helpers if isinstance(k, str) and _same_host(_key_host(k), host)), None)
        # a helper is asked for the server as the file names it; a credsStore keeps Docker Hub under
        # docker login's "https://index.docker.io/v1/"
        found = _helper(helpers[key], key) if key else _login(doc.get("auths"), host, name)
        if found is None and key is None and isinstance(doc.get("credsStore"), str):
            found = _helper(doc["credsStore"], "https://index.docker.io/v1/" if host in DOCKER_HUB else host)
        if found is not None:
            return found
    return None


def _key_host(key: str) -> str:
    """The host of an auth file's key: "quay.io/team" and docker's "https://index.docker.io/v1/" alike."""
    return (key.split("://", 1)[1] if "://" in key else key).split("/")[0]


def _same_host(key_host: str, host: str) -> bool:
    return key_host == host or key_host in DOCKER_HUB and host in DOCKER_HUB


def _login(auths: object, host: str, name: str) -> tuple[str, str] | None:
    best: tuple[int, tuple[str, str] | None] = (-1, None)
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if not isinstance(key, str) or not isinstance(entry, dict) or not isinstance(entry.get("auth"), str):
            continue
        # docker's "https://index.docker.io/v1/" names a host: its path is no namespace
        namespace = "" if "://" in key else key.partition("/")[2]
        prefix = f"{host}/{namespace}".rstrip("/")
        if _same_host(_key_host(key), host) and (name == prefix or name.startswith(prefix + "/")) \
                and len(prefix) > best[0]:
            try:
                user, colon, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            if colon and user and password:  # as containers/image: anything else is no login
                best = (len(prefix), (user, password))
    return best[1]


def _helper(name: object, server: str) -> tuple[str, str] | None:
    """What docker-credential-NAME (the docker-credential-helpers protocol) has for `server`, if anything:
    within HELPER_TIMEOUT, and only if its answer fits in HELPER_OUTPUT bytes."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        return None
    import signal
    import subprocess

    try:  # in a session of its own: whatever it leaves behind goes with it
        proc = subprocess.Popen([f"docker-credential-{name}", "get"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return None
    try:
        out = _answer(proc, server.encode())
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # before it is reaped: until then its group id names no one else
        except OSError:
            pass
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    try:
        doc = json.loads(out) if out is not None and proc.returncode == 0 else None
    except (ValueError, RecursionError):
        return None
    user, secret = (doc.get("Username"), doc.get("Secret")) if isinstance(doc, dict) else (None, None)
    # "<token>": an identity token for an OAuth2 refresh, which nsbuild does not speak
    if isinstance(user, str) and isinstance(secret, str) and user and secret and user != "<token>":
        return user, secret
    return None


def _answer(proc: subprocess.Popen, question: bytes) -> bytes | None:
    """A helper's stdout once it has exited (not reaped), if that is within HELPER_TIMEOUT and at most
    HELPER_OUTPUT bytes; else None."""
    import select
    import time

    deadline = time.monotonic() + HELPER_TIMEOUT
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(question)  # a host name: the pipe takes it without blocking
        proc.stdin.flush()
    except BrokenPipeError:
        pass  # it reads no question
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    out, fd = b"", proc.stdout.fileno()
    while True:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return None  # too slow
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        out += chunk
        if len(out) > HELPER_OUTPUT:
            return None  # too much
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.002)
    return out


def basic(creds: tuple[str, str]) -> str:
    """The Authorization header value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


# one auth-param of RFC 7235: NAME=VALUE or NAME="VALUE", each after the start or a comma, so that no
# run of characters is scanned again from each of its positions (a registry chooses the header)
_PARAM = re.compile(r'(?:^|,)\s*(\w+)\s*=\s*(?:"([^"]*)"|([^\s,"]*))')


def challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme and parameters of a WWW-Authenticate header: `Bearer realm="...",service="..."`."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m[1].lower(): m[2] if m[2] is not None else m[3] for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


def token_url(params: dict[str, str], repo: str, actions: str) -> str:
    """Where to ask for a token (the distribution spec's token flow): the challenge's realm with its
    service, and its scope or else REPO's for `actions` ("pull", "pull,push")."""
    import urllib.parse

    query = {"scope": params.get("scope") or f"repository:{repo}:{actions}"}
    if params.get("service"):
        query["service"] = params["service"]
    return params["realm"] + ("&" if "?" in params["realm"] else "?") + urllib.parse.urlencode(query)


def token_of(body: bytes) -> str | None:
    """The token in a token service's answer (`token`, or OAuth2's `access_token`), if there is one."""
    try:
        doc = json.loads(body)
        token = doc.get("token") or doc.get("access_token")
    except (ValueError, AttributeError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    return token if isinstance(token, str) and token else None
