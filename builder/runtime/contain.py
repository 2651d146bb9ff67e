"""A contained run: CMD in a private copy of a sandbox's mount namespace, with its own PID, IPC,
UTS and cgroup namespaces (and network, if asked), a /proc of its own, bounded capabilities,
no_new_privs and a seccomp filter, as the recipe's user.

Three processes, as bwrap and podman have them:
  nsbuild (outside)   setns into the sandbox, unshare the namespaces, set the hostname, bring lo up;
                      waits for pid 1 and exits with CMD's status, forwarding signals sent to it,
                      handing the terminal to CMD's process group and relaying its stops
  pid 1 (init)        mounts the run's /proc (only a process inside the PID namespace can), masks
                      what podman masks; then takes CMD's user, capabilities, no_new_privs and
                      seccomp, spawns CMD in a process group of its own, reaps orphans, forwards
                      signals to CMD
  CMD                 the command (command.py), started by posix_spawn

Nothing here changes the persisted namespace: every mount is made in the run's copy of it, so
other runs and `nsenter --mount=FILE` see the sandbox as it was built. The hot path of
`nsbuild run`: imports only what the kernel interface needs (no typer, rich, json, enum).
"""
from __future__ import annotations

import _signal
import _socket
import fcntl
import marshal
import os
import struct
import sys

from builder.runtime import passwd, policy, procfs
from builder.kernel import syscalls as sc
from builder.runtime.command import exec_command, spawn_command
from builder.errors import NsbuildError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

SHAREABLE = ("pid", "ipc", "uts", "cgroup")
_NS = {"pid": "CLONE_NEWPID", "ipc": "CLONE_NEWIPC", "uts": "CLONE_NEWUTS", "cgroup": "CLONE_NEWCGROUP"}

_WAITED = {_signal.SIGCHLD, _signal.SIGTERM, _signal.SIGINT, _signal.SIGQUIT, _signal.SIGHUP, _signal.SIGUSR1,
           _signal.SIGUSR2, _signal.SIGWINCH}
# Python ignores these, and waits for those (blocked): CMD gets the default dispositions
_DEFAULTED = (_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGTTOU, _signal.SIGIO, *_WAITED)
_OUTER = _WAITED | {_signal.SIGIO}  # nsbuild outside also hears from pid 1 (a stop to relay)
_TTY_STOPS = (_signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU)
_SI_KERNEL = 0x80  # si_code of a signal the terminal sent to its foreground group (CMD got it too)


class Spec:
    """Everything a contained run needs, settled before anything is forked."""

    __slots__ = ("argv", "cwd", "env", "uid", "gid", "groups", "caps", "hostname", "network", "share", "seccomp")

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], uid: int, gid: int, groups: list[int],
                 caps: int, hostname: str, network: str, share: tuple[str, ...], seccomp: bytes) -> None:
        self.argv, self.cwd, self.env = argv, cwd, env
        self.uid, self.gid, self.groups, self.caps = uid, gid, groups, caps
        self.hostname, self.network, self.share, self.seccomp = hostname, network, share, seccomp


# -- the seccomp filter ------------------------------------------------------------------------------

_ADMIN = 1 << policy.CAPS.index("SYS_ADMIN")


def seccomp_programs(cache_dir: str | None) -> dict[bool, bytes]:
    """The default filter as BPF, without and with CAP_SYS_ADMIN (the only capability it depends
    on), keyed by that. libseccomp compiles a program in ~1 ms, a third of what containment
    costs a run, so the programs are kept in the state dir, with the rules they were made from.
    Call it before entering the sandbox: it reads the host's files and loads libseccomp."""
    rules = {admin: policy.seccomp_rules(_ADMIN if admin else 0, sc.scmp_act_errno(policy.EPERM),
                                         sc.scmp_act_errno(38)) for admin in (False, True)}  # 38: ENOSYS
    key = repr((1, os.uname().machine, rules))
    path = os.path.join(cache_dir, ".seccomp") if cache_dir else None
    if path:
        try:
            with open(path, "rb") as f:
                cached = marshal.load(f)
            if (isinstance(cached, tuple) and len(cached) == 2 and cached[0] == key
                    and isinstance(cached[1], dict) and set(cached[1]) == {False, True}
                    and all(isinstance(p, bytes) and p and len(p) % 8 == 0 for p in cached[1].values())):
                return cached[1]
        except (OSError, EOFError, ValueError, TypeError):
            pass
    try:
        sc.seccomp_open()
        programs = {admin: sc.seccomp_program(sc.SCMP_ACT_ALLOW, r) for admin, r in rules.items()}
    except sc.SyscallError as e:
        raise NsbuildError(f"cannot make the run's seccomp filter: {e}",
                           "install libseccomp2 (apt-get install libseccomp2), or run --unconfined") from None
    if path:
        try:  # best effort: a cache
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                marshal.dump((key, programs), f)
            os.replace(tmp, path)
        except OSError:
            pass
    return programs


def resolve_user(user: str, where: str) -> tuple[int, int, list[int], str | None, str | None]:
    """passwd.resolve_user() inside the sandbox entered by enter()."""
    return passwd.resolve_user(user, where, _HOST_PROC)


