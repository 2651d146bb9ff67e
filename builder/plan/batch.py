"""A batch: many namespaces from one plan, made by forked workers (`nsbuild build --count N`)."""
from __future__ import annotations

import _socket  # socket.py costs ~5 ms to import (its enums)
import marshal
import os

from builder.errors import BuildError
from builder.plan import executor
from builder.plan.steps import Plan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator


def execute_many(plan: Plan, count: int, workers: int = 0) -> Iterator[int]:
    """Run `plan` `count` times; yield each result fd (close-on-exec) as it is made.

    Forked workers (one per allowed CPU unless `workers` says) each run every step themselves,
    host and child steps alike, and go back to the host's mount namespace (setns also resets
    root and cwd) before their next round: a fork per worker instead of one per namespace. The
    first failure ends the batch with the BuildError a single build would raise.
    """
    workers = max(1, min(count, workers or len(os.sched_getaffinity(0))))
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    socks, pids = [], []
    try:
        for share in shares:
            ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - a worker; reports over the socket
                ours.close()
                for other in socks:
                    other.close()
                _worker(plan, share, theirs)
            theirs.close()
            socks.append(ours)
            pids.append(pid)
        left = list(shares)
        while any(left):
            for i, sock in enumerate(socks):  # round robin: the workers go at the same pace
                if left[i]:
                    left[i] -= 1
                    yield _receive(sock)
    finally:
        for sock in socks:
            sock.close()  # a worker still sending gets EPIPE and stops
        for pid in pids:
            os.waitpid(pid, 0)


def _worker(plan: Plan, count: int, sock: _socket.socket) -> None:  # pragma: no cover - runs forked
    try:
        for _ in range(count):
            fd = executor.Run(plan, inline=True).run()  # returns to the host's namespace after each round
            executor.send_fds(sock, b"ok", [fd])
            os.close(fd)
    except BuildError as e:
        sock.send(marshal.dumps({"message": str(e), "hint": e.hint, "step": e.step, "errno": e.errno}))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        sock.send(marshal.dumps({"message": f"batch worker: {e!r}", "hint": "", "step": None}))
    finally:
        os._exit(0)


def _receive(sock: _socket.socket) -> int:
    msg, fds = executor.recv_fds(sock, 1)
    if msg == b"ok" and len(fds) == 1:
        return fds[0]
    for fd in fds:
        os.close(fd)
    info = marshal.loads(msg) if msg else {"message": "a batch worker died", "hint": "", "step": None}
    raise BuildError(info["message"], info["hint"], info["step"], info.get("errno"))
