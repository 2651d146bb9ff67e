"""Cold and warm `nsbuild build` per layer kind (median of BENCH_KIND_RUNS, default 10).

    .venv/bin/python bench/kinds.py        # as root, after `bench/run` installed nsbuild

cold: an empty content store (every input hashed, unpacked or copied); warm: the same store again
(`--replace`). Then the registry rows (bench/registry_rows.py): a cold and a warm pull from a loopback
registry against `skopeo copy`, and an export against `tar -czf`. Each kind is one recipe from recipes/: the image kind uses the Debian minbase
image from recipes/debian/make-image.sh when it exists, else a squashfs image of the same
2,600-file tree the archive kind uses. Everything happens under a temporary directory with a
private state dir and store, removed at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
NSBUILD = str(Path(sys.executable).parent / "nsbuild")
RUNS = int(os.environ.get("BENCH_KIND_RUNS", "10"))
TREE = "/usr/lib/python3.11"  # a realistic tree: ~2,600 files, ~40 MB


def recipes(top: Path) -> dict[str, Path]:
    """kind -> recipe; the archive and fallback image are made from TREE."""
    archive = top / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(TREE, arcname="usr/lib/python3.11")
    debian = RECIPES / "debian" / "bookworm-minbase.erofs"
    if debian.exists():
        image = debian
    else:
        image = top / "tree.sqfs"
        subprocess.run(["mksquashfs", TREE, str(image), "-quiet", "-noappend", "-no-progress"], check=True)
    body = '[[mount]]\ntarget = "/proc"\ntype = "proc"\n'
    out = {
        "image": f'[sandbox]\nname = "image"\n[[layer]]\nimage = "{image}"\n{body}',
        "archive": f'[sandbox]\nname = "archive"\n[[layer]]\narchive = "{archive}"\n{body}',
        "oci": f'[sandbox]\nname = "oci"\n[[layer]]\noci = "{RECIPES}/oci/layout"\nref = "demo"\n{body}',
        "binaries": (RECIPES / "tools.toml").read_text(),
    }
    paths = {}
    for kind, text in out.items():
        paths[kind] = top / f"{kind}.toml"
        paths[kind].write_text(text)
    return paths


def build(recipe: Path, env: dict[str, str], replace: bool) -> float:
    cmd = [NSBUILD, "build", str(recipe), "-q"] + (["--replace"] if replace else [])
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return time.perf_counter() - start


def main() -> int:
    top = Path(tempfile.mkdtemp(prefix="nsbuild-kinds."))
    state = top / "state"
    results: dict[str, dict[str, float]] = {}
    try:
        for kind, recipe in recipes(top).items():
            cold, warm = [], []
            for i in range(RUNS):
                store = top / f"store-{kind}-{i}"
                env = dict(os.environ, NSBUILD_STATE_DIR=str(state), NSBUILD_STORE=str(store))
                cold.append(build(recipe, env, replace=i > 0))
                warm.append(build(recipe, env, replace=True))
                shutil.rmtree(store, ignore_errors=True)  # an image layer needs no store
            subprocess.run([NSBUILD, "rm", recipe.stem], env=env, check=True, capture_output=True)
            results[kind] = {"cold_ms": statistics.median(cold) * 1000, "warm_ms": statistics.median(warm) * 1000}
            print(f"{kind:10} cold {results[kind]['cold_ms']:9.1f} ms   warm {results[kind]['warm_ms']:7.1f} ms"
                  f"   (median of {RUNS})", flush=True)
        if shutil.which("skopeo") and os.path.exists("/usr/bin/docker-registry"):
            import registry_rows  # bench/registry_rows.py: pull from a loopback registry, export

            results.update(registry_rows.rows(NSBUILD, top, TREE, RUNS))
        else:
            print("registry rows skipped: skopeo or docker-registry missing (README set-up 2 installs them)")
    finally:
        for mnt in sorted((line.split()[4] for line in open("/proc/self/mountinfo")
                           if line.split()[4].startswith(str(state))), key=len, reverse=True):
            subprocess.run(["umount", mnt], check=False)
        shutil.rmtree(top, ignore_errors=True)
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "kinds.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
