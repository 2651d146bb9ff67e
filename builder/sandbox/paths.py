"""Where nsbuild keeps its state and content store: root's system paths, or a user's own (XDG).

    root (in the initial user namespace)   /run/nsbuild             /var/lib/nsbuild/store
    any other user                         $XDG_RUNTIME_DIR/nsbuild $XDG_DATA_HOME/nsbuild/store
      without XDG_RUNTIME_DIR              /tmp/nsbuild-UID          (~/.local/share/nsbuild/store)

--state-dir, NSBUILD_STATE_DIR and NSBUILD_STORE override these. A per-user directory that is not the
user's own and private (0700) is refused: another user could read or replace what nsbuild keeps there.
"""
from __future__ import annotations

import os
import stat

from builder.errors import NsbuildError

ROOT_STATE_DIR = "/run/nsbuild"
ROOT_STORE = "/var/lib/nsbuild/store"


def host_root() -> bool:
    """Root in the initial user namespace (a user namespace's root gets the per-user paths)."""
    return os.geteuid() == 0 and initial_userns()


def initial_userns() -> bool:
    """Whether this process is in the initial user namespace (whose uid_map maps every id to itself).
    kernel.features.userns_mapping() says more, but importing it (dataclasses) costs `run` ~10 ms."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def default_state_dir() -> str:
    if host_root():
        return ROOT_STATE_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        _check_private(runtime, "XDG_RUNTIME_DIR", create=False)
        return os.path.join(os.path.abspath(runtime), "nsbuild")
    path = f"/tmp/nsbuild-{os.geteuid()}"
    _check_private(path, "the fallback state directory", create=True)
    return path


def store_dir() -> str:
    """The content store: NSBUILD_STORE, else the default (no import of the store's module: `run` needs
    only the path)."""
    chosen = os.environ.get("NSBUILD_STORE")
    return os.path.abspath(chosen) if chosen else default_store_dir()


def default_store_dir() -> str:
    if host_root():
        return ROOT_STORE
    data = os.environ.get("XDG_DATA_HOME")
    if not (data and os.path.isabs(data)):  # the XDG spec: a relative value is to be ignored
        data = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "nsbuild", "store")


def _check_private(path: str, what: str, create: bool) -> None:
    """`path` is a directory of this user's, not a symlink, mode 0700; created so when `create`."""
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise NsbuildError(f"cannot create {what} {path}: {e.strerror}",
                               "set XDG_RUNTIME_DIR, or choose one with --state-dir (NSBUILD_STATE_DIR)") from None
    try:
        st = os.lstat(path)
    except OSError as e:
        raise NsbuildError(f"{what} {path} is not usable: {e.strerror}",
                           "set XDG_RUNTIME_DIR to a directory of yours, or use --state-dir") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        found = ("not a directory" if not stat.S_ISDIR(st.st_mode) else
                 f"owned by uid {st.st_uid}" if st.st_uid != os.geteuid() else f"mode {st.st_mode & 0o777:04o}")
        raise NsbuildError(f"{what} {path} is not a private directory of yours ({found}): nsbuild will not "
                           "keep sandboxes there",
                           "it must be yours with mode 0700: remove or fix it, set XDG_RUNTIME_DIR, "
                           "or use --state-dir")
