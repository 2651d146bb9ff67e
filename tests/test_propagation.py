"""Mount propagation, for real: no mount event crosses between host and sandbox unless the recipe
asks for it, in either direction, for binds and the submounts of recursive binds.

Each case runs in a scratch mount namespace (`unshare -m`) that plays the host: there the bind
source is made shared, or the whole "/" is made rshared as systemd does, so the test can mount
on the "host" freely and everything goes away with the scratch namespace.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import RECIPES, needs_root, nsbuild_cmd, tally
from test_e2e import strategies

pytestmark = needs_root

RECIPE = """
[sandbox]
name = "prop"

[root]
upper = "tmpfs"

[[path]]
path = "/bin"
symlink = "usr/bin"

[[path]]
path = "/lib"
symlink = "usr/lib"

[[path]]
path = "/lib64"
symlink = "usr/lib64"

[[mount]]
target = "/usr"
type = "bind"
source = "/usr"

[[mount]]
target = "/proc"
type = "proc"

[[mount]]
target = "/work"
type = "bind"
source = "{src}"
rw = true
{propagation}
"""

# In the scratch namespace: make the "host" side shared, build, then mount on each side and look
# on the other. `sub` is a submount of the source, which a recursive bind carries along.
SCRIPT = r"""
set -eu
{setup}
mount -t tmpfs sub "$SRC/sub"
mkdir "$SRC/h" "$SRC/s" "$SRC/sub/h" "$SRC/sub/s"
"$@" build "$RECIPE" --strategy "$STRATEGY" --state-dir "$STATE" --quiet >&2
ns="$STATE/$NAME.mnt"
mount -t tmpfs from-host "$SRC/h"
mount -t tmpfs from-host "$SRC/sub/h"
nsenter --mount="$ns" mount -t tmpfs from-sandbox /work/s
nsenter --mount="$ns" mount -t tmpfs from-sandbox /work/sub/s
for extra in $EXTRA; do  # more places the sandbox mounts on (the default recipe's /tmp)
    nsenter --mount="$ns" mount -t tmpfs from-sandbox "$extra"
done
seen() {{ if "$@" >/dev/null 2>&1; then echo true; else echo false; fi; }}
echo "{{\"host_to_sandbox\": $(seen nsenter --mount="$ns" findmnt --mountpoint /work/h),
  \"host_to_sandbox_sub\": $(seen nsenter --mount="$ns" findmnt --mountpoint /work/sub/h),
  \"sandbox_to_host\": $(seen findmnt --mountpoint "$SRC/s"),
  \"sandbox_to_host_sub\": $(seen findmnt --mountpoint "$SRC/sub/s"),
  \"host_from_sandbox\": \"$(findmnt -rn -o TARGET -S from-sandbox | tr '\n' ' ')\",
  \"inside\": $(nsenter --mount="$ns" findmnt -J -l -o TARGET,PROPAGATION)}}"
"""

SETUPS = {
    # only the bind's source is shared (a docker volume, a user's --make-shared)
    "source-shared": 'mount --bind "$SRC" "$SRC"; mount --make-shared "$SRC"',
    # the whole tree is shared, as systemd makes it at boot
    "root-shared": "mount --make-rshared /",
}


def run_case(tmp_path: Path, strategy: str, setup: str, recipe: Path, name: str,
             extra: tuple[str, ...] = ()) -> dict:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", SCRIPT.format(setup=SETUPS[setup]), "sh",
         *nsbuild_cmd()],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SRC": str(src), "RECIPE": str(recipe), "NAME": name,
             "STRATEGY": strategy, "STATE": str(tmp_path / "state"), "EXTRA": " ".join(extra),
             "NSBUILD_STORE": str(tmp_path / "store")},
        cwd=src, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    result["inside"] = {fs["target"]: fs["propagation"] for fs in result["inside"]["filesystems"]}
    tally(f"propagation cases (both directions, bind and submount) [{strategy}]")
    return result


# what the recipe asks -> (host mounts appear inside, sandbox mounts appear on the host)
EXPECTED = {"private": (False, False), "slave": (True, False), "shared": (True, True)}


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("propagation", sorted(EXPECTED))
@pytest.mark.parametrize("strategy", strategies())
def test_mount_events_cross_only_as_asked(tmp_path: Path, strategy: str, propagation: str, setup: str) -> None:
    recipe = tmp_path / "prop.toml"
    line = "" if propagation == "private" else f'propagation = "{propagation}"'
    recipe.write_text(RECIPE.format(src=tmp_path / "src", propagation=line))
    r = run_case(tmp_path, strategy, setup, recipe, "prop")
    inward, outward = EXPECTED[propagation]
    # the bind and its recursive submount behave alike
    assert (r["host_to_sandbox"], r["host_to_sandbox_sub"]) == (inward, inward), r
    assert (r["sandbox_to_host"], r["sandbox_to_host_sub"]) == (outward, outward), r
    # every mount that is not the asked-for bind is private, whatever the host's "/" is
    others = {t: p for t, p in r["inside"].items() if not t.startswith("/work")}
    assert set(others.values()) == {"private"}, r["inside"]
    if propagation == "private":
        assert set(r["inside"].values()) == {"private"}, r["inside"]


@pytest.mark.parametrize("strategy", strategies())
def test_default_recipe_on_a_shared_root_leaks_nothing(tmp_path: Path, strategy: str) -> None:
    """The embedded default on a systemd-like host: $CWD, /usr and /etc/resolv.conf are binds of
    shared mounts; nothing the sandbox mounts (under the rw /work, or /tmp) reaches the host."""
    r = run_case(tmp_path, strategy, "root-shared", RECIPES / "dev.toml", "dev", extra=("/tmp",))
    assert not (r["host_to_sandbox"] or r["host_to_sandbox_sub"]), r
    assert not (r["sandbox_to_host"] or r["sandbox_to_host_sub"]), r
    assert r["host_from_sandbox"] == "", r  # /tmp's mount stayed inside too
    assert set(r["inside"].values()) == {"private"}, r["inside"]
