"""image = "FILE": an erofs, squashfs or ext4 image, mounted read-only (the planner's image steps)."""
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

KIND, KEY, LOCKED = "image", "image", "image"
OPTIONS = ("sha256", "type")
IMAGE_TYPES = ("erofs", "squashfs", "ext4")


def image_type(path: str) -> str | None:
    """The filesystem in an image file, from its magic number."""
    with open(path, "rb") as f:
        head = f.read(1082)
    if head[:4] == b"hsqs":
        return "squashfs"
    if head[1024:1028] == b"\xe2\xe1\xf5\xe0":
        return "erofs"
    if head[1080:1082] == b"\x53\xef":
        return "ext4"  # also ext2/ext3: ext4 mounts them
    return None


def parse(c: Checker, t: dict[str, Any], where: str, base: str, cwd: str, digest: str | None,
          devices: bool) -> Layer | None:
    value = c.typed(t, KEY, str, where)
    if value is None:
        return None
    host = c.host_path(value, base, cwd)
    if not os.path.isfile(host):
        c.add(f"{where}.image", f"'{value}' ({host}) is not a file", "image paths are relative to the recipe file")
        return None
    fstype = c.typed(t, "type", str, where)
    if fstype is not None and fstype not in IMAGE_TYPES:
        c.add(f"{where}.type", f"unknown image type '{fstype}'", "use " + ", ".join(IMAGE_TYPES))
        return None
    fstype = fstype or image_type(host)
    if fstype is None:
        c.add(f"{where}.image", f"'{value}' is not an erofs, squashfs or ext4 image",
              "make one with mkfs.erofs or mksquashfs, or set type = \"...\"")
        return None
    return Layer(where, KIND, host, digest, fstype=fstype)


def needs_store(layer: Layer) -> bool:
    return bool(layer.sha256)  # only its digest cache, to check the pin


def resolve(res: Resolver, file: str, layer: Layer, unpack: bool) -> list[ResolvedLayer]:
    if layer.sha256:
        check_pin(file, layer, res.store.digest(layer.path))
    return [ResolvedLayer(layer.origin, "image", layer.path, layer.fstype)]


digest = file_digest
source = own_path
image = no_image
inputs = no_inputs
cacheable = always
moving = never_moves
