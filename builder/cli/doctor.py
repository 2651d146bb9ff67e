"""`nsbuild doctor`: the kernel's features, the strategy `auto` picks, the state directory's health."""
from __future__ import annotations

import json
import os
from typing import Optional


from builder.kernel import features as feat
from builder.errors import NsbuildError
from builder.cli.base import JsonOpt, StateOpt, _join, app, handled, out

TYPE_CHECKING = False
if TYPE_CHECKING:
    pass


def _libseccomp() -> str:
    from builder.kernel import syscalls

    try:
        syscalls.seccomp_open()
        return "yes"
    except OSError:
        return "no: libseccomp.so.2 is missing (apt-get install libseccomp2); `nsbuild run` fails"


@app.command()
@handled
def doctor(state_dir: Optional[str] = StateOpt, as_json: bool = JsonOpt) -> None:
    """Show the kernel's features, the strategy `auto` picks and the state directory's health."""
    from builder.kernel import syscalls
    from builder.sandbox.mounts import mountinfo_entry
    from builder.sandbox.state import StateDir, state_dir as resolve

    f = feat.probe(erofs=os.geteuid() == 0)  # the erofs probe needs root (fsopen)
    try:
        auto = feat.pick_strategy(f, "auto")
    except NsbuildError as e:
        auto = f"none ({e})"
    path = resolve(state_dir)
    from builder.sandbox import holder, rootless as mapping

    rootless = mapping.report(holder.running(path) if holder.wanted() else None, holder.wanted())
    try:
        _join(path, start=False, fork=False)  # rootless: the state directory's mounts are the holder's
    except NsbuildError as e:
        rootless["hint"] = " ".join(filter(None, (rootless["hint"], str(e))))  # doctor reports, it does not fail
    entry = mountinfo_entry(path) if os.path.isdir(path) else None
    tags = entry[6:entry.index("-")] if entry else []
    report = {
        "kernel": f.release,
        "probes": dict(f.probes),
        "features": {k: v for k, v in f.as_dict().items() if k not in ("release", "probes")},
        "strategies": {s: feat.supported(f, s) for s in feat.STRATEGIES},
        "auto": auto,
        "root": os.geteuid() == 0,
        "ffi": "out-of-line (generated)" if syscalls.GENERATED else "in-line (parsed at import: slower start)",
        "seccomp": _libseccomp(),
        "state_dir": {"path": path, "exists": os.path.isdir(path), "mount_point": entry is not None,
                      "unbindable": "unbindable" in tags, "template": StateDir(path).template() is not None},
        "user_namespace": rootless,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return
    from rich.table import Table

    t = Table(title="nsbuild doctor", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("kernel", f.release)
    for probe, result in f.probes:
        t.add_row(f"probe {probe}", result)
    for s, ok in report["strategies"].items():  # type: ignore[union-attr,attr-defined]
        t.add_row(f"strategy {s}", "yes" if ok else "no")
    t.add_row("auto picks", auto)
    t.add_row("overlay layers as fds (6.13+)", "yes" if f.overlay_fd_layers else "no")
    t.add_row("erofs images straight from files", "yes" if f.erofs_file else
              "no: loop devices" if os.geteuid() == 0 else "unknown (needs root)")
    t.add_row("running as root", "yes" if report["root"] else "no: rootless, in a user namespace")
    t.add_row("user namespace mapping", rootless["summary"])
    if rootless["hint"]:
        t.add_row("", rootless["hint"])
    if rootless["mapping"]:
        t.add_row("holder", f"pid {rootless['holder']}" if rootless["holder"] else "not running (started by a build)")
    t.add_row("syscall layer", str(report["ffi"]))
    t.add_row("contained runs (libseccomp)", str(report["seccomp"]))
    sd = report["state_dir"]
    t.add_row("state dir", f"{path}: " + ("missing (created on first build)" if not sd["exists"] else  # type: ignore[index]
                                         "unbindable mount" if sd["unbindable"] else  # type: ignore[index]
                                         "not yet an unbindable mount (fixed on next build)"))
    t.add_row("template namespace", "pinned" if sd["template"] else  # type: ignore[index]
              "none yet (pinned by the first unshare build)")
    out.print(t)
