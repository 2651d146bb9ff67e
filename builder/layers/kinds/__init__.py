"""Layer kinds: one module each, registered in MODULES. A new kind is a new module here and its name
in MODULES; nothing else matches on kinds.

Each module defines:
  KIND     the Layer.kind it reads (what the recipe loader makes)
  KEY      its source key in [[layer]] (None: reached through another kind's key, as registry pulls are
           through oci = "docker://..."); OPTIONS: the other keys it takes
  LOCKED   the kind a lock file records (usually KIND)
  parse(c, t, where, base, cwd, digest, devices) -> Layer | None
           the [[layer]] table `t` checked (problems added to the checker `c`) and made a Layer
  needs_store(layer) -> bool        whether resolve() uses the content store
  resolve(res, file, layer, unpack) -> list[ResolvedLayer]
           what the planner mounts; pins checked first; unpack=False (`nsbuild plan`) writes nothing
  digest(res, layer) -> str         the input digest a lock file records
  source(layer) -> str              the source a lock file records
  image(res, layer) -> oci.Image | None   the OCI image the layer is (its config sets [run] defaults)
  inputs(layer) -> list[str]        host paths beyond recipe.inputs whose identity a cached plan checks
  cacheable(layer) -> bool          whether a plan with this layer may be cached (plancache.py)
  moving(layer) -> list[tuple[str, str, bool]] | None
           (URL, digest, verify TLS) a warm build checks again (a registry tag); None: do not cache
Modules import their heavy dependencies inside these functions: a warm build imports none of them.
"""
from __future__ import annotations

import importlib

from builder.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

    from builder.layers.resolve import Resolver
    from builder.recipe.model import Layer

MODULES = ("path", "image", "archive", "oci", "registry", "binaries")

_by_kind: dict[str, ModuleType] = {}


def _table() -> dict[str, ModuleType]:
    if not _by_kind:
        for name in MODULES:
            module = importlib.import_module(f"builder.layers.kinds.{name}")
            _by_kind[module.KIND] = module
    return _by_kind


def of(layer: Layer) -> ModuleType:
    """The module of a layer's kind."""
    return _table()[layer.kind]


def by_key() -> dict[str, ModuleType]:
    """[[layer]] source key -> the module that parses it, in MODULES order."""
    return {m.KEY: m for m in _table().values() if m.KEY}


def options() -> dict[str, tuple[str, ...]]:
    """[[layer]] source key -> the other keys that kind takes."""
    return {key: m.OPTIONS for key, m in by_key().items()}


def check_pin(file: str, layer: Layer, digest: str) -> None:
    """The recipe's sha256 pin, checked before anything is unpacked or mounted."""
    if layer.sha256 and digest != layer.sha256:
        raise UsageError(f"{file}: {layer.origin}.sha256: {layer.path} has sha256 {digest}, "
                         f"but the recipe pins {layer.sha256}",
                         f"the {of(layer).LOCKED} changed: check it, then update sha256 (or run `nsbuild lock`)")


# The answers most kinds give, taken by name in a kind's module (`source = own_path`).

def own_path(layer: Layer) -> str:
    return layer.path


def file_digest(res: Resolver, layer: Layer) -> str:
    return res.store.digest(layer.path)  # type: ignore[no-any-return]


def no_image(res: Resolver, layer: Layer) -> None:
    return None


def no_inputs(layer: Layer) -> list[str]:
    return []  # a layer's own file or directory is in recipe.inputs already (with its identity)


def always(layer: Layer) -> bool:
    return True


def never_moves(layer: Layer) -> list[tuple[str, str, bool]]:
    return []
