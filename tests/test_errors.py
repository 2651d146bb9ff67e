"""Typed errors: a failed step is a BuildError with its step and errno, a failed persist a PersistError
that says whether a retry can help, and errors gain their callers' context on the way up."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from builder.errors import BuildError, NsbuildError, PersistError
from builder.plan import executor
from builder.recipe.load import load
from builder.sandbox.build import plan_for, resolve_layers
from conftest import mountinfo, needs_root

RECIPE = '[sandbox]\nname = "typed"\n[root]\nupper = "tmpfs"\n[[mount]]\ntarget = "/tmp"\ntype = "tmpfs"\n'


def test_context_is_added_outermost_first() -> None:
    e = NsbuildError("the cause", "a hint")
    assert e.wrap("inner").wrap("outer") is e
    assert str(e) == "outer: inner: the cause" and e.hint == "a hint"
    assert e.as_dict()["error"] == "outer: inner: the cause"


def test_build_and_persist_errors_carry_their_facts() -> None:
    e = PersistError("pinning failed", "", step=7, errno=errno.ENOMEM, retry=True)
    assert isinstance(e, BuildError) and (e.step, e.errno, e.retry) == (7, errno.ENOMEM, True)
    assert {"step": 7, "errno": errno.ENOMEM, "retry": True}.items() <= e.as_dict().items()
    assert BuildError("x").step is None


@needs_root
def test_an_injected_fault_names_its_step_and_errno(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "r.toml").write_text(RECIPE)
    plan = plan_for(resolve_layers(load(str(tmp_path / "r.toml"))), "unshare")
    before = mountinfo()
    index = next(i for i, s in enumerate(plan.steps) if s.call == "fsmount")
    monkeypatch.setenv("NSBUILD_TEST_FAULT", f"{index}:EMFILE")
    with pytest.raises(BuildError) as raised:
        os.close(executor.execute(plan))
    assert not isinstance(raised.value, PersistError)
    assert (raised.value.step, raised.value.errno) == (index, errno.EMFILE)
    assert f"step {index + 1}" in str(raised.value) and mountinfo() == before
