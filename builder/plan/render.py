"""Plans rendered for people and programs: strace-like lines, a table, JSON. Each call's own
rendering is its entry in calls.py; here the plan around them: blocks, origins, where steps run."""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from builder.plan import calls
from builder.plan.steps import NAMESPACE, PERSIST, RETRIES, RETRY, Plan, Step


def strace_line(step: Step) -> str:
    return calls.strace_line(step.call, step.args, step.out, step.ok)


def block_note(plan: Plan, kind: str, start: int, end: int, detail: tuple[str, ...]) -> str:
    """What a block of steps is for, where it is not plain host steps run in order (or "")."""
    steps = f"steps {start + 1}-{end}"
    if kind == NAMESPACE:
        back = ", ".join(detail) if detail else "nothing"
        return (f"{steps} run in the new namespace: by this process, which then returns to its own, or by "
                f"a forked child if it has threads; handed back: {back}")
    if kind == RETRY:
        return f"{steps} run again (up to {RETRIES} times) while step {end} fails with {detail[0]}: a race lost"
    if kind == PERSIST:
        return f"{steps} persist: pin {plan.result} in the state directory (under its lock)"
    return ""


def strace(plan: Plan) -> str:
    lines = [f"# {plan.name}: strategy {plan.strategy}, kernel {plan.kernel}, result {plan.result}"]
    lines += [f"# note: {n}" for n in plan.notes]
    notes = {block[1]: block_note(plan, *block) for block in plan.blocks}
    for i, step in enumerate(plan.steps):
        if notes.get(i):
            lines.append(f"# {notes[i]}")
        prefix = "[child] " if step.where == "child" else ""
        origin = f"  # {step.origin}" if step.origin else ""
        lines.append(f"{prefix}{strace_line(step)}{origin}")
    return "\n".join(lines) + "\n"


def as_dict(plan: Plan) -> dict[str, Any]:
    return {
        "recipe": plan.recipe, "name": plan.name, "strategy": plan.strategy, "kernel": plan.kernel,
        "result": plan.result, "notes": list(plan.notes),
        "blocks": [{"kind": kind, "steps": [start, end], "detail": list(detail),
                    "text": block_note(plan, kind, start, end, detail)} for kind, start, end, detail in plan.blocks],
        "steps": [{"index": i, "call": s.call, "args": calls.CALLS[s.call].json(s.args), "out": s.out,
                   "origin": s.origin, "where": s.where, "ok_errno": list(s.ok), "text": strace_line(s)}
                  for i, s in enumerate(plan.steps)],
    }


def table(plan: Plan) -> Any:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"{plan.name}: {plan.strategy} on {plan.kernel} ({len(plan.steps)} syscalls)")
    t.add_column("#", justify="right")
    t.add_column("in")
    t.add_column("syscall", overflow="fold")
    t.add_column("recipe entry")
    notes = {block[1]: block_note(plan, *block) for block in plan.blocks}
    for i, s in enumerate(plan.steps, 1):
        if notes.get(i - 1):
            t.add_row("", "", Text(notes[i - 1], style="dim"), "")
        t.add_row(str(i), s.where, strace_line(s), s.origin)
    return t
