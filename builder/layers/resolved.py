"""The resolved stage: a recipe whose layers are what the planner mounts (kinds/ resolves them).

The recipe's Layer says where a layer comes from (an archive, an OCI image, host binaries...); a
ResolvedLayer is a directory or an image file, and says whether the content store holds it. The
planner and the pre-flight take a Resolved recipe only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from builder.recipe.model import Mount, PathEntry, Recipe, Root, Run


@dataclass(frozen=True)
class ResolvedLayer:
    origin: str  # the recipe's key path: "layer[0]", "layer[1].blob[2]" for an OCI image's blobs
    kind: str    # "dir" (an overlayfs lower directory) or "image" (a filesystem image, mounted read-only)
    path: str    # absolute host path
    fstype: str | None = None  # image: erofs, squashfs or ext4
    stored: bool = False       # an entry of the content store: the sandbox's metadata lists it for gc


@dataclass(frozen=True)
class Resolved:
    """A recipe with its layers resolved, and [run] with the defaults of an OCI image's config."""
    recipe: Recipe
    layers: tuple[ResolvedLayer, ...]
    run: Run
    image_config: str | None = None  # the layer whose image config set [run]'s defaults: the top one, an image

    @property
    def file(self) -> str:
        return self.recipe.file

    @property
    def sha256(self) -> str:
        return self.recipe.sha256

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def description(self) -> str:
        return self.recipe.description

    @property
    def root(self) -> Root:
        return self.recipe.root

    @property
    def mounts(self) -> tuple[Mount, ...]:
        return self.recipe.mounts

    @property
    def paths(self) -> tuple[PathEntry, ...]:
        return self.recipe.paths

    def store_entries(self) -> list[str]:
        """The content-store entries the layers are (their names under sha256/)."""
        return [os.path.basename(layer.path) for layer in self.layers if layer.stored]
