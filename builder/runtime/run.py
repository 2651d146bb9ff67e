"""Entering a sandbox: `nsbuild run`, contained (contain.py) unless the recipe or --unconfined
says otherwise.

This is the hot path of `nsbuild run NAME`: it imports neither typer, rich nor tomllib. Once
the sandbox's namespace is entered, nothing more may be imported: Python would read modules
from the sandbox's files, which its content controls.
"""
from __future__ import annotations

import os
import sys
import warnings  # noqa: F401 - os.execvpe imports it lazily, when the host's stdlib may be out of reach

from builder.runtime import command as start, contain, policy
from builder.kernel import syscalls as sc
from builder.errors import NsbuildError, UsageError
from builder.sandbox.state import StateDir, state_dir


class Options:
    """Per-run overrides (`nsbuild run --env ... --user ...`); None and () leave the recipe's."""

    __slots__ = ("env", "cwd", "user", "network", "hostname", "share", "unconfined")

    def __init__(self, env: list[str] | tuple[str, ...] = (), cwd: str | None = None, user: str | None = None,
                 network: str | None = None, hostname: str | None = None,
                 share: list[str] | tuple[str, ...] = (), unconfined: bool = False) -> None:
        self.env, self.cwd, self.user, self.network = tuple(env), cwd, user, network
        self.hostname, self.share, self.unconfined = hostname, tuple(share), unconfined


def _settings(run: dict, name: str, opts: Options) -> dict:  # type: ignore[type-arg]
    """The recipe's [run] with the command line's overrides, checked."""
    s = dict(run)
    env = dict(s.get("env", {}))
    for item in opts.env:
        key, eq, value = item.partition("=")
        if not eq or not key or "\x00" in item:
            raise UsageError(f"--env '{item}' is not KEY=VALUE", "e.g. --env LANG=C.UTF-8")
        env[key] = value
    s["env"] = env
    for key in ("cwd", "user", "network", "hostname"):
        if getattr(opts, key) is not None:
            s[key] = getattr(opts, key)
    if not s.get("cwd", "/").startswith("/"):
        raise UsageError(f"--cwd '{s['cwd']}' is not an absolute path in the sandbox", "e.g. --cwd /work")
    if s.get("network", "host") not in policy.NETWORKS:
        raise UsageError(f"--network '{s['network']}' is not one of {', '.join(policy.NETWORKS)}",
                         "host shares the host's network; none gives only a loopback interface")
    for ns in opts.share:
        if ns not in contain.SHAREABLE:
            raise UsageError(f"--share '{ns}' is not one of {', '.join(contain.SHAREABLE)}",
                             "the network is chosen with --network host|none")
    s["share"] = opts.share
    s["hostname"] = s.get("hostname") or name
    if opts.hostname is not None and not policy.valid_hostname(opts.hostname):
        raise UsageError(f"--hostname '{opts.hostname}' is not a valid host name",
                         "letters, digits and '-', in dot-separated labels, at most 64 characters")
    if "uts" in opts.share and opts.hostname is not None:
        raise UsageError("--hostname cannot be set while sharing the host's UTS namespace (--share uts)")
    if not policy.valid_user(s.get("user", "root")):
        raise UsageError(f"--user '{s['user']}' is not root, a user NAME or UID[:GID]", "e.g. --user 1000:1000")
    if opts.unconfined:
        s["contained"] = False
    return s


def _env(recipe_env: dict[str, str]) -> dict[str, str]:
    """A clean environment: the recipe's, plus TERM from the caller when the recipe has none."""
    env = dict(recipe_env)
    if "TERM" not in env and "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    return env


def _enter(nsfd: int, command: list[str], s: dict, cache: str | None) -> None:  # type: ignore[type-arg]
    """Run `command` with settings `s` in the sandbox whose namespace is `nsfd`; does not return.
    `cache`: the state dir, where the seccomp programs are kept (None: not made yet)."""
    env = _env(s["env"])
    sys.stdout.flush()
    sys.stderr.flush()
    if not s.get("contained", True):  # the mount namespace only, as full root (what nsenter does)
        contain.enter(nsfd)
        contain.guarded(lambda: _unconfined(command, env, s["cwd"]))
    programs = contain.seccomp_programs(cache)
    contain.enter(nsfd)
    contain.guarded(lambda: _contained(command, env, s, programs))


