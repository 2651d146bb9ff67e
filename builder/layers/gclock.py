"""The content store's gc lock: builds hold it shared while they use store entries, and
`nsbuild gc` takes it exclusively. The lock only; when a command holds and releases it is the
session's (sandbox/session.py), and the store's own while it fills an entry. Apart from store.py so
that a warm build, which runs a cached plan, can hold it without importing store.py."""
from __future__ import annotations

import fcntl
import os

_held: dict[str, int] = {}  # store path -> fd holding the lock shared


def _open(store: str) -> int:
    return os.open(os.path.join(store, ".gc.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def hold(store: str) -> None:
    """Keep `nsbuild gc` from removing entries of `store` until release() or this process exits.
    Once a sandbox is persisted its metadata protects its entries, so builds release then."""
    if store not in _held and os.path.isdir(store):
        fd = _open(store)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        _held[store] = fd


def release(store: str | None = None) -> None:
    """Drop the hold on `store`, or on every store. Holds are per process, not counted: a build
    that persists releases them all."""
    for path in [store] if store else list(_held):
        fd = _held.pop(path, None)
        if fd is not None:
            os.close(fd)


def exclusive(store: str, wait: bool = True) -> int:
    """Wait until no build holds `store`, and keep them out until the returned fd is closed.
    wait=False: raise BlockingIOError instead of waiting."""
    fd = _open(store)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd
