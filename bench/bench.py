"""nsbuild beside bubblewrap, nsenter and the C syscall floor, in one run.

    bench/run              # builds the fixtures, prints a table, writes bench/out/results.json

Needs root, gcc (for floor.c) and an installed nsbuild (the interpreter running this).
Everything is built under a temporary directory and a private state dir, and removed at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from builder.plan import executor
from builder.kernel import syscalls as sc
from builder.sandbox.build import build_many, ensure_template, plan_for, resolve_layers
from builder.kernel.features import probe
from builder.plan.calls import CALLS
from builder.plan.steps import Plan
from builder.recipe.load import load
from builder.sandbox.state import StateDir

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
NSBUILD = str(Path(sys.executable).parent / "nsbuild")
BWRAP = OUT / "bwrap" / "bwrap"
RUNS = int(os.environ.get("BENCH_RUNS", "20"))
BATCH = int(os.environ.get("BENCH_BATCH", "500"))

RECIPE = """
[sandbox]
name = "bench"
[[layer]]
path = "rootfs"
[[layer]]
path = "app"
[[layer]]
path = "config"
[root]
upper = "tmpfs"
[[mount]]
target = "/usr"
type = "bind"
source = "/usr"
[[mount]]
target = "/proc"
type = "proc"
[[mount]]
target = "/dev"
type = "dev"
[[mount]]
target = "/tmp"
type = "tmpfs"
[[mount]]
target = "/work"
type = "bind"
source = "project"
"""


def fixtures(top: Path) -> Path:
    """Three layers: a rootfs-like tree (Debian minbase if bench/out/minbase exists), two small ones."""
    minbase = OUT / "minbase"
    rootfs = top / "rootfs"
    if minbase.is_dir():
        rootfs.symlink_to(minbase)
    else:
        for d in ("etc", "var/lib", "opt", "srv", "home"):
            (rootfs / d).mkdir(parents=True)
        for link in ("bin", "lib", "lib64", "sbin"):
            (rootfs / link).symlink_to("usr/" + link)
        for i in range(2000):  # a tree of realistic size: lookups are lazy, so size barely matters
            (rootfs / "etc" / f"f{i}").write_text(f"{i}\n")
    for name in ("app", "config"):
        (top / name / "opt").mkdir(parents=True)
        (top / name / "opt" / name).write_text(name + "\n")
    (top / "project").mkdir()
    (top / "recipe.toml").write_text(RECIPE)
    return top / "recipe.toml"


def times(cmd: list[str], n: int = RUNS, **kw) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
        out.append((time.perf_counter() - start) * 1000)
    return out


def interleaved(cmds: dict[str, list[str]], n: int = RUNS, **kw) -> dict[str, list[float]]:
    """Each command once per round, in turn, so that a noisy moment slows them all alike."""
    out: dict[str, list[float]] = {key: [] for key in cmds}
    for _ in range(n):
        for key, cmd in cmds.items():
            out[key] += times(cmd, 1, **kw)
    return out


def row(results: dict, key: str, ms: list[float], note: str = "") -> None:
    results[key] = {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms),
                    "note": note}


def floor_plan(plan: Plan, path: Path) -> None:
    """Export a plan's build (not its persist segment) for floor.c: same steps, flags resolved to
    numbers, fds as slot numbers; each call's export is its entry in the calls table."""
    slots: dict[str, int] = {}

    def slot(name: str) -> int:
        return -100 if name == "AT_FDCWD" else slots.setdefault(name, len(slots))

    lines = []
    for step in plan.steps[:plan.persist_start()]:
        args = CALLS[step.call].floor_args(step.args, slot)
        out = slot(step.out) if step.out else -1
        ok = {"EEXIST": 17, "ENOENT": 2}.get(step.ok[0], 0) if step.ok else 0
        lines.append("\t".join([step.where, step.call, str(out), str(ok)] + args))
    path.write_text("\n".join(lines) + "\n")
    (path.parent / "result-slot").write_text(str(slot(plan.result)))


def bwrap_cmd(top: Path) -> list[str]:
    return [str(BWRAP), "--overlay-src", str(top / "rootfs"), "--overlay-src", str(top / "app"),
            "--overlay-src", str(top / "config"), "--tmp-overlay", "/", "--ro-bind", "/usr", "/usr",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--ro-bind", str(top / "project"), "/work",
            "/bin/true"]


def bwrap_contained_cmd(top: Path) -> list[str]:
    """bwrap with its namespaces (as `nsbuild run` has them) over the same tree."""
    cmd = bwrap_cmd(top)
    return cmd[:1] + ["--unshare-all", "--share-net", "--die-with-parent"] + cmd[1:]


