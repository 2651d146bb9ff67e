"""oci = "DIR" (or "oci:DIR[:TAG]"): an image in an OCI layout, one store entry per layer blob
("-oci" entries, whiteouts in overlayfs form). oci = "docker://..." is a registry layer (registry.py)."""
from __future__ import annotations

import os

from builder.layers.kinds import always, check_pin, never_moves, own_path
from builder.recipe.model import Layer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from builder.layers.oci import Image
    from builder.layers.resolve import Resolver
    from builder.layers.resolved import ResolvedLayer
    from builder.recipe.checker import Checker

KIND, KEY, LOCKED = "oci", "oci", "oci"
OPTIONS = ("sha256", "ref", "platform", "devices")


def parse(c: Checker, t: dict[str, Any], where: str, base: str, cwd: str, digest: str | None,
          devices: bool) -> Layer | None:
    value = c.typed(t, KEY, str, where)
    if value is None:
        return None
    if value.startswith("docker://"):
        from builder.layers.kinds import registry

        return registry.parse(c, t, where, base, cwd, digest, devices)
    if value.startswith("oci:"):  # skopeo's transport syntax: oci:DIR[:TAG]
        value, _, tag = value[len("oci:"):].partition(":")
        if tag and "ref" in t:
            c.add(f"{where}.ref", f"the layer names its tag twice (oci:...:{tag} and ref)", "keep one")
        t = dict(t, ref=tag) if tag else t
    host = c.host_path(value, base, cwd)
    ref = c.typed(t, "ref", str, where)
    platform = c.typed(t, "platform", str, where)
    if not os.path.isfile(os.path.join(host, "oci-layout")):
        c.add(f"{where}.oci", f"'{value}' ({host}) is not an OCI image layout (no oci-layout file)",
              "point it at a directory written by `skopeo copy ... oci:DIR:TAG` or umoci")
        return None
    return Layer(where, KIND, host, digest, devices, ref=ref, platform=platform)


def needs_store(layer: Layer) -> bool:
    return True


def image(res: Resolver, layer: Layer) -> Image:
    """The image the layer picks (index, manifest and config read and checked once per command:
    `nsbuild lock` asks twice)."""
    def pick() -> Image:
        from builder.layers import oci

        return oci.open_layout(layer.path).image(layer.ref, layer.platform)

    return res.once(("oci", layer), pick)


def resolve(res: Resolver, file: str, layer: Layer, unpack: bool) -> list[ResolvedLayer]:
    from builder.layers import unpack as up

    found = image(res, layer)
    check_pin(file, layer, found.manifest_digest.removeprefix("sha256:"))
    paths = up.blob_entries(res.store, layer, found)
    if not unpack:
        return up.blob_layers(layer, paths)
    return up.unpack_blobs(res.store, layer, found.layers, paths, [blob.path for blob in found.layers])


def digest(res: Resolver, layer: Layer) -> str:
    return image(res, layer).manifest_digest.removeprefix("sha256:")


source = own_path


def inputs(layer: Layer) -> list[str]:
    return [os.path.join(layer.path, "index.json")]  # a tag moved to another manifest


cacheable = always
moving = never_moves
