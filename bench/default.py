"""The embedded default recipe as a newcomer uses it: `nsbuild build` (cold, then warm with
`--replace`) and `nsbuild run dev -- true`, median of BENCH_RUNS (default 20).

    .venv/bin/python bench/default.py      # as root, after `bench/run` or set-up 2 installed nsbuild

Everything happens with a private state dir under a temporary directory, removed at the end.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NSBUILD = str(Path(sys.executable).parent / "nsbuild")
RUNS = int(os.environ.get("BENCH_RUNS", "20"))


def timed(args: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run([NSBUILD, *args], env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def row(what: str, times: list[float]) -> None:
    print(f"{what:<40} median {statistics.median(times):8.2f} ms   min {min(times):8.2f}   max {max(times):8.2f}"
          f"   (n={len(times)})")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="nsbuild-bench-") as top:
        state = os.path.join(top, "state")
        work = os.path.join(top, "work")  # bound at /work: must not contain the state dir
        os.mkdir(work)
        env = dict(os.environ, NSBUILD_STATE_DIR=state, NSBUILD_STORE=os.path.join(top, "store"))
        try:
            row("nsbuild build (first, cold)", [timed(["build"], env, work)])
            row("nsbuild build --replace (warm)", [timed(["build", "--replace"], env, work) for _ in range(RUNS)])
            row("nsbuild run dev -- true", [timed(["run", "dev", "--", "true"], env, work) for _ in range(RUNS)])
            row("nsenter --mount=dev.mnt true", [_nsenter(os.path.join(state, "dev.mnt")) for _ in range(RUNS)])
        finally:
            subprocess.run([NSBUILD, "rm", "dev"], env=env, stdout=subprocess.DEVNULL)
            for path in (os.path.join(state, ".template.mnt"), state):
                subprocess.run(["umount", path], stderr=subprocess.DEVNULL)


def _nsenter(nsfs: str) -> float:
    start = time.perf_counter()
    subprocess.run(["nsenter", f"--mount={nsfs}", "true"], check=True)
    return (time.perf_counter() - start) * 1000


if __name__ == "__main__":
    main()
