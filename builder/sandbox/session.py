"""One command's hold on nsbuild's state: the state dir, the content store, the resolver of layers,
the kernel's features, and the store's gc lock.

The gc protocol (gclock.py is its lock): a process that uses store entries holds the store's gc lock
shared, from resolving layers (or looking up a cached plan that names entries) until its sandbox is
persisted and registered, when the sandbox's metadata takes over keeping the entries; `nsbuild gc`
takes the lock exclusively. The store holds it itself whenever it creates or reads an entry.
Nothing here is imported eagerly: a warm build (a cached plan) needs only the state dir and the hold.
"""
from __future__ import annotations

from builder.layers import gclock
from builder.errors import NsbuildError
from builder.sandbox.state import StateDir, state_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from builder.kernel import features as feat
    from builder.layers.resolve import Resolver
    from builder.layers.resolved import Resolved
    from builder.layers.store import Store
    from builder.recipe.model import Recipe


class Session:
    def __init__(self, state: StateDir | None = None, store: str | None = None) -> None:
        self._state = state
        self._store_path = store  # None: store_dir()
        self._store: Store | None = None
        self._resolver: Resolver | None = None
        self._features: dict[bool, feat.Features] = {}

    @property
    def state(self) -> StateDir:
        if self._state is None:
            self._state = StateDir(state_dir())
        return self._state

    @property
    def store(self) -> Store:
        """The content store, made on first use (store.py and its imports only when a layer needs it)."""
        if self._store is None:
            from builder.layers.store import Store, store_dir

            self._store = Store(self._store_path or store_dir())
        return self._store

    @property
    def layers(self) -> Resolver:
        if self._resolver is None:
            from builder.layers.resolve import Resolver

            self._resolver = Resolver(lambda: self.store)
        return self._resolver

    def resolve(self, recipe: Recipe, unpack: bool = True) -> Resolved:
        """The recipe's layers as the planner mounts them, pins checked (layers/resolve.py). unpack=False
        (for `nsbuild plan`) writes nothing. With unpack, from here until a build persists, this process
        holds the store's gc lock; a caller that does not persist calls release() when it is done."""
        try:
            if unpack and self.layers.needs_store(recipe):
                self.hold()
            return self.layers.resolve(recipe, unpack)
        except PermissionError as e:
            raise self.store.refused(e) from None

    def features(self, recipe: Recipe | Resolved) -> feat.Features:
        """The running kernel's features, probed once (erofs only where a layer is an erofs image)."""
        erofs = any(layer.kind == "image" and layer.fstype == "erofs" for layer in recipe.layers)
        if erofs not in self._features:
            import os

            from builder.kernel import features as feat

            f = feat.probe(erofs=erofs)
            if not f.userns and os.geteuid() != 0:  # `plan` for a user: the build runs in the holder's user namespace
                import dataclasses

                from builder.sandbox.rootless import mapping

                f = dataclasses.replace(f, userns=mapping())
            self._features[erofs] = f
        return self._features[erofs]

    def hold(self, store: str | None = None) -> None:
        """Keep `nsbuild gc` from removing the store's entries (`store`: a path a cached plan recorded,
        so that a warm build need not import store.py to know it)."""
        gclock.hold(store or self.store.path)

    @staticmethod
    def release() -> None:
        """Persisted and registered, a sandbox's metadata keeps its entries from gc: drop the hold."""
        gclock.release()

    def register(self, meta: dict[str, Any]) -> None:
        """Make the state dir a gc root, so that `nsbuild gc` reads the metadata there and keeps the
        entries it lists. Called once the namespace is built (a failed build registers nothing) and
        before it is persisted (a killed build never leaves a sandbox that gc does not see), with the
        gc lock held. A warm build needs none: the build that cached its plan registered."""
        if not meta["store"]:
            return
        try:
            self.store.add_root(self.state.path)
        except OSError as e:
            raise NsbuildError(f"cannot register {self.state.path} as a gc root in {self.store.path}: "
                               f"{e.strerror}", "check that the content store is writable") from None
