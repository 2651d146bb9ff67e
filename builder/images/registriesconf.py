"""What the user's containers-registries.conf(5) says of a registry: may it speak plain HTTP or unverified
TLS (`insecure`), or is it `blocked`? The files podman, skopeo and buildah read, so one setting serves them all:

- $CONTAINERS_REGISTRIES_CONF if set; else ~/.config/containers/registries.conf if it exists, else
  /etc/containers/registries.conf; then the drop-ins of registries.conf.d/ beside each, in name order,
  later ones overriding earlier;
- version 2 tables, `[[registry]]` with `prefix` (default: `location`), `insecure`, `blocked`; the
  entry with the longest prefix that matches HOST/REPO at a path boundary wins, and `*.example.org`
  matches hosts under that domain;
- version 1 lists, `[registries.insecure] registries = [...]` and `[registries.block]`;
- where a pull goes (Policy.endpoints): the entry's `[[registry.mirror]]`s in order, each with its own
  `insecure` and `pull-from-mirror` (all, digest-only, tag-only; `mirror-by-digest-only` for all of
  them), then the entry's `location`, which replaces the matched prefix (for `*.domain`, the host).
  The recipe's name stays the image's name. As in containers/image, pushes go where the name says.
"""
from __future__ import annotations

import dataclasses
import os

from builder.errors import NsbuildError

SYSTEM = "/etc/containers/registries.conf"


@dataclasses.dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool
    pull_from: str          # "all", "digest-only" or "tag-only"


@dataclasses.dataclass(frozen=True)
class Policy:
    insecure: bool = False
    blocked: bool = False
    source: str = ""        # the file that said so, for errors
    prefix: str = ""        # of the [[registry]] entry that said so ("" for none, or for a v1 list)
    location: str = ""      # where that entry's namespace lives ("": where the name says)
    mirrors: tuple[Mirror, ...] = ()

    def endpoints(self, name: str, by_digest: bool) -> list[tuple[str, bool]]:
        """Where to pull the image `name` (HOST/REPO) from, in order, and whether each place is insecure:
        the mirrors that serve pulls by digest (or by tag), then the primary location."""
        wanted = "digest-only" if by_digest else "tag-only"
        out = [(self._rewrite(name, m.location), m.insecure) for m in self.mirrors if m.pull_from in ("all", wanted)]
        return out + [(self._rewrite(name, self.location), self.insecure)]

    def _rewrite(self, name: str, location: str) -> str:
        if not location:
            return name
        if self.prefix.startswith("*."):  # the wildcard matched the host name (a port after it stays)
            host = name.split("/", 1)[0]
            return location.rstrip("/") + name[len(host.rsplit(":", 1)[0]):]
        return location.rstrip("/") + name[len(self.prefix.rstrip("/")):]


def files() -> list[str]:
    """The files that may hold the policy, existing or not (a cached plan is dropped when one appears)."""
    if os.environ.get("CONTAINERS_REGISTRIES_CONF"):
        return [os.environ["CONTAINERS_REGISTRIES_CONF"]]
    user = os.path.expanduser("~/.config/containers/registries.conf")
    out = [user, SYSTEM]  # the user's file, where it exists, replaces the system's
    for d in dict.fromkeys((SYSTEM + ".d", user + ".d")):
        try:
            out += [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".conf")]
        except OSError:
            pass
    return out


def _read(path: str) -> dict:
    from builder.recipe.load import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise NsbuildError(f"{path}: cannot be read as registries.conf ({e})",
                           "fix the file, or point CONTAINERS_REGISTRIES_CONF at another") from None


def _matches(prefix: str, name: str) -> bool:
    if prefix.startswith("*."):
        host = name.split("/", 1)[0].rsplit(":", 1)[0]
        return host.endswith(prefix[1:])
    return name == prefix or name.startswith(prefix.rstrip("/") + "/")


def policy(host: str, repo: str) -> Policy:
    """The policy for the image HOST/REPO; raises NsbuildError for a file that is not valid TOML."""
    name = f"{host}/{repo}"
    best: tuple[int, Policy] = (-1, Policy())
    paths = files()
    if os.path.exists(paths[0]) and len(paths) > 1:
        paths.remove(SYSTEM)
    for path in paths:
        doc = _read(path)
        v1 = doc.get("registries") if isinstance(doc.get("registries"), dict) else {}
        for key, field in (("insecure", "insecure"), ("block", "blocked")):
            listed = (v1.get(key) or {}).get("registries") if isinstance(v1.get(key), dict) else None
            if isinstance(listed, list) and host in listed and len(host) >= best[0]:
                best = (len(host), dataclasses.replace(best[1], **{field: True}, source=path))
        for entry in doc.get("registry") or []:
            if not isinstance(entry, dict):
                continue
            prefix = entry.get("prefix") or entry.get("location")
            if isinstance(prefix, str) and prefix and _matches(prefix, name) and len(prefix) >= best[0]:
                location = entry.get("location") if isinstance(entry.get("location"), str) else ""
                best = (len(prefix), Policy(entry.get("insecure") is True, entry.get("blocked") is True, path,
                                            prefix, location, _mirrors(entry, path)))
    return best[1]


def _mirrors(entry: dict, path: str) -> tuple[Mirror, ...]:
    by_digest = entry.get("mirror-by-digest-only") is True
    mirrors = entry.get("mirror") or []
    out = []
    for m in mirrors if isinstance(mirrors, list) else [None]:
        pull_from = (m.get("pull-from-mirror") or "all") if isinstance(m, dict) else None
        if not isinstance(m, dict) or not isinstance(m.get("location"), str) or not m["location"] \
                or pull_from not in ("all", "digest-only", "tag-only") or (by_digest and "pull-from-mirror" in m):
            raise NsbuildError(f"{path}: [[registry]] {entry.get('prefix') or entry.get('location')!r}: each "
                               "[[registry.mirror]] needs a location, and pull-from-mirror is all, digest-only or "
                               "tag-only (not beside mirror-by-digest-only)",
                               "fix the file, or point CONTAINERS_REGISTRIES_CONF at another")
        out.append(Mirror(m["location"], m.get("insecure") is True, "digest-only" if by_digest else pull_from))
    return tuple(out)
