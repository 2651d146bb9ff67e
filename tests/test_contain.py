"""Contained runs, for real: escape attempts from inside (tests/attack.py), PID/IPC/UTS/cgroup/net
namespaces, the user, capabilities, signals, exit status, and the persisted namespace unchanged.

The escape suite is parametrized over the strategies; the 7.x ones run in test_kernel_vm.py.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from builder.runtime import policy
from conftest import RECIPES, needs_root, nsbuild_cmd, tally
from test_e2e import findmnt, strategies

pytestmark = needs_root
ATTACK = Path(__file__).with_name("attack.py")
SYSFS = '\n[[mount]]\ntarget = "/sys"\ntype = "sysfs"\n'


def build(nsbuild, tmp_path: Path, extra: str = "", strategy: str = "auto", name: str = "dev") -> Path:
    """The default recipe (plus `extra` TOML), built as NAME."""
    recipe = tmp_path / f"{name}.toml"
    recipe.write_text((RECIPES / "dev.toml").read_text().replace('name = "dev"', f'name = "{name}"') + extra)
    nsbuild("build", str(recipe), "--strategy", strategy, "-q")
    return recipe


def cap_eff(status: str) -> int:
    return next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("CapEff:"))


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return out


@pytest.mark.parametrize("strategy", strategies())
def test_escape_attempts_fail(nsbuild, tmp_path: Path, strategy: str) -> None:
    """From inside a default contained run (the default recipe, plus /sys), every way out fails."""
    build(nsbuild, tmp_path, SYSFS, strategy)
    shutil.copy(ATTACK, tmp_path / "cwd" / "attack.py")
    secret = tmp_path / "secret"
    secret.write_text("host only\n")
    hostname = socket.gethostname()
    victim = subprocess.Popen(["sleep", "120"])
    try:
        proc = nsbuild("run", "dev", "--", "python3", "/work/attack.py", str(secret), str(victim.pid),
                       str(tmp_path), check=False)
        assert proc.returncode == 0, proc.stderr
        results = json.loads(proc.stdout)
        assert victim.poll() is None, "the host process was killed"
    finally:
        victim.kill()
        victim.wait()
    visible = results.pop("visible_pids")
    assert int(visible.split()[0]) <= 3 and "(pid 1: nsbuild)" in visible, visible  # init and python3
    escaped = {k: v for k, v in results.items() if not v.startswith("blocked")}
    assert not escaped, escaped
    assert socket.gethostname() == hostname
    assert not list(tmp_path.glob("pwned")) and not (tmp_path / "cwd" / "mnt-attack").is_mount()
    tally(f"escape attempts from a contained run, all refused [{strategy}]", len(results))


def test_setuid_binary_from_a_layer_gains_nothing(nsbuild, tmp_path: Path) -> None:
    """A setuid-root copy of id(1) in a layer, run as uid 1000: no_new_privs keeps euid 1000, even
    where the recipe lifts nosuid on the root."""
    layer = tmp_path / "layer"
    layer.mkdir()
    shutil.copy("/usr/bin/id", layer / "suid-id")
    os.chmod(layer / "suid-id", 0o4755)
    for attrs, name in (("", "nosuid"), ('attrs = ["suid", "nodev"]', "suid")):
        recipe = tmp_path / f"{name}.toml"
        recipe.write_text(f"""