def in_process(plan: Plan, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        os.close(executor.execute(plan))
        out.append((time.perf_counter() - start) * 1000)
    return out


def slab_kb() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Slab:"))


def scale_worker(extra: int, recipe: str, n: int) -> None:
    """Inside a scratch mount namespace: add `extra` bind mounts, then time the executor."""
    scratch = tempfile.mkdtemp(prefix="nsbuild-scale-")
    subprocess.run(["mount", "-t", "tmpfs", "scale", scratch], check=True)
    for i in range(extra):
        os.mkdir(f"{scratch}/{i}")
        subprocess.run(["mount", "--bind", f"{scratch}/{i}", f"{scratch}/{i}"], check=True) if i < 5 else \
            _bind(f"{scratch}/{i}")
    state = StateDir(f"{scratch}/state")  # in this namespace: its template, as `nsbuild build` makes
    state.prepare()
    ensure_template(state, probe())
    plan = plan_for(load(recipe), os.environ.get("BENCH_STRATEGY", "auto"),
                    state=state if os.environ.get("BENCH_TEMPLATE", "1") == "1" else None)
    in_process(plan, 5)
    print(json.dumps(in_process(plan, n)))


def _bind(path: str) -> None:
    tree = sc.open_tree(sc.AT_FDCWD, path, sc.flags(("OPEN_TREE_CLONE", "OPEN_TREE_CLOEXEC")))
    sc.move_mount(tree, "", sc.AT_FDCWD, path, sc.FLAGS["MOVE_MOUNT_F_EMPTY_PATH"])
    os.close(tree)


def guest_scale() -> int:
    """Inside ../shared/tools/kernel-vm (`bench/run guest`): the scale rows for every strategy, as
    guest numbers (TCG: a slow CPU, not comparable with the host's). JSON on stdout."""
    top = Path(tempfile.mkdtemp(prefix="nsbuild-guest-"))
    recipe = fixtures(top)
    results: dict = {"kernel": os.uname().release, "runs": 10}
    for strategy in ("fsmount-namespace", "open-tree-namespace", "unshare"):
        for extra in (25, 225, 2025):
            proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, __file__, "_scale",
                                   str(extra), str(recipe), "10"], check=True, capture_output=True, text=True,
                                  env=dict(os.environ, BENCH_STRATEGY=strategy, TMPDIR=str(top),
                                           BENCH_TEMPLATE="1" if strategy == "unshare" else "0"))
            ms = json.loads(proc.stdout)
            results[f"guest scale: {strategy}, {extra} parent mounts"] = ms
            print(f"guest scale: {strategy:20} {extra:5} parent mounts  median {statistics.median(ms):7.2f} ms"
                  f"  min {min(ms):7.2f} ms", file=sys.stderr, flush=True)
    print(json.dumps(results))
    return 0


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "_scale":
        scale_worker(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return 0
    if sys.argv[1:] == ["_guest"]:
        return guest_scale()
    OUT.mkdir(exist_ok=True)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "kernel": os.uname().release,
                     "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    # a tmpfs, like /run where the default state dir lives on most systems (fsync is free there)
    top = Path(tempfile.mkdtemp(prefix="nsbuild-bench-"))
    state = top / "state"
    env = dict(os.environ, NSBUILD_STATE_DIR=str(state))
    floor = top / "floor"
    try:
        subprocess.run(["mount", "-t", "tmpfs", "nsbuild-bench", str(top)], check=True)
        recipe = fixtures(top)
        subprocess.run(["gcc", "-O2", "-o", str(floor), str(HERE / "floor.c")], check=True)
        # 1. build, end to end (the first build also pins the template namespace)
        subprocess.run([NSBUILD, "build", str(recipe)], check=True, env=env, stdout=subprocess.DEVNULL)
        sd = StateDir(str(state))
        plan = plan_for(load(str(recipe)), state=sd)  # what `nsbuild build` runs now
        results["strategy"] = plan.strategy + (" (from the template)" if sd.template() else "")
        results["steps"] = len(plan.steps)
        floor_plan(plan, top / "floor.plan")
        row(results, "build: nsbuild build --replace", times([NSBUILD, "build", "--replace", str(recipe)], env=env))
        row(results, "build: C floor (process)", times([str(floor), str(top / "floor.plan"), "1", "0"]))
        if BWRAP.exists():
            row(results, "build: bwrap ... /bin/true", times(bwrap_cmd(top)), "bubblewrap from Debian sid")

        # 2. enter
        nsfs = str(state / "bench.mnt")
        cmds = {"enter: nsbuild run bench -- /bin/true (contained)": [NSBUILD, "run", "bench", "--", "/bin/true"],
                "enter: nsbuild run --unconfined bench -- /bin/true": [NSBUILD, "run", "--unconfined", "bench",
                                                                        "--", "/bin/true"]}
        if BWRAP.exists():
            cmds["enter: bwrap --unshare-all --share-net --die-with-parent ..."] = bwrap_contained_cmd(top)
        for key, ms in interleaved(cmds, env=env).items():
            row(results, key, ms)
        row(results, "enter: nsenter --mount=FILE /bin/true", times(["nsenter", f"--mount={nsfs}", "/bin/true"]))
        if os.environ.get("BENCH_ROOTLESS", "1") == "1":  # a throwaway user with subordinate ids
            import rootless_rows

            rootless_rows.rows(top, recipe, interleaved, row, results)

        # 3. in process
        in_process(plan, 10)
        row(results, "in-process: executor", in_process(plan, 200))
        med, lo, hi = (float(x) / 1000 for x in subprocess.run(
            [str(floor), str(top / "floor.plan"), "200", "0"], check=True, capture_output=True,
            text=True).stdout.split())
        results["in-process: C floor"] = {"median_ms": med, "min_ms": lo, "max_ms": hi, "n": 200, "note": ""}

        # 4. batch: persisted namespaces from one recipe, in this process (build.build_many, which
        # `nsbuild build --count N` runs): plan once, one worker, one lock
        slab0 = slab_kb()
        start = time.perf_counter()
        built = build_many(resolve_layers(load(str(recipe))), sd, BATCH, name="b", check=False)
        seconds = time.perf_counter() - start
        results["batch: namespaces/s (nsbuild, one process)"] = {"value": BATCH / seconds, "n": BATCH}
        results["memory: kernel slab per persisted namespace (KiB)"] = {"value": (slab_kb() - slab0) / BATCH}
        for b in built:
            sd.remove(b.name)
        if BWRAP.exists():
            n = 50
            ms = times(bwrap_cmd(top), n)
            results["batch: namespaces/s (separate bwrap runs)"] = {"value": 1000 * n / sum(ms), "n": n}

        # 5. scale: parent namespace with more mounts
        for template in ("1", "0"):
            for extra in (25, 225, 2025):
                proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, __file__,
                                       "_scale", str(extra), str(recipe), "50"], check=True, capture_output=True,
                                      text=True, env=dict(os.environ, BENCH_TEMPLATE=template, TMPDIR=str(top)))
                label = "from the template" if template == "1" else "from the parent's table"
                row(results, f"scale: executor, {extra} parent mounts, {label}", json.loads(proc.stdout))

        # 6. memory
        rss = subprocess.run([sys.executable, "-c", "import resource, subprocess, sys; "
                              "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
                              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
                              NSBUILD, "build", "--replace", str(recipe)], check=True, env=env, capture_output=True,
                             text=True).stdout
        results["memory: peak RSS of nsbuild build (KiB)"] = {"value": int(rss)}
        subprocess.run([NSBUILD, "rm", "bench"], check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        _cleanup(top, state)
    report(results)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _cleanup(top: Path, state: Path) -> None:
    """Unmount everything under `top` (sandboxes, the template, the state dir), deepest first."""
    from builder.sandbox.mounts import mount_points

    while under := [p for p in mount_points() if p == str(top) or p.startswith(f"{top}/")]:
        sc.umount2(max(under, key=len), sc.FLAGS["MNT_DETACH"])
    shutil.rmtree(top, ignore_errors=True)


def report(results: dict) -> None:
    floor = results.get("in-process: C floor", {}).get("median_ms")
    bwrap = results.get("build: bwrap ... /bin/true", {}).get("median_ms")
    unconfined = results.get("enter: nsbuild run --unconfined bench -- /bin/true", {}).get("median_ms")
    print(f"nsbuild bench, {results['date']}, kernel {results['kernel']}, {results['cpus']} CPUs, "
          f"Python {results['python']}, strategy {results['strategy']}, {results['steps']} steps")
    print(f"{'what':58} {'median':>9} {'min':>9} {'max':>9}  ratio")
    for key, r in results.items():
        if not isinstance(r, dict):
            continue
        if "median_ms" in r:
            ratio = ""
            if key.startswith("in-process") and floor:
                ratio = f"{r['median_ms'] / floor:.2f}x floor"
            elif key.startswith("build") and bwrap:
                ratio = f"{r['median_ms'] / bwrap:.2f}x bwrap"
            elif key.startswith("enter: nsbuild run bench") and unconfined:
                ratio = f"{r['median_ms'] / unconfined:.2f}x unconfined"  # target: at most 1.3x
            elif key.startswith("rootless: ") and key.endswith(", user"):
                root = results.get(key[:-len("user")] + "root", {}).get("median_ms")
                ratio = f"{r['median_ms'] / root:.2f}x root" if root else ""  # target: at most 1.25x
            print(f"{key:58} {r['median_ms']:8.2f}ms {r['min_ms']:8.2f}ms {r['max_ms']:8.2f}ms  {ratio}")
        else:
            print(f"{key:58} {r['value']:9.1f}")


if __name__ == "__main__":
    sys.exit(main())
