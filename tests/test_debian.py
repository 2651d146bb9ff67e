"""A real distribution through a real registry: a Debian bookworm minbase tree made with debootstrap,
exported by nsbuild, pushed by skopeo (gzip and zstd) to the loopback registry, pulled back by a recipe
naming docker://127.0.0.1:PORT/debian:bookworm, built and run. The pulled layer has the tree's digest.

debootstrap downloads from this machine's Debian mirror (once per test session, 1-3 minutes);
NSBUILD_TEST_DEBIAN_TREE=DIR uses a minbase tree made earlier instead (it is only read).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import needs_root
from registries import images, registry, skopeo  # noqa: F401

from builder.layers.kinds.path import tree_digest

pytestmark = needs_root


def _mirror() -> str:
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and line.rstrip("/").endswith("debian"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="session")
def debian_tree(tmp_path_factory) -> Path:
    if os.environ.get("NSBUILD_TEST_DEBIAN_TREE"):
        return Path(os.environ["NSBUILD_TEST_DEBIAN_TREE"])
    if not shutil.which("debootstrap"):
        pytest.fail("debootstrap is missing: apt-get install debootstrap (README set-up 2)")
    root = tmp_path_factory.mktemp("debian") / "rootfs"
    # a private mount namespace: whatever debootstrap mounts goes away with it
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=minbase",
                           "bookworm", str(root), _mirror()], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / leftover).glob("*"):
            if entry.is_file():
                entry.unlink()
    return root


@pytest.fixture(scope="session")
def debian_image(debian_tree: Path, registry, tmp_path_factory) -> str:
    """debian:bookworm (gzip) and debian:zstd in the registry, exported from the tree by nsbuild."""
    from conftest import nsbuild_cmd

    work = tmp_path_factory.mktemp("debian-image")
    src = work / "src.toml"
    src.write_text(f'[sandbox]\nname = "deb"\n[[layer]]\npath = "{debian_tree}"\n'
                   '[run]\ncommand = ["/bin/bash"]\nenv = { LANG = "C.UTF-8" }\n')
    env = dict(os.environ, NSBUILD_STORE=str(work / "store"), NSBUILD_STATE_DIR=str(work / "state"))
    subprocess.run(nsbuild_cmd() + ["export", "-q", str(src), f"oci:{work / 'layout'}:bookworm"], env=env,
                   check=True)
    dest = "--dest-tls-verify=false"
    skopeo(dest, f"oci:{work / 'layout'}:bookworm", registry.ref("debian:bookworm"))
    skopeo(dest, "--dest-compress-format", "zstd", f"oci:{work / 'layout'}:bookworm", registry.ref("debian:zstd"))
    shutil.rmtree(work / "store")
    return registry.ref("debian")


@pytest.mark.parametrize("tag", ["bookworm", "zstd"])
def test_debian_from_the_registry_builds_and_runs(nsbuild, debian_tree: Path, debian_image: str, tmp_path: Path,
                                                  tag: str) -> None:
    r = tmp_path / "debian.toml"
    r.write_text(f'[sandbox]\nname = "debian"\n[[layer]]\noci = "{debian_image}:{tag}"\ndevices = true\n'
                 '[[mount]]\ntarget = "/proc"\ntype = "proc"\n[[mount]]\ntarget = "/dev"\ntype = "dev"\n')
    nsbuild("build", str(r))
    out = nsbuild("run", "debian", "--", "/bin/bash", "-c",
                  "cat /etc/debian_version; dpkg-query -W -f='${Package}\\n' dpkg; echo $LANG; echo $0").stdout
    assert out.splitlines()[0].startswith("12.") and out.splitlines()[1:] == ["dpkg", "C.UTF-8", "/bin/bash"], out
    # the image's config came along: no [run] in this recipe, yet bash and LANG are the defaults
    plan = json.loads(nsbuild("plan", str(r), "--json").stdout)["run"]
    assert plan["command"] == {"value": ["/bin/bash"], "from": "image config of layer[0]"}
    # pulled back, the layer is the tree it was exported from: paths, modes, owners, xattrs, contents
    entries = sorted((tmp_path / "store" / "sha256").iterdir())
    assert len(entries) == 1 and tree_digest(str(entries[0])) == tree_digest(str(debian_tree))
    nsbuild("rm", "debian")
