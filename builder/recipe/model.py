"""The recipe's types: typed, validated data built from a TOML file (load.py). Knows nothing of syscalls."""
from __future__ import annotations

from dataclasses import dataclass, field
import re

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
FSTYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")

# Attribute words in recipes; "suid", "dev" and "exec" lift a safe default.
ATTRS = ("ro", "nosuid", "nodev", "noexec", "noatime", "relatime", "strictatime",
         "nodiratime", "nosymfollow")
NEGATIONS = {"suid": "nosuid", "dev": "nodev", "exec": "noexec", "rw": "ro"}
ATIME = ("noatime", "relatime", "strictatime")
PROPAGATIONS = ("private", "slave", "shared", "unbindable")
SPECIAL_TYPES = ("bind", "dev")
PSEUDO_TYPES = ("tmpfs", "proc", "sysfs", "devpts", "mqueue")

# Safe defaults by mount type (bwrap/nspawn practice).
DEFAULT_ATTRS: dict[str, tuple[str, ...]] = {
    "bind": ("nosuid", "nodev"),
    "tmpfs": ("nosuid", "nodev"),
    "proc": ("nosuid", "nodev", "noexec"),
    "sysfs": ("nosuid", "nodev", "noexec"),
    "devpts": ("nosuid", "noexec"),
    "mqueue": ("nosuid", "nodev", "noexec"),
    "dev": ("nosuid", "noexec"),  # holds device nodes, so no nodev
    "root": ("nosuid", "nodev"),
}
OTHER_DEFAULT_ATTRS = ("nosuid", "nodev")

MAX_FILE_CONTENT = 1 << 20
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Layer:
    origin: str  # key path, e.g. "layer[0]"
    kind: str    # a kind of builder/layers/kinds/: "dir", "image", "archive", "oci", "registry", "binaries"
    path: str    # absolute host path ("" for binaries, a docker:// URL for registry layers)
    sha256: str | None = None  # pinned digest: the file's, the OCI manifest's, the binaries layer's
    devices: bool = False      # an archive or OCI layer may create device nodes
    fstype: str | None = None  # image: erofs, squashfs or ext4
    ref: str | None = None     # oci: tag or sha256:digest
    platform: str | None = None  # oci: os/arch[/variant]; default: the host's
    binaries: tuple[str, ...] = ()  # host programs, copied with their shared-library closure
    files: tuple[str, ...] = ()     # host files copied as they are


@dataclass(frozen=True)
class Root:
    upper: str  # "tmpfs", "none" or an absolute host directory
    size: str | None
    attrs: tuple[str, ...]

    @property
    def writable(self) -> bool:
        return self.upper != "none"


@dataclass(frozen=True)
class Mount:
    origin: str
    target: str
    type: str
    source: str | None = None
    source_kind: str | None = None  # "dir" or "file" for binds
    options: tuple[tuple[str, str | bool], ...] = ()
    attrs: tuple[str, ...] = ()
    propagation: str = "private"
    recursive: bool = True
    idmap: str = ""  # binds: "" (none), "owner" (idmap = true) or a mapping "u:FROM:TO:COUNT ..." (idmap.py)
    owner: tuple[int, int] = (0, 0)  # uid and gid of the bind source, when the recipe was loaded


@dataclass(frozen=True)
class PathEntry:
    origin: str
    path: str
    kind: str  # "dir", "file" or "symlink"
    content: bytes = b""
    link: str = ""
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Run:
    command: tuple[str, ...] = ("/bin/sh",)
    cwd: str = "/"
    env: tuple[tuple[str, str], ...] = ()
    given: bool = False  # the recipe names the command (else /bin/sh is only the default)
    contained: bool = True  # contain.py; false: the mount namespace only, as full root
    user: str = "root"      # "root", a NAME of the sandbox's /etc/passwd, or "UID[:GID]"
    hostname: str | None = None  # None: the sandbox's name
    network: str = "host"   # "host" or "none" (a new network namespace with only lo)
    capabilities: tuple[str, ...] = ()  # changes to the default set: "+CAP_X"/"CAP_X", "-CAP_X", "ALL"
    # where values came from: (key, "recipe" | "image config of layer[N]"), keys "command", "cwd", "user",
    # "env.NAME"; a key not listed is the built-in default (imageconfig.py fills those from an image)
    origins: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Recipe:
    file: str
    sha256: str
    name: str
    description: str
    layers: tuple[Layer, ...]
    root: Root
    mounts: tuple[Mount, ...]  # parents before children
    paths: tuple[PathEntry, ...]
    run: Run = field(default_factory=Run)
    inputs: tuple[str, ...] = ()  # every host path named (also skipped optional sources): a cached plan
                                  # stays valid while none of them changes kind or identity


def parent_mount(mounts: tuple[Mount, ...] | list[Mount], target: str) -> Mount | None:
    """The recipe mount that will hold `target` (the deepest strict ancestor), if any."""
    best: Mount | None = None
    for m in mounts:
        if m.target != target and is_under(target, m.target):
            if best is None or len(m.target) > len(best.target):
                best = m
    return best


def is_under(path: str, ancestor: str) -> bool:
    return ancestor == "/" or path == ancestor or path.startswith(ancestor + "/")