# -- outside: nsbuild itself -----------------------------------------------------------------------

_HOST_PROC: int | None = None  # the host's /proc, between enter() and launch(): see _read_db


def enter(nsfd: int) -> None:
    """setns into a sandbox (seccomp_programs() first: from here on the host's files are out of reach).

    From here on this process must not import, and no exception may reach Python's traceback
    printer: both would read files (modules, source lines, `# coding:` codecs) at the host's paths,
    which now name the sandbox's files. guarded() ends the process instead."""
    global _HOST_PROC
    host_proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sc.setns(nsfd, sc.FLAGS["CLONE_NEWNS"])
    except OSError:
        os.close(host_proc)
        raise
    os.close(nsfd)
    _HOST_PROC = host_proc
    sys.path[:] = []  # an import that slips through finds nothing instead of the sandbox's modules
    sys.excepthook = lambda *_: None


def guarded(fn: Callable[[], None]) -> None:
    """Run fn() inside the sandbox: an NsbuildError is reported, anything else ends the process
    with a fixed message (no traceback: see enter()); never returns."""
    try:
        fn()
        code = 0
    except NsbuildError as e:
        code = e.report()
    except BaseException as e:  # noqa: BLE001 - the message names the type only
        os.write(2, f"nsbuild: error: the run failed inside the sandbox ({type(e).__name__})\n".encode())
        code = 1
    os._exit(code)


def launch(spec: Spec) -> None:
    """Enter the sandbox contained and run spec.argv; exits with its status, does not return.

    Call it with the sandbox's namespace already entered (enter()): every module and library
    this needs was loaded before, because from there on imports would read the sandbox's files."""
    flags = sc.FLAGS["CLONE_NEWNS"]
    for ns, flag in _NS.items():
        if ns not in spec.share:
            flags |= sc.FLAGS[flag]
    if spec.network == "none":
        flags |= sc.FLAGS["CLONE_NEWNET"]
    global _HOST_PROC
    if _HOST_PROC is not None:
        os.close(_HOST_PROC)
        _HOST_PROC = None
    sc.unshare(flags)  # the mount namespace copied here is this run's own
    if "uts" not in spec.share:
        sc.sethostname(spec.hostname)
    if spec.network == "none":
        _loopback_up()
    sys.stdout.flush()
    sys.stderr.flush()
    if "pid" in spec.share:  # no PID namespace, so no init: this process becomes CMD
        procfs.mask()
        _exec(spec)
    # CMD gets a process group of its own, so kill(0, ...) inside reaches no host process (the
    # caller's group holds nsbuild, pipeline neighbours, a script's shell); a terminal that nsbuild
    # has in the foreground is handed to that group, and CMD's stops are relayed (Ctrl-Z), as sudo does
    tty = os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    _signal.pthread_sigmask(_signal.SIG_BLOCK, _OUTER)  # before fork: no signal is lost in between
    pid = os.fork()
    if pid == 0:
        ours.close()
        guarded(lambda: _init(spec, theirs))  # never unwinds into the caller's frames
    theirs.close()
    try:
        os.setpgid(pid, pid)  # here too, so the group exists before the terminal is handed over
    except OSError:
        pass  # it did it first
    if tty:
        _signal.signal(_signal.SIGTTOU, _signal.SIG_IGN)  # a background group may set the terminal
        os.tcsetpgrp(0, pid)
        fcntl.fcntl(ours.fileno(), fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(ours.fileno(), fcntl.F_SETFL, os.O_ASYNC | os.O_NONBLOCK)  # SIGIO when pid 1 writes
    code = _wait(pid, init=False, relay=(ours, pid) if tty else None)
    if tty:
        os.tcsetpgrp(0, os.getpgrp())
    os._exit(code)


def _loopback_up() -> None:
    """`ip link set lo up` in the new network namespace (SIOCSIFFLAGS: IFF_UP|IFF_LOOPBACK|IFF_RUNNING)."""
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM, 0)
    try:
        fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH22x", b"lo", 0x1 | 0x8 | 0x40))
    finally:
        s.close()