[sandbox]
name = "{name}"
[[layer]]
path = "{layer}"
[root]
upper = "tmpfs"
{attrs}
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
""")
        nsbuild("build", str(recipe), "-q")
        out = nsbuild("run", "--user", "1000:1000", name, "--", "/suid-id", "-u").stdout
        assert out == "1000\n", (name, out)
        tally("setuid binaries from a layer run without privilege")


def test_runs_are_invisible_to_each_other_and_signals_reach_cmd(nsbuild, tmp_path: Path) -> None:
    build(nsbuild, tmp_path)
    env = nsbuild.env  # type: ignore[attr-defined]
    first = subprocess.Popen([*nsbuild_cmd(), "run", "dev", "--", "sh", "-c",
                              'trap "exit 42" TERM; sleep 120 & wait'], env=env, cwd=tmp_path / "cwd")
    try:
        for _ in range(500):  # until its sleep runs (polled, not timed)
            kids = descendants(first.pid)
            if any(Path(f"/proc/{k}/comm").read_text().strip() == "sleep" for k in kids if Path(f"/proc/{k}").exists()):
                break
            time.sleep(0.01)
        else:
            pytest.fail("the first run did not start")
        seen = nsbuild("run", "dev", "--", "ps", "-eo", "pid=,comm=").stdout.split()
        assert "sleep" not in seen and "1" in seen, seen
        first.send_signal(signal.SIGTERM)  # to nsbuild: forwarded through pid 1 to the shell
        assert first.wait(timeout=30) == 42
        for _ in range(500):
            if not descendants(first.pid):
                break
            time.sleep(0.01)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not any(Path(f"/proc/{k}").exists() for k in kids), "processes of the run outlived it"


def test_exit_status_zombies_and_the_persisted_namespace(nsbuild, state_dir: Path, tmp_path: Path) -> None:
    build(nsbuild, tmp_path)
    before = findmnt(str(state_dir / "dev.mnt"))
    assert nsbuild("run", "dev", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    assert nsbuild("run", "dev", "--", "sh", "-c", "kill -9 $$", check=False).returncode == 137
    # an orphan is reaped by pid 1: no zombie is left once it exited
    out = nsbuild("run", "dev", "--", "sh", "-c", "(sleep 0.1 &); sleep 1; ps -eo stat=,comm=").stdout
    assert "sleep" not in out and not [line for line in out.splitlines() if line.startswith("Z")], out
    # runs mount their /proc in a copy: the persisted namespace (and nsenter) see the sandbox as built
    assert findmnt(str(state_dir / "dev.mnt")) == before
    host = subprocess.run(["nsenter", f"--mount={state_dir / 'dev.mnt'}", "ls", "/proc"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert len([p for p in host if p.isdigit()]) > 10  # nsenter: the mount namespace only, host PIDs


def test_user_capabilities_hostname_network_overrides(nsbuild, tmp_path: Path) -> None:
    build(nsbuild, tmp_path)
    root_default = policy.capabilities(0, ())
    out = nsbuild("run", "dev", "--", "sh", "-c", "hostname; id -u; cat /proc/self/status").stdout.split("\n", 2)
    assert out[:2] == ["dev", "0"] and cap_eff(out[2]) == root_default
    assert cap_eff(out[2]) & (1 << policy.CAPS.index("SYS_ADMIN")) == 0
    assert "NoNewPrivs:\t1" in out[2] and "Seccomp:\t2" in out[2]
    out = nsbuild("run", "--user", "nobody", "--hostname", "box", "--env", "A=1", "-e", "B=2", "--cwd", "/tmp",
                  "dev", "--", "sh", "-c", 'hostname; id -u; id -g; echo "$HOME $USER $A $B"; pwd; '
                  "grep CapEff /proc/self/status").stdout.splitlines()
    assert out[:5] == ["box", "65534", "65534", "/nonexistent nobody 1 2", "/tmp"], out
    assert cap_eff(out[5]) == 0
    ids = nsbuild("run", "-u", "1000:1001", "dev", "--", "sh", "-c", "id -u; id -g").stdout.split()
    assert ids == ["1000", "1001"]
    bad = nsbuild("run", "--user", "nosuch", "dev", "--", "true", check=False)
    assert bad.returncode == 2 and "no user 'nosuch'" in bad.stderr and "Traceback" not in bad.stderr
    bad = nsbuild("run", "--network", "wifi", "dev", "--", "true", check=False)
    assert bad.returncode == 2 and "--network 'wifi'" in bad.stderr
    # network none: only lo, and it is up
    out = nsbuild("run", "--network", "none", "dev", "--", "python3", "-c",
                  "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
                  "c = socket.create_connection(s.getsockname()); print(open('/proc/net/dev').read())").stdout
    assert [line.split(":")[0].strip() for line in out.splitlines()[2:] if line.strip()] == ["lo"]
    # the opt-outs: the mount namespace only, host PIDs visible
    for args in (["--unconfined"], ["--share", "pid"]):
        pids = nsbuild("run", *args, "dev", "--", "ls", "/proc").stdout.split()
        assert len([p for p in pids if p.isdigit()]) > 10, args


def test_recipe_run_table_sets_the_defaults(nsbuild, tmp_path: Path) -> None:
    recipe = (RECIPES / "dev.toml").read_text().replace('name = "dev"', 'name = "svc"').replace(
        'cwd = "/work"', 'cwd = "/"\nuser = "nobody"\nhostname = "svc.example"\n'
                         'capabilities = ["+CAP_NET_BIND_SERVICE", "-CAP_CHOWN"]')
    path = tmp_path / "svc.toml"
    path.write_text(recipe)
    nsbuild("build", str(path), "-q")
    out = nsbuild("run", "svc", "--", "sh", "-c", "hostname; id -un; grep -E 'Cap(Eff|Amb)' /proc/self/status"
                  ).stdout.splitlines()
    assert out[:2] == ["svc.example", "nobody"]
    bind = 1 << policy.CAPS.index("NET_BIND_SERVICE")
    assert [cap_eff(line.replace("CapAmb", "CapEff")) for line in out[2:]] == [bind, bind]
    unconfined = path.read_text().replace("[run]", "[run]\ncontained = false")
    path.write_text(unconfined.replace('name = "svc"', 'name = "open"'))
    nsbuild("build", str(path), "-q")
    assert int(nsbuild("run", "open", "--", "id", "-u").stdout) == 0  # contained = false: as root, all caps
    pids = nsbuild("run", "open", "--", "ls", "/proc").stdout.split()
    assert len([p for p in pids if p.isdigit()]) > 10


@pytest.mark.parametrize("mode", [[], ["--unconfined"]])
def test_a_missing_interpreter_is_named(nsbuild, tmp_path: Path, mode: list[str]) -> None:
    """The program exists but its #! or ELF interpreter does not: say which file is missing."""
    build(nsbuild, tmp_path)
    work = tmp_path / "cwd"
    (work / "script").write_text("#!/no/such/interpreter -x\necho hi\n")
    elf = bytearray(Path("/usr/bin/true").read_bytes())
    ld = b"/lib64/ld-linux-x86-64.so.2"
    assert ld in elf
    elf[elf.index(ld):elf.index(ld) + len(ld)] = b"/lib64/ld-missing-x86.so.2\0"[:len(ld)].ljust(len(ld), b"\0")
    (work / "elf").write_bytes(bytes(elf))
    for name, missing in (("script", "/no/such/interpreter"), ("elf", "/lib64/ld-missing-x86.so.2")):
        os.chmod(work / name, 0o755)
        proc = nsbuild("run", *mode, "dev", "--", f"/work/{name}", check=False)
        assert proc.returncode == 127, proc.stderr
        assert f"its interpreter {missing} is missing" in proc.stderr, proc.stderr
    proc = nsbuild("run", *mode, "dev", "--", "no-such-command", check=False)
    assert proc.returncode == 127 and "command not found" in proc.stderr


