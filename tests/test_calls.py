"""The table of calls and the plan's blocks and persist segment: no root needed."""
from __future__ import annotations

import marshal

import pytest

from builder.plan import calls, render
from builder.plan.steps import Pin, pin_only, with_persist
from builder.plan.planner import make_plan
from builder.plan.steps import NAMESPACE, PERSIST, RETRY, Fd, Flags, Plan
from builder.recipe.load import load

from conftest import RECIPES
from test_plan import CASES, K72, image_recipe


@pytest.mark.parametrize("name,strategy,features", CASES, ids=[f"{n}-{s}-{f.release}" for n, s, f in CASES])
def test_every_planned_step_is_a_call_of_the_table(name: str, strategy: str, features, tmp_path) -> None:
    path = image_recipe(name, tmp_path) if name.startswith("image") else RECIPES / f"{name}.toml"
    plan = make_plan(load(str(path), cwd="/tmp"), features, strategy, pin=Pin(f"/run/nsbuild/{name}.mnt"))
    for step in plan.steps:
        calls.CALLS[step.call].check(step.args)  # the planner checked it too, when it made the step
    # the blocks cover every step once, in order, and only the namespace block's steps run in "child"
    assert [b[1] for b in plan.blocks[1:]] == [b[2] for b in plan.blocks[:-1]]
    assert plan.blocks[0][1] == 0 and plan.blocks[-1][2] == len(plan.steps) and plan.blocks[-1][0] == PERSIST
    for kind, start, end, _ in plan.blocks:
        assert all((s.where == "child") == (kind == NAMESPACE) for s in plan.steps[start:end])
    for kind, start, end, detail in plan.blocks:
        if kind == RETRY:  # a loop device: taken, opened, configured, again while another takes it first
            assert [s.call for s in plan.steps[start:end]] == ["ioctl", "openat", "ioctl"] and detail == ("EBUSY",)


def test_a_call_checks_its_arguments() -> None:
    mkdirat = calls.CALLS["mkdirat"]
    mkdirat.check((Fd("%root"), "etc", 0o755))
    with pytest.raises(TypeError, match=r"mkdirat\(\) takes 3 arguments, the planner gave 2"):
        mkdirat.check((Fd("%root"), "etc"))
    with pytest.raises(TypeError, match=r"mkdirat\(\): mode \(mode\) cannot be '0755'"):
        mkdirat.check((Fd("%root"), "etc", "0755"))
    with pytest.raises(TypeError, match=r"dfd \(fd\) cannot be '%root'"):  # a plain str is no fd
        mkdirat.check(("%root", "etc", 0o755))
    ioctl = calls.CALLS["ioctl"]  # its parameters depend on the request
    ioctl.check((Fd("%loop-control"), "LOOP_CTL_GET_FREE"))
    with pytest.raises(TypeError, match=r"ioctl\(\) takes 5 arguments, the planner gave 3"):
        ioctl.check((Fd("%loop0"), "LOOP_CONFIGURE", Fd("%image0")))
    with pytest.raises(TypeError, match="unknown request 'LOOP_SET_FD'"):
        ioctl.check((Fd("%loop0"), "LOOP_SET_FD"))


def test_each_call_owns_its_rendering() -> None:
    # modes in octal, other numbers as they are (a uid of 1000 is not 01750)
    assert calls.strace_line("fchown", (Fd("%f"), 1000, 1000), None, ()) == "fchown(%f, 1000, 1000)"
    assert calls.strace_line("fchmod", (Fd("%f"), 0o644), None, ()) == "fchmod(%f, 0644)"
    assert calls.strace_line("mknodat", (Fd("%dev"), "null", Flags(("S_IFCHR",)), 0o666, 1, 3), None, ("EEXIST",)) \
        == 'mknodat(%dev, "null", S_IFCHR|0666, makedev(1, 3)) /* EEXIST ok */'
    assert calls.CALLS["open_tree"].json((Fd("AT_FDCWD"), "/usr", Flags(("OPEN_TREE_CLONE",)))) == \
        [{"fd": "AT_FDCWD"}, "/usr", {"flags": ["OPEN_TREE_CLONE"]}]
    slots: dict[str, int] = {}
    floor = calls.CALLS["mknodat"].floor_args((Fd("%dev"), "null", Flags(("S_IFCHR",)), 0o666, 1, 3),
                                              lambda n: slots.setdefault(n, len(slots)))
    assert floor == ["f:0", "s:" + b"null".hex(), f"i:{0o20000 | 0o666}", f"i:{(1 << 8) | 3}"]