def _unconfined(command: list[str], env: dict[str, str], cwd: str) -> None:
    try:
        os.chdir(cwd)
    except OSError as e:
        raise NsbuildError(f"cannot change to {cwd} inside the sandbox: {e.strerror}",
                           "set [run] cwd (or --cwd) to a directory that exists") from None
    start.exec_command(command, env)


def _contained(command: list[str], env: dict[str, str], s: dict, programs: dict[bool, bytes]) -> None:  # type: ignore[type-arg]
    """Inside the sandbox's namespace (contain.enter): settle who CMD runs as, then contain.launch."""
    uid, gid, groups, home, name = contain.resolve_user(s.get("user", "root"), "[run] user (or --user)")
    if uid != 0 and env.get("HOME") == "/root":
        env["HOME"] = home or "/"  # the recipe left HOME at its default: the user's own (podman: "/")
    if name and uid != 0:
        env.setdefault("USER", name)
        env.setdefault("LOGNAME", name)
    caps = policy.capabilities(uid, s.get("capabilities", ()))
    contain.launch(contain.Spec(command, s["cwd"], env, uid, gid, groups, caps, s["hostname"],
                             s.get("network", "host"), s["share"], programs[policy.has(caps, "SYS_ADMIN")]))


def run_persisted(name: str, command: list[str], state: str | None = None, opts: Options | None = None) -> None:
    """Enter a persisted sandbox and exec; does not return."""
    sd = StateDir(state_dir(state))
    if os.geteuid() != 0:  # rootless: the sandbox is pinned in the holder's namespaces
        from builder.sandbox import holder

        holder.join(sd.path, start=False)
    run: dict = sd.read_run(name) or {}  # type: ignore[type-arg]
    if not run:  # no fast cache: the metadata says why (missing, corrupt, foreign)
        meta = sd.read(name)
        if meta is None:
            raise UsageError(f"no sandbox named '{name}' in {sd.path}",
                             "build one with `nsbuild RECIPE`, or list them with `nsbuild ls`")
        run = meta["run"] if isinstance(meta.get("run"), dict) else {}  # type: ignore[assignment]
    s = _settings(run, name, opts or Options())
    try:
        nsfd = os.open(sd.ns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        if sc.ns_type(nsfd) != sc.FLAGS["CLONE_NEWNS"]:
            raise OSError(0, "not a mount namespace")
    except OSError:
        raise NsbuildError(f"sandbox '{name}' has no mount namespace any more (its nsfs file is not mounted)",
                           f"rebuild it, or remove it with `nsbuild rm {name}`") from None
    _enter(nsfd, command or list(s.get("command", ["/bin/sh"])), s, sd.path)


def run_recipe(path: str, command: list[str], strategy: str = "auto", state: str | None = None,
               opts: Options | None = None) -> None:
    """Build an ephemeral sandbox, enter it: it is gone when the command exits."""
    from builder.plan import executor
    from builder.recipe import load as rcp
    from builder.sandbox import holder
    from builder.sandbox.build import plan_for, run_metadata
    from builder.sandbox.session import Session

    session = Session(StateDir(state_dir(state)))
    sd = session.state
    holder.join(sd.path, start=True, fork=True)  # rootless: build and run in the holder's namespaces
    r = session.resolve(rcp.load(path))
    s = _settings(run_metadata(r), r.name, opts or Options())
    nsfd = executor.execute(plan_for(r, strategy, state=sd, session=session))
    _enter(nsfd, command or list(r.run.command), s, sd.path if os.path.isdir(sd.path) else None)


def command_args(command: list[str] | tuple[str, ...] | None) -> list[str]:
    """CMD as given after TARGET: one leading "--" only separates it from nsbuild's options."""
    args = list(command or [])
    return args[1:] if args[:1] == ["--"] else args


def run(target: str, command: list[str], state_dir: str | None = None, strategy: str = "auto",
        env: list[str] | tuple[str, ...] = (), cwd: str | None = None, user: str | None = None,
        network: str | None = None, hostname: str | None = None, share: list[str] | tuple[str, ...] = (),
        unconfined: bool = False) -> None:
    """NAME of a persisted sandbox, or a recipe file (it ends in .toml or contains a '/')."""
    opts = Options(env, cwd, user, network, hostname, share, unconfined)
    if target.endswith(".toml") or "/" in target:
        run_recipe(target, command, strategy, state_dir, opts)
    run_persisted(target, command, state_dir, opts)