def _wait(child: int, init: bool, relay: tuple[_socket.socket, int] | None = None,
          stopped: _socket.socket | None = None) -> int:
    """Wait for `child` and return its exit status (128+N if signal N killed it), forwarding the
    signals sent to this process (not those the terminal sent: CMD's group had them too). As init,
    also reap every orphan of the PID namespace, and tell `stopped` when CMD stops. Outside, with
    `relay` (the socket from pid 1, its group), stop with CMD and hand it the terminal again after."""
    waited = _OUTER if relay else _WAITED
    while True:
        while True:
            try:
                pid, status = os.waitpid(-1 if init else child, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                return 1
            if pid == 0:
                break
            if pid == child and os.WIFSTOPPED(status):
                if stopped is not None and os.WSTOPSIG(status) in _TTY_STOPS:
                    try:
                        stopped.send(b"z")
                    except OSError:
                        pass
                continue
            if pid == child:
                code = os.waitstatus_to_exitcode(status)
                return 128 - code if code < 0 else code
        info = _signal.sigwaitinfo(waited)
        if info.si_signo == _signal.SIGIO and relay:
            _relay_stop(*relay)
        elif info.si_signo not in (_signal.SIGCHLD, _signal.SIGIO) and info.si_code != _SI_KERNEL:
            try:
                os.kill(child, info.si_signo)
            except ProcessLookupError:
                pass


def _relay_stop(sock: _socket.socket, group: int) -> None:
    """CMD stopped at the terminal (Ctrl-Z): give the terminal back and stop too, so the caller's
    shell has its job control; once continued (fg), hand the terminal to CMD and continue it."""
    try:
        if not sock.recv(64):
            return
    except BlockingIOError:
        return
    os.tcsetpgrp(0, os.getpgrp())
    os.kill(os.getpid(), _signal.SIGTSTP)  # not blocked: stops here until the shell continues us
    os.tcsetpgrp(0, group)
    try:
        os.killpg(group, _signal.SIGCONT)
    except ProcessLookupError:
        pass


# -- pid 1 -------------------------------------------------------------------------------------------

def _init(spec: Spec, outer: _socket.socket) -> None:  # pragma: no cover - runs forked
    """pid 1: exits with CMD's status. `outer` is the socket to nsbuild outside."""
    os.setpgid(0, 0)
    _alive(outer)
    try:
        procfs.own_proc()
        procfs.mask()
    except OSError as e:
        print(f"nsbuild: error: cannot set up the run's /proc: {e}", file=sys.stderr)
        os._exit(1)
    # pid 1 takes CMD's privileges before it starts CMD: nothing in the PID namespace keeps more,
    # and CMD is spawned (vfork and exec), not forked, so it costs no copy of this process
    _lock_down(spec, keep=outer.fileno())
    _alive(outer)  # again: a change of user cleared the death signal
    sc.prctl(sc.PR_SET_DUMPABLE, 0)  # CMD (the same user) may not ptrace pid 1 or read its fds
    os._exit(_wait(spawn_command(spec.argv, spec.env, _DEFAULTED), init=True, stopped=outer))


def _alive(outer: _socket.socket) -> None:
    """Die with nsbuild: PDEATHSIG, and a check for a death before it was set (EOF on the socket)."""
    sc.prctl(sc.PR_SET_PDEATHSIG, _signal.SIGKILL)
    outer.setblocking(False)
    try:
        if not outer.recv(1):
            os._exit(1)
    except BlockingIOError:
        pass


# -- CMD ---------------------------------------------------------------------------------------------

def _exec(spec: Spec) -> None:  # pragma: no cover - the last act of nsbuild (--share pid: no init)
    _lock_down(spec)
    for sig in _DEFAULTED:
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, set())
    exec_command(spec.argv, spec.env)


def _lock_down(spec: Spec, keep: int = -1) -> None:
    """Become the run's user with its capabilities and lock privileges down; exit on failure."""
    try:
        _become(spec, keep)
    except OSError as e:
        print(f"nsbuild: error: cannot drop privileges for the run: {e}", file=sys.stderr)
        os._exit(1)
    except NsbuildError as e:
        os._exit(e.report())


def _become(spec: Spec, keep: int = -1) -> None:
    caps = spec.caps
    for cap in range(64):  # the bounding set: what no exec can give back (also capabilities newer than ours)
        if not caps >> cap & 1:
            try:
                sc.prctl(sc.PR_CAPBSET_DROP, cap)
            except OSError:
                break  # EINVAL: past the kernel's last capability
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    try:
        os.setgroups(spec.groups)
    except PermissionError:
        if set(spec.groups) - {spec.gid}:
            raise NsbuildError(f"cannot give the run its supplementary groups {spec.groups}: this user namespace "
                               "maps one id only and denies setgroups",
                               "get a range of subordinate ids (see `nsbuild doctor`), or run as root") from None
        # a user namespace that maps one id denies setgroups (the kernel's condition for its gid_map):
        # the caller's groups stay, shown as nobody, as under `unshare -Ur`
    if spec.uid != 0 and caps:
        sc.prctl(sc.PR_SET_KEEPCAPS, 1)  # else setresuid drops every capability
    os.setresgid(spec.gid, spec.gid, spec.gid)
    os.setresuid(spec.uid, spec.uid, spec.uid)
    sc.capset(caps, caps, caps)
    if spec.uid != 0:  # root's exec keeps the bounding set; another user's needs them ambient
        for cap in range(64):
            if caps >> cap & 1:
                sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_RAISE, cap)
    try:
        os.chdir(spec.cwd)  # as the user: a directory it may not enter is refused as it would be later
    except OSError as e:
        raise NsbuildError(f"cannot change to {spec.cwd} inside the sandbox: {e.strerror}",
                           "set [run] cwd (or --cwd) to a directory that exists") from None
    # fds inherited from the caller would be doors to the host (close_range: however high they are)
    if keep >= 3:
        os.closerange(3, keep)
        os.closerange(keep + 1, 2**31 - 1)
    else:
        os.closerange(3, 2**31 - 1)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    sc.seccomp_install(spec.seccomp)
