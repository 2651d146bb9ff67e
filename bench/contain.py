"""What containment costs `nsbuild run`, by ablation: each row adds one part of a contained run.

    .venv/bin/python bench/contain.py      # as root, with nsbuild installed in that venv

Builds the embedded default recipe with a private state dir under a temporary directory, runs
each variant BENCH_RUNS times (default 40), round by round so noise hits them alike, prints
medians, and removes everything at the end.
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
RUNS = int(os.environ.get("BENCH_RUNS", "40"))
ALL_SHARED = ["--share", "pid", "--share", "ipc", "--share", "uts", "--share", "cgroup"]
VARIANTS = {
    "unconfined (mount namespace only)": ["--unconfined"],
    "+ per-run mount copy, masks, user, caps, no_new_privs, seccomp": ALL_SHARED,
    "+ IPC, UTS, cgroup namespaces, hostname": ["--share", "pid"],
    "+ PID namespace: init, own /proc (default)": [],
    "+ network none (netns, lo up)": ["--network", "none"],
}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="nsbuild-bench-") as top:
        state = os.path.join(top, "state")
        work = os.path.join(top, "work")
        os.mkdir(work)
        env = dict(os.environ, NSBUILD_STATE_DIR=state, NSBUILD_STORE=os.path.join(top, "store"))
        try:
            subprocess.run([NSBUILD, "build", "-q"], env=env, cwd=work, check=True)
            ms: dict[str, list[float]] = {k: [] for k in VARIANTS}
            for _ in range(RUNS):
                for key, args in VARIANTS.items():
                    start = time.perf_counter()
                    subprocess.run([NSBUILD, "run", *args, "dev", "--", "/bin/true"], env=env, cwd=work, check=True)
                    ms[key].append((time.perf_counter() - start) * 1000)
            base = statistics.median(ms["unconfined (mount namespace only)"])
            for key, times in ms.items():
                med = statistics.median(times)
                print(f"{key:66} median {med:6.2f} ms  {med / base:4.2f}x  min {min(times):6.2f}  (n={len(times)})")
        finally:
            subprocess.run([NSBUILD, "rm", "dev"], env=env, stdout=subprocess.DEVNULL)
            for path in (os.path.join(state, ".template.mnt"), state):
                subprocess.run(["umount", path], stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
