"""Pulling an image from a registry (registry.py speaks the protocol): the manifest or index resolved by
platform, the config, and the layers' descriptors; manifests and configs are read from the store's cache
where they are (they are named by digest)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from builder.errors import NsbuildError
from builder.images.registry import MAX_JSON, BadReference, Client, Reference, parse
from builder.layers import oci

# docker:// reference with a tag -> (manifest URL, the digest it resolved to, verify TLS), per process: what
# plancache.save records so that a warm build can check that the tag has not moved
RESOLVED: dict[str, tuple[str, str, bool]] = {}


@dataclasses.dataclass(frozen=True)
class Pulled:
    """A picked image, its layers not fetched yet; `documents` are the manifest (and index) and config
    bodies by digest, for the store's cache."""
    image: oci.Image
    documents: dict[str, bytes]
    client: Client


def pull_image(text: str, origin: str, platform: str | None, cache: str | None) -> Pulled:
    """The image a docker:// layer names, for `platform` (default: the host's). `cache`: a directory of
    blobs by hex digest whose documents need not be fetched again (a digest names its content)."""
    ref = parse(text)
    clients = _clients(ref, origin)
    want = oci._parse_platform(platform) if platform else oci.host_platform()
    documents: dict[str, bytes] = {}

    def fetch(client: Client, reference: str) -> tuple[bytes, str, str]:
        cached = _cached(cache, reference)
        if cached is not None:
            doc = json.loads(cached)
            return cached, str(doc.get("mediaType", "")), reference
        body, media_type, digest = client.manifest(reference)
        documents[digest] = body
        return body, media_type, digest

    failed: list[str] = []
    for client in clients:  # the first place that has the image serves all of it, as in containers/image
        try:
            body, media_type, digest = fetch(client, ref.digest or ref.tag or "latest")
            break
        except NsbuildError as e:
            if client is clients[-1]:
                e.hint = "; ".join(filter(None, [e.hint, *(f"a mirror failed before: {f}" for f in failed)]))
                raise
            failed.append(str(e))
    if not ref.digest:  # what the tag points at now, for a cached plan to check (tagcheck.py)
        RESOLVED[str(ref)] = (f"{client.base}/v2/{client.ref.repo}/manifests/{ref.tag}", digest,
                              not client.policy.insecure)  # whether the HEAD checks the certificate
    where = f"{ref}"
    while media_type in oci.INDEX_TYPES:
        index = _json(client, body, f"index {digest}")
        entries = [d for d in index.get("manifests") or [] if isinstance(d, dict)]
        desc = _by_platform(client, entries, want, f"index {digest}")
        body, media_type, digest = fetch(client, desc["digest"])
        where = f"manifest {digest}"
    if media_type not in oci.MANIFEST_TYPES:
        raise client.error(f"{ref}: {where} has the unknown media type {media_type!r}",
                           "supported: " + ", ".join(sorted(oci.INDEX_TYPES | oci.MANIFEST_TYPES)))
    manifest = _json(client, body, f"manifest {digest}")
    config = _descriptor(client, manifest.get("config"), f"manifest {digest}: config")
    if config["mediaType"] not in oci.CONFIG_TYPES:
        raise client.error(f"manifest {digest} is not a container image (config media type {config['mediaType']!r})")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise client.error(f"manifest {digest} has no layers list")
    blobs = []
    for i, d in enumerate(layers):
        d = _descriptor(client, d, f"manifest {digest}: layers[{i}]")
        if d["mediaType"] not in oci.LAYER_TYPES:
            raise client.error(f"layer {d['digest']} has the unsupported media type {d['mediaType']!r}",
                               "supported: " + ", ".join(oci.LAYER_TYPES))
        blobs.append(oci.Blob(d["digest"], d["mediaType"], d["size"], ""))
    cfg_body = _cached(cache, config["digest"])
    if cfg_body is None:
        cfg_body = client.small_blob(config["digest"], config["size"], "config")
        documents[config["digest"]] = cfg_body
    cfg = _json(client, cfg_body, f"config {config['digest']}", manifest=False)
    if platform:
        got = oci._normalize(cfg.get("os"), cfg.get("architecture"), cfg.get("variant"))
        if got != want:
            raise client.error(f"{ref} is for platform {oci._show(got)}, not {oci._show(want)}")
    return Pulled(oci.Image(digest, config["digest"], blobs, cfg), documents, client)


def _clients(ref: Reference, origin: str) -> list[Client]:
    """Clients for pulling `ref`, in the order to try them: the mirrors registries.conf gives it, then
    its location (registriesconf.Policy.endpoints). Raises NsbuildError if `ref` is blocked."""
    first = Client(ref, origin)
    places = first.policy.endpoints(f"{ref.host}/{ref.repo}", ref.digest is not None)
    if places == [(f"{ref.host}/{ref.repo}", first.policy.insecure)]:
        return [first]
    suffix = f"@{ref.digest}" if ref.digest else f":{ref.tag}"
    clients = []
    for name, insecure in places:
        try:
            at = parse(f"docker://{name}{suffix}")
        except BadReference:
            raise first.error(f"{first.policy.source}: [[registry]] {first.policy.prefix!r} sends {ref} to "
                              f"'{name}', which is not HOST/REPO", "fix its location") from None
        clients.append(Client(at, origin, insecure))
    return clients


def _cached(cache: str | None, digest: str) -> bytes | None:
    """A document from the cache, re-verified (the cache is only a directory: trust the digest, not it)."""
    if not cache or not digest.startswith("sha256:"):
        return None
    try:
        with open(os.path.join(cache, digest[len("sha256:"):]), "rb") as f:
            data = f.read(MAX_JSON + 1)
    except OSError:
        return None
    return data if "sha256:" + hashlib.sha256(data).hexdigest() == digest else None


def _json(client: Client, body: bytes, where: str, manifest: bool = True) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than the parser goes
        raise client.error(f"{where} is not JSON: {e}") from None
    if not isinstance(doc, dict) or (manifest and doc.get("schemaVersion") != 2):
        raise client.error(f"{where} is not a " + ("schemaVersion 2 " if manifest else "") + "JSON object")
    return doc


def _descriptor(client: Client, desc: object, where: str) -> dict[str, Any]:
    if not isinstance(desc, dict) or not isinstance(desc.get("mediaType"), str) \
            or not isinstance(desc.get("digest"), str) or not oci._DIGEST.fullmatch(desc["digest"]) \
            or not isinstance(desc.get("size"), int) or isinstance(desc.get("size"), bool) or desc["size"] < 0:
        raise client.error(f"{where} is not a valid descriptor (mediaType, sha256 digest, size)")
    return desc


def _by_platform(client: Client, entries: list[dict[str, Any]], want: oci.Platform, where: str) -> dict[str, Any]:
    for desc in entries:  # image-index.md: the first match wins
        p = desc.get("platform")
        if isinstance(p, dict) and oci._normalize(p.get("os"), p.get("architecture"), p.get("variant")) == want:
            return _descriptor(client, desc, where)
    offered = ", ".join(oci._show(d.get("platform")) for d in entries) or "none"
    raise client.error(f"{client.ref}: {where} has no image for platform {oci._show(want)}; it has {offered}",
                       "choose one with platform = \"os/arch[/variant]\"")
