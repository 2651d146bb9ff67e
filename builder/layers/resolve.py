"""Resolving a recipe's layers for one command: each kind (kinds/) makes what the planner mounts,
the content store holding what has to be unpacked. What a kind finds once (an OCI image's index,
a binaries closure) is remembered for the command: `nsbuild lock` and --locked ask twice."""
from __future__ import annotations

from builder.layers import kinds
from builder.layers.resolved import Resolved, ResolvedLayer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Hashable
    from typing import Any, TypeVar

    from builder.layers.store import Store
    from builder.recipe.model import Layer, Recipe

    T = TypeVar("T")


class Resolver:
    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store  # made on first use: a recipe of directories needs no store (nor its imports)
        self._used = False
        self._memo: dict[Hashable, Any] = {}

    @property
    def store(self) -> Store:
        self._used = True
        return self._store()

    def save_digests(self) -> None:
        """Remember the file digests found (the store's digests.json), if any were looked up."""
        if self._used:
            self.store.save_digests()

    def once(self, key: Hashable, make: Callable[[], T]) -> T:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]  # type: ignore[no-any-return]

    def known(self, key: Hashable) -> Any:
        return self._memo.get(key)

    def needs_store(self, recipe: Recipe) -> bool:
        return any(kinds.of(layer).needs_store(layer) for layer in recipe.layers)

    def resolve(self, recipe: Recipe, unpack: bool = True) -> Resolved:
        """The recipe with each layer as the directories or image files the planner mounts (an OCI image
        gives one per layer blob). Digests are checked against the recipe's pins before anything is
        unpacked or mounted. With unpack=False (for `nsbuild plan`) nothing is written."""
        layers: list[ResolvedLayer] = []
        for layer in recipe.layers:
            layers += kinds.of(layer).resolve(self, recipe.file, layer, unpack)
        if unpack:
            self.save_digests()
        top = recipe.layers[-1] if recipe.layers else None
        image = kinds.of(top).image(self, top) if top is not None else None
        if top is None or image is None:
            return Resolved(recipe, tuple(layers), recipe.run)
        from builder.images.imageconfig import run_defaults

        # the image is what the sandbox is: its config sets [run]'s defaults
        run = run_defaults(recipe.run, image.config, f"image config of {top.origin}")
        return Resolved(recipe, tuple(layers), run, top.origin)

    def input_digest(self, layer: Layer) -> str:
        """The digest a lock file records for a layer (lock.py)."""
        return str(kinds.of(layer).digest(self, layer))
