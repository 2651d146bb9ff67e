"""Registry rows of bench/kinds.py: pulling from a loopback registry and exporting, against skopeo and tar.

- pull cold: `nsbuild build` of a recipe whose layer is `docker://127.0.0.1:PORT/bench:v1` (a multi-layer
  image), empty content store; against `skopeo copy` of the same image into a fresh OCI layout (which
  stores the blobs and unpacks nothing), and against the same work as nsbuild's, `skopeo copy` then
  `umoci raw unpack` of the layout into a root filesystem;
- pull warm: the same build again, everything in the store (only the manifest is asked for);
- export: `nsbuild export` of a tree into a fresh layout; against `tar -czf` of the same tree.

The image is made from TREE split into three directory layers (or the directory in
$BENCH_DEBOOTSTRAP, e.g. a debootstrap minbase tree, as one layer), exported by nsbuild and pushed
by skopeo to Debian's docker-registry, started here on 127.0.0.1 and stopped by its pid.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_registry(top: Path) -> tuple[subprocess.Popen, str]:
    port = _port()
    (top / "registry.yml").write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                                      f"    rootdirectory: {top / 'registry'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(top / "registry.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("docker-registry did not start")


def _median_ms(runs: int, setup: Callable[[int], None], timed: Callable[[int], None]) -> float:
    times = []
    for i in range(runs):
        setup(i)
        start = time.perf_counter()
        timed(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _tree_layers(top: Path, tree: str) -> list[Path]:
    """TREE split into three directory layers by top-level entry, or $BENCH_DEBOOTSTRAP whole."""
    if os.environ.get("BENCH_DEBOOTSTRAP"):
        return [Path(os.environ["BENCH_DEBOOTSTRAP"])]
    names = sorted(os.listdir(tree))
    layers = []
    for k in range(3):
        layer = top / f"layer{k}" / tree.lstrip("/")
        layer.mkdir(parents=True)
        for name in names[k::3]:
            src = os.path.join(tree, name)
            (shutil.copytree(src, layer / name, symlinks=True) if os.path.isdir(src) and not os.path.islink(src)
             else shutil.copy2(src, layer / name, follow_symlinks=False))
        layers.append(top / f"layer{k}")
    return layers


def rows(nsbuild: str, top: Path, tree: str, runs: int) -> dict[str, dict[str, float]]:
    top = top / "registry-bench"
    top.mkdir()
    proc, host = _start_registry(top)
    env = dict(os.environ, NSBUILD_STATE_DIR=str(top / "state"), NSBUILD_STORE=str(top / "store"))
    results: dict[str, dict[str, float]] = {}
    try:
        layers = _tree_layers(top, tree)
        src = top / "src.toml"
        src.write_text('[sandbox]\nname = "src"\n' + "".join(f'[[layer]]\npath = "{p}"\n' for p in layers))
        subprocess.run([nsbuild, "export", "-q", str(src), f"oci:{top / 'image'}:v1"], env=env, check=True)
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{top / 'image'}:v1",
                        f"docker://{host}/bench:v1"], check=True)
        pull = top / "pull.toml"
        pull.write_text(f'[sandbox]\nname = "pull"\n[[layer]]\noci = "docker://{host}/bench:v1"\n')

        def fresh_store(i: int) -> None:
            shutil.rmtree(top / "store", ignore_errors=True)

        def cold(i: int) -> None:
            subprocess.run([nsbuild, "build", "-q", str(pull)] + (["--replace"] if i else []), env=env, check=True)

        def fresh_layout(i: int) -> None:
            shutil.rmtree(top / "copy", ignore_errors=True)

        def fresh_bundle(i: int) -> None:
            shutil.rmtree(top / "copy", ignore_errors=True)
            shutil.rmtree(top / "rootfs", ignore_errors=True)

        def copy() -> None:
            subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{host}/bench:v1",
                            f"oci:{top / 'copy'}:v1"], check=True)

        def copy_unpack(i: int) -> None:
            copy()
            subprocess.run(["umoci", "raw", "unpack", "--image", f"{top / 'copy'}:v1", str(top / "rootfs")],
                           check=True, capture_output=True)

        results["pull cold"] = {
            "nsbuild_ms": _median_ms(runs, fresh_store, cold),
            "skopeo_ms": _median_ms(runs, fresh_layout, lambda i: copy())}
        if shutil.which("umoci"):
            results["pull cold"]["skopeo_umoci_ms"] = _median_ms(runs, fresh_bundle, copy_unpack)
        results["pull warm"] = {"nsbuild_ms": _median_ms(runs, lambda i: None, lambda i: subprocess.run(
            [nsbuild, "build", "-q", "--replace", str(pull)], env=env, check=True))}
        subprocess.run([nsbuild, "rm", "pull"], env=env, check=True, capture_output=True)

        def fresh_export(i: int) -> None:
            shutil.rmtree(top / "export", ignore_errors=True)
            (top / "tree.tar.gz").unlink(missing_ok=True)

        results["export"] = {
            "nsbuild_ms": _median_ms(runs, fresh_export, lambda i: subprocess.run(
                [nsbuild, "export", "-q", str(src), f"oci:{top / 'export'}:v1"], env=env, check=True)),
            "tar_ms": _median_ms(runs, fresh_export, lambda i: subprocess.run(
                ["tar", "-czf", str(top / "tree.tar.gz"), "--numeric-owner", "--sort=name"]
                + sum((["-C", str(p), "."] for p in layers), []), check=True))}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
    c, w, e = results["pull cold"], results["pull warm"], results["export"]
    print(f"pull cold  nsbuild {c['nsbuild_ms']:8.1f} ms   skopeo copy {c['skopeo_ms']:8.1f} ms   "
          f"{c['nsbuild_ms'] / c['skopeo_ms']:.2f}x   (median of {runs})")
    if "skopeo_umoci_ms" in c:
        print(f"pull cold  nsbuild {c['nsbuild_ms']:8.1f} ms   skopeo copy + umoci raw unpack "
              f"{c['skopeo_umoci_ms']:8.1f} ms   {c['nsbuild_ms'] / c['skopeo_umoci_ms']:.2f}x   (median of {runs})")
    print(f"pull warm  nsbuild {w['nsbuild_ms']:8.1f} ms   (median of {runs})")
    print(f"export     nsbuild {e['nsbuild_ms']:8.1f} ms   tar -czf    {e['tar_ms']:8.1f} ms   "
          f"{e['nsbuild_ms'] / e['tar_ms']:.2f}x   (median of {runs})", flush=True)
    return results
