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

# Docker Hub's names in auth files (docker.io: podman's; index.docker.io: docker's) and its API's host,
# which is what the warm check has of it (a reference's docker.io is asked at registry-1.docker.io)
DOCKER_HUB, DOCKER_HUB_API = ("docker.io", "index.docker.io", "registry-1.docker.io"), "registry-1.docker.io"


def auth_files() -> list[str]:
    """Where logins are, in the order containers-auth.json(5) reads them: $REGISTRY_AUTH_FILE (podman's
    and skopeo's override) or $XDG_RUNTIME_DIR/containers/auth.json, then the one under $XDG_CONFIG_HOME,
    then docker's ($DOCKER_CONFIG/config.json, default ~/.docker)."""
    paths = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(os.environ["REGISTRY_AUTH_FILE"])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "auth.json"))
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
        helper = next((v for k, v in helpers.items() if _same_host(k, host)), None)
        found = _helper(helper, host) if helper else _login(doc.get("auths"), host, name)
        if found is None and not helper and isinstance(doc.get("credsStore"), str):
            found = _helper(doc["credsStore"], host)
        if found is not None:
            return found
    return None


def _same_host(key: str, host: str) -> bool:
    return key == host or key in DOCKER_HUB and host in DOCKER_HUB


def _login(auths: object, host: str, name: str) -> tuple[str, str] | None:
    best: tuple[int, tuple[str, str] | None] = (-1, None)
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if not isinstance(key, str) or not isinstance(entry, dict) or not isinstance(entry.get("auth"), str):
            continue
        if "://" in key:  # docker's "https://index.docker.io/v1/": a host, its path is no namespace
            matches, length = _same_host(key.split("://", 1)[1].split("/")[0], host), 0
        else:
            key_host, _, namespace = key.partition("/")
            prefix = f"{host}/{namespace}".rstrip("/")
            matches, length = _same_host(key_host, host) and (name == prefix or name.startswith(prefix + "/")), len(prefix)
        if matches and length > best[0]:
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            best = (length, (user, password))
    return best[1]


def _helper(name: object, host: str) -> tuple[str, str] | None:
    """What docker-credential-NAME (the docker-credential-helpers protocol) has for `host`, if anything."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        return None
    import subprocess

    try:
        proc = subprocess.run([f"docker-credential-{name}", "get"], input=host.encode(), capture_output=True,
                              timeout=30)
        doc = json.loads(proc.stdout) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, RecursionError):
        return None
    user, secret = (doc.get("Username"), doc.get("Secret")) if isinstance(doc, dict) else (None, None)
    # "<token>": an identity token for an OAuth2 refresh, which nsbuild does not speak
    if isinstance(user, str) and isinstance(secret, str) and secret and user != "<token>":
        return user, secret
    return None


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