def test_an_ephemeral_run_is_contained_too(nsbuild, tmp_path: Path) -> None:
    recipe = tmp_path / "eph.toml"
    recipe.write_text((RECIPES / "dev.toml").read_text().replace('name = "dev"', 'name = "eph"'))
    out = nsbuild("run", str(recipe), "--", "sh", "-c", "hostname; ls /proc | grep -c '^[0-9]'; "
                  "grep CapEff /proc/self/status").stdout.splitlines()
    assert out[0] == "eph" and int(out[1]) <= 4 and cap_eff(out[2]) == policy.capabilities(0, ())


def test_cmd_cannot_signal_the_callers_process_group(nsbuild, tmp_path: Path) -> None:
    """kill(0, SIGKILL) from CMD reaches its own group only, not the script that ran nsbuild."""
    build(nsbuild, tmp_path)
    cmd = " ".join(nsbuild_cmd())
    script = (f"sleep 60 & echo $!; {cmd} run dev -- python3 -c 'import os, signal; os.kill(0, signal.SIGKILL)'; "
              "echo rc=$?; kill -0 $! && echo neighbour-alive; kill $!")
    proc = subprocess.run(["setsid", "sh", "-c", script], env=nsbuild.env, cwd=tmp_path / "cwd",  # type: ignore[attr-defined]
                          capture_output=True, text=True, timeout=60)
    assert "rc=137" in proc.stdout and "neighbour-alive" in proc.stdout, proc.stdout + proc.stderr


