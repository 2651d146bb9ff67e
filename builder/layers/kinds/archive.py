"""archive = "FILE": a tarball (tar, gz, xz, bz2, zst) unpacked once into the content store."""
from __future__ import annotations

import os

from builder.layers.kinds import always, check_pin, file_digest, never_moves, no_image, no_inputs, own_path
from builder.layers.resolved import ResolvedLayer
from builder.recipe.model import Layer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from builder.layers.resolve import Resolver
    from builder.recipe.checker import Checker

KIND, KEY, LOCKED = "archive", "archive", "archive"
OPTIONS = ("sha256", "devices")


def parse(c: Checker, t: dict[str, Any], where: str, base: str, cwd: str, digest: str | None,
          devices: bool) -> Layer | None:
    value = c.typed(t, KEY, str, where)
    if value is None:
        return None
    host = c.host_path(value, base, cwd)
    if not os.path.isfile(host):
        c.add(f"{where}.archive", f"'{value}' ({host}) is not a file", "archive paths are relative to the "
              "recipe file; tar, tar.gz, tar.xz, tar.bz2 and tar.zst are read")
        return None
    return Layer(where, KIND, host, digest, devices)


def needs_store(layer: Layer) -> bool:
    return True


def resolve(res: Resolver, file: str, layer: Layer, unpack: bool) -> list[ResolvedLayer]:
    found = res.store.digest(layer.path)
    check_pin(file, layer, found)
    path = res.store.entry(found, layer.devices)
    if unpack:
        from builder.layers import unpack as up

        res.store.fill(layer.origin, layer.path, path, lambda tmp: up.untar(layer.path, tmp, layer.devices))
    return [ResolvedLayer(layer.origin, "dir", path, stored=True)]


digest = file_digest
source = own_path
image = no_image
inputs = no_inputs
cacheable = always
moving = never_moves
