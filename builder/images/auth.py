"""Registry credentials and tokens: the user's login from the files the usual tools write, the
WWW-Authenticate challenge, and the Bearer token request. Shared by the full client (registry.py) and
the warm tag check (tagcheck.py), which imports this only when a registry asks for a login.

Credentials are read only from $XDG_RUNTIME_DIR/containers/auth.json (`skopeo login`, `podman login`),
then ~/.docker/config.json (`docker login`): never from a recipe, never written anywhere.
"""
from __future__ import annotations

import base64
import json
import os
import re

# Docker Hub's names in auth files (docker.io: podman's; index.docker.io: docker's) and its API's host,
# which is what the warm check has of it (a reference's docker.io is asked at registry-1.docker.io)
DOCKER_HUB, DOCKER_HUB_API = ("docker.io", "index.docker.io", "registry-1.docker.io"), "registry-1.docker.io"


def credentials(host: str) -> tuple[str, str] | None:
    """(user, password) for `host` from the first auth file that has an entry for it."""
    paths = []
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    paths.append(os.path.expanduser("~/.docker/config.json"))
    for path in paths:
        try:
            with open(path, "rb") as f:
                auths = json.load(f).get("auths", {})
        except (OSError, ValueError, AttributeError):
            continue
        for key, entry in auths.items() if isinstance(auths, dict) else ():
            # docker writes "https://index.docker.io/v1/" style keys too: compare the host part only
            found = re.sub(r"^[a-z]+://", "", key).split("/")[0]
            if (found == host or found in DOCKER_HUB and host in DOCKER_HUB) and isinstance(entry, dict) \
                    and isinstance(entry.get("auth"), str) and entry["auth"]:
                try:
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    continue
                return user, password
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