def test_the_persist_segment_follows_the_state_directory() -> None:
    target = "/run/nsbuild/dev.mnt"
    fresh = [s.call for s in pin_only(Pin(target, setup="bind")).steps]
    assert fresh == ["open_tree", "move_mount", "mount_setattr", "mknodat", "open_tree", "move_mount"]
    assert [s.call for s in pin_only(Pin(target, setup="unbindable")).steps] == \
        ["mount_setattr", "mknodat", "open_tree", "move_mount"]
    replace = pin_only(Pin(target, stacked=True)).steps
    assert [s.call for s in replace] == ["open_tree", "move_mount", "umount2"]
    assert "MOVE_MOUNT_BENEATH" in replace[1].args[4] and replace[2].args[0] == target
    assert all(s.origin == "persist" and s.where == "host" for s in replace)


def test_a_plan_gets_the_persist_segment_of_the_moment() -> None:
    """A cached plan (or one printed earlier) persists into the state directory as it is when the
    build persists: its segment is made again, and the executor's compiled steps before it kept."""
    recipe = load(str(RECIPES / "dev.toml"), cwd="/tmp")
    plan = make_plan(recipe, K72, "unshare", pin=Pin("/s/dev.mnt", setup="bind"))
    plan.compiled = ["compiled"] * len(plan.steps)  # what the executor made once
    start = plan.persist_start()
    same = with_persist(plan, Pin("/s/dev.mnt", setup="bind"))
    assert same is plan
    replaced = with_persist(plan, Pin("/s/dev.mnt", stacked=True))
    assert replaced.steps[:start] == plan.steps[:start] and replaced.persist_start() == start
    assert [s.call for s in replaced.steps[start:]] == ["open_tree", "move_mount", "umount2"]
    assert replaced.compiled == ["compiled"] * start
    assert replaced.blocks[:-1] == plan.blocks[:-1] and replaced.blocks[-1] == (PERSIST, start, start + 3, ())
    bare = with_persist(plan, None)
    assert len(bare.steps) == start and all(b[0] != PERSIST for b in bare.blocks)
    assert make_plan(recipe, K72, "unshare") == bare  # make_plan without a pin ends with the namespace


def test_a_cached_plan_keeps_its_blocks() -> None:
    plan = make_plan(load(str(RECIPES / "layers.toml"), cwd="/tmp"), K72, "fsmount-namespace",
                     pin=Pin("/s/layers.mnt"))
    again = Plan.load(marshal.loads(marshal.dumps(plan.dump())))
    assert again == plan and again.blocks == plan.blocks
    assert render.strace(again) == render.strace(plan)


def test_blocks_are_told_in_every_rendering() -> None:
    plan = make_plan(load(str(RECIPES / "layers.toml"), cwd="/tmp"), K72, "unshare", pin=Pin("/s/layers.mnt"))
    doc = render.as_dict(plan)
    assert [b["kind"] for b in doc["blocks"]] == ["host", "namespace", "persist"]
    ns = doc["blocks"][1]
    assert ns["detail"] == ["%ns"] and "returns to its own" in ns["text"]
    text = render.strace(plan)
    assert f"# {ns['text']}\n[child] unshare(CLONE_NEWNS)" in text
    assert "fork()" not in text and "fork" not in calls.CALLS  # no pseudo-step: the block says how it runs