def test_hostile_passwd_and_group_files(nsbuild, tmp_path: Path) -> None:
    """The sandbox's /etc/passwd and /etc/group are read by nsbuild as root: bad numbers, huge ids and
    symlinks into the host (through /proc/PID/root) give no traceback and nothing from the host."""
    build(nsbuild, tmp_path)
    host_only = tmp_path / "host-passwd"
    host_only.write_text("evil:x:1234:1234:evil:/LEAKED-FROM-HOST:/bin/sh\n")

    def inside(script: str) -> None:
        nsbuild("run", "dev", "--", "sh", "-c", script)  # root CMD writes the tmpfs upper all runs share

    inside("printf 'root:x:0:\\302\\262:root:/root:/bin/sh\\n' > /etc/passwd")  # gid "²": isdigit() but not int()
    proc = nsbuild("run", "dev", "--", "id", "-u", check=False)
    assert proc.returncode == 0 and proc.stdout == "0\n" and "Traceback" not in proc.stderr, proc.stderr
    inside("echo 'evil:x:1234:99999999999:e:/:/bin/sh' > /etc/passwd")  # a gid setgroups would refuse
    proc = nsbuild("run", "--user", "evil", "dev", "--", "id", "-u", check=False)
    assert proc.returncode == 2 and "no user 'evil'" in proc.stderr and "Traceback" not in proc.stderr
    inside(f"rm /etc/passwd; ln -s /proc/2/root{host_only} /etc/passwd; ln -sf /proc/2/root/dev/loop-control "
           "/etc/group")
    proc = nsbuild("run", "--user", "evil", "dev", "--", "sh", "-c", "id -u; echo $HOME", check=False)
    assert proc.returncode == 2 and "LEAKED" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert nsbuild("run", "dev", "--", "id", "-u").stdout == "0\n"
    tally("hostile passwd/group files read without harm", 4)


def test_ctrl_z_stops_and_fg_continues_through_a_terminal(nsbuild, tmp_path: Path) -> None:
    """Job control at a terminal: CMD's process group gets the terminal; Ctrl-Z stops CMD and
    nsbuild, so the shell gets the terminal back; fg continues both. Driven through a real pty."""
    import pty

    build(nsbuild, tmp_path)
    env = dict(nsbuild.env, PS1="$ ", TERM="dumb")  # type: ignore[attr-defined]
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the shell on the pty
        os.chdir(tmp_path / "cwd")
        os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
    seen = b""

    def expect(marker: bytes) -> None:
        nonlocal seen
        for _ in range(3000):  # polled, ~30 s at most
            r, _, _ = select.select([fd], [], [], 0.01)
            if r:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
            if marker in seen:
                seen = seen[seen.index(marker) + len(marker):]
                return
        pytest.fail(f"no {marker!r} on the terminal; last output: {seen[-500:]!r}")

    try:
        expect(b"$ ")
        os.write(fd, f"{' '.join(nsbuild_cmd())} run dev -- sh -c 'echo re\"\"ady; read x; echo g\"\"ot=$x'\n".encode())
        expect(b"ready")  # (the echoed command line says re""ady)
        os.write(fd, b"\x1a")  # Ctrl-Z
        expect(b"Stopped")
        os.write(fd, b"fg\n")
        expect(b"run dev")  # bash echoes the job it continues
        os.write(fd, b"hello\n")
        expect(b"got=hello")
        os.write(fd, b"exit\n")
    finally:
        os.close(fd)
        os.waitpid(pid, 0)
