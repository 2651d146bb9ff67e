"""Rootless rows of bench/bench.py: `nsbuild build --replace` and `nsbuild run NAME -- /bin/true` by a
user who is not root (a throwaway user with subordinate ids, made with useradd and removed again),
beside the same commands by root, interleaved round by round in the same run. Both start the same
way (`python -S -m builder` with the same interpreter and packages, through setpriv; -S: without the base interpreter's site-packages, as a venv starts), so the
difference is what rootless costs: joining the holder's namespaces (and, for a build, the fork into
its PID namespace), the user namespace's own overheads. Target: at most 1.25x root's medians.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rootless_users import Interpreter, make_user, remove_user  # noqa: E402


def rows(top: Path, recipe: Path, interleaved, row, results: dict) -> None:  # type: ignore[no-untyped-def]
    """Add the rootless rows to `results` (interleaved, row: bench.py's helpers)."""
    interpreter = Interpreter()
    user = make_user("nsbbench", True, interpreter.python)
    root_state = top / "root-state"
    runtime = top / "run-user"  # the user's XDG_RUNTIME_DIR: a tmpfs, as /run/user/UID is (fsync is free there)
    try:
        os.chmod(top, 0o755)  # the fixtures: readable by the user, as a project directory would be
        runtime.mkdir(mode=0o700)
        shutil.chown(runtime, user.uid, user.gid)
        # bytecode for the packages' copy (as an install has it): neither user may write it there
        subprocess.run([interpreter.python, "-m", "compileall", "-q", user.site], check=True)
        def cmd(uid: int, gid: int, state: str, *args: str) -> list[str]:
            env = ["env", "-i", f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}", f"HOME={user.home}",
                   "LANG=C.UTF-8", f"PYTHONPATH={user.site}", f"NSBUILD_STATE_DIR={state}"]
            return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *env,
                    interpreter.python, "-S", "-m", "builder", *args]

        as_root = lambda *a: cmd(0, 0, str(root_state), *a)  # noqa: E731
        as_user = lambda *a: cmd(user.uid, user.gid, str(runtime / "nsbuild"), *a)  # noqa: E731
        for c in (as_root, as_user):
            subprocess.run(c("build", "-q", str(recipe)), check=True, cwd=top)
        build = {"rootless: nsbuild build --replace, root": as_root("build", "-q", "--replace", str(recipe)),
                 "rootless: nsbuild build --replace, user": as_user("build", "-q", "--replace", str(recipe))}
        run = {"rootless: nsbuild run bench -- /bin/true, root": as_root("run", "bench", "--", "/bin/true"),
               "rootless: nsbuild run bench -- /bin/true, user": as_user("run", "bench", "--", "/bin/true")}
        for cmds in (build, run):
            for key, ms in interleaved(cmds, cwd=top).items():
                row(results, key, ms)
        subprocess.run(as_user("rm", "--all"), check=True, stdout=subprocess.DEVNULL)
        subprocess.run(as_root("rm", "--all"), check=True, stdout=subprocess.DEVNULL)
    finally:
        left = user.wait_no_processes(5.0)
        shutil.rmtree(user.state, ignore_errors=True)
        remove_user(user.name, user.home)
        interpreter.close()
        if left:
            raise RuntimeError(f"processes of the bench user left: {left}")
