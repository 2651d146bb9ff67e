"""oci = "docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]": an image pulled from a registry when the
layer is resolved, unpacked like an OCI layout's (unpack.py). Manifests and configs go into the
store's blob cache, so a warm pull asks only for the manifest."""
from __future__ import annotations

import dataclasses
import os

from builder.layers.kinds import always, check_pin, own_path
from builder.recipe.model import Layer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from builder.images import registry
    from builder.images.pull import Pulled
    from builder.layers.oci import Image
    from builder.layers.resolve import Resolver
    from builder.layers.resolved import ResolvedLayer
    from builder.recipe.checker import Checker

KIND, KEY, LOCKED = "registry", None, "oci"  # reached through oci = "docker://..."
OPTIONS = ("sha256", "platform", "devices")


def parse(c: Checker, t: dict[str, Any], where: str, base: str, cwd: str, digest: str | None,
          devices: bool) -> Layer | None:
    from builder.images.registry import BadReference, parse as parse_ref

    if "ref" in t:
        c.add(f"{where}.ref", "does not apply to a docker:// layer", "put the tag or digest in the reference")
    try:
        ref = parse_ref(t["oci"])
    except BadReference as e:
        c.add(f"{where}.oci", str(e), e.hint)
        return None
    platform = c.typed(t, "platform", str, where)
    return Layer(where, KIND, str(ref), digest, devices, platform=platform)


def needs_store(layer: Layer) -> bool:
    return True


def pulled(res: Resolver, layer: Layer) -> Pulled:
    def pull() -> Pulled:
        from builder.images.pull import pull_image

        return pull_image(layer.path, layer.origin, layer.platform, os.path.join(res.store.path, "blobs"))

    return res.once(("registry", layer), pull)


def image(res: Resolver, layer: Layer) -> Image:
    return pulled(res, layer).image


def client(res: Resolver, layer: Layer) -> registry.Client | None:
    """The client a layer was pulled with (None if it was not pulled by this command)."""
    found = res.known(("registry", layer))
    return found.client if found else None


def resolve(res: Resolver, file: str, layer: Layer, unpack: bool) -> list[ResolvedLayer]:
    """The blobs whose store entries are missing are fetched and verified into tmp/pull.PID.XXXX/ (all
    of them before any is unpacked: a failed pull leaves nothing under sha256/), then unpacked."""
    from builder.layers import unpack as up

    found = image(res, layer)
    check_pin(file, layer, found.manifest_digest.removeprefix("sha256:"))
    paths = up.blob_entries(res.store, layer, found)
    if not unpack:
        return up.blob_layers(layer, paths)
    source = pulled(res, layer)
    with res.store.scratch("pull") as tmp:
        blobs = []
        for blob, path in zip(found.layers, paths):
            if os.path.isdir(path):
                blobs.append(dataclasses.replace(blob, path=""))  # store.fill will not read it
                continue
            dest = os.path.join(tmp, blob.digest.removeprefix("sha256:"))
            source.client.blob(blob.digest, blob.size, dest, f"pulling {blob.digest[7:19]}")
            blobs.append(dataclasses.replace(blob, path=dest))
        res.store.cache_documents(source.documents)
        return up.unpack_blobs(res.store, layer, blobs, paths, [f"{layer.path} blob {b.digest}" for b in found.layers])


def digest(res: Resolver, layer: Layer) -> str:
    return image(res, layer).manifest_digest.removeprefix("sha256:")


source = own_path


def inputs(layer: Layer) -> list[str]:
    """registries.conf: a change to what it says of a registry (insecure, blocked) plans anew."""
    from builder.images.registriesconf import files

    return files()

cacheable = always


def moving(layer: Layer) -> list[tuple[str, str, bool]] | None:
    """A tag's (manifest URL, digest, verify TLS) as this process pulled it: a warm build checks that it did not
    move (tagcheck.py). A digest cannot move. None: the tag was not resolved here."""
    if "@sha256:" in layer.path:
        return []
    import sys

    found = getattr(sys.modules.get("builder.images.pull"), "RESOLVED", {}).get(layer.path)
    return None if found is None else [found]
