"""Plans rendered for people and programs: strace-like lines, a table, JSON."""
from __future__ import annotations

from _json import encode_basestring as _quote  # json.dumps's own quoting, without importing json (re)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from builder.plan.steps import Fd, FdPath, Flags, LoopPath, Plan, ProcPath, Step, Value


def _arg(arg: object) -> str:
    if isinstance(arg, Fd):
        return str(arg)
    if isinstance(arg, FdPath):
        return f'"/proc/self/fd/{arg}"'
    if isinstance(arg, LoopPath):
        return f'"/dev/loop{arg}"'
    if isinstance(arg, ProcPath):
        return f'"/proc/{arg}"'
    if isinstance(arg, Value):
        return str(arg)
    if isinstance(arg, Flags):
        return "|".join(arg) if arg else "0"
    if arg is None:
        return "NULL"
    if isinstance(arg, bytes):
        more = "..." if len(arg) > 40 else ""
        return _quote(arg[:40].decode(errors="replace")) + f"{more} ({len(arg)} bytes)"
    if isinstance(arg, str):
        return _quote(arg)
    if isinstance(arg, int) and arg > 7:
        return oct(arg).replace("0o", "0")  # modes read best in octal; small ints are the same
    return str(arg)


def strace_line(step: Step) -> str:
    if step.call == "fork":
        returns = ", ".join(step.args[0]) if step.args and step.args[0] else "nothing"  # type: ignore[arg-type]
        return f"fork() = child  /* sends back {returns} */"
    args = step.args
    if step.call == "mknodat":  # mknodat(dfd, name, S_IFCHR|0666, makedev(1, 3))
        dfd, name, kind, mode, major, minor = args
        text = f"mknodat({_arg(dfd)}, {_arg(name)}, {_arg(kind)}|{mode:04o}, makedev({major!r}, {minor!r}))"  # type: ignore[str-bytes-safe]
    elif step.call == "mount_setattr":
        dfd, path, flags, aset, aclr, prop, *userns = args
        idmap = f", userns_fd={_arg(userns[0])}" if userns else ""
        attr = f"{{attr_set={_arg(aset)}, attr_clr={_arg(aclr)}, propagation={_arg(prop)}{idmap}}}"
        text = f"mount_setattr({_arg(dfd)}, {_arg(path)}, {_arg(flags)}, {attr})"
    else:
        text = f"{step.call}({', '.join(_arg(a) for a in args)})"
    text = f"{text} = {step.out}" if step.out else text
    return text + f" /* {'|'.join(step.ok)} ok */" if step.ok else text


def strace(plan: Plan) -> str:
    lines = [f"# {plan.name}: strategy {plan.strategy}, kernel {plan.kernel}, result {plan.result}"]
    lines += [f"# note: {n}" for n in plan.notes]
    for step in plan.steps:
        prefix = "[child] " if step.where == "child" else ""
        origin = f"  # {step.origin}" if step.origin else ""
        lines.append(f"{prefix}{strace_line(step)}{origin}")
    return "\n".join(lines) + "\n"


def _json_arg(arg: object) -> Any:
    if isinstance(arg, Fd):
        return {"fd": str(arg)}
    if isinstance(arg, FdPath):
        return {"fd_path": str(arg)}
    if isinstance(arg, LoopPath):
        return {"loop_path": str(arg)}
    if isinstance(arg, ProcPath):
        return {"proc_path": str(arg)}
    if isinstance(arg, Value):
        return {"value": str(arg)}
    if isinstance(arg, Flags):
        return {"flags": list(arg)}
    if isinstance(arg, bytes):
        return {"bytes": arg.decode(errors="replace")}
    return arg


def as_dict(plan: Plan) -> dict[str, Any]:
    return {
        "recipe": plan.recipe, "name": plan.name, "strategy": plan.strategy, "kernel": plan.kernel,
        "result": plan.result, "notes": list(plan.notes),
        "steps": [{"index": i, "call": s.call, "args": [_json_arg(a) for a in s.args], "out": s.out,
                   "origin": s.origin, "where": s.where, "ok_errno": list(s.ok), "text": strace_line(s)}
                  for i, s in enumerate(plan.steps)],
    }


def table(plan: Plan) -> Any:
    from rich.table import Table

    t = Table(title=f"{plan.name}: {plan.strategy} on {plan.kernel} ({len(plan.steps)} syscalls)")
    t.add_column("#", justify="right")
    t.add_column("in")
    t.add_column("syscall", overflow="fold")
    t.add_column("recipe entry")
    for i, s in enumerate(plan.steps, 1):
        t.add_row(str(i), s.where, strace_line(s), s.origin)
    return t
