"""The syscall layer's per-architecture numbers (no root needed)."""
from __future__ import annotations

import pytest

from builder.kernel import syscalls as sc
from builder.errors import NsbuildError


def test_numbers_of_this_architecture() -> None:
    assert sc.MACHINE in ("x86_64", "aarch64")
    assert sc.NR["fsopen"] == 430 and sc.NR["pivot_root"] == {"x86_64": 155, "aarch64": 41}[sc.MACHINE]


def test_an_unknown_architecture_is_refused_clearly(monkeypatch) -> None:
    monkeypatch.setattr(sc, "NR", {})
    monkeypatch.setattr(sc, "MACHINE", "riscv64")
    with pytest.raises(NsbuildError, match=r"no syscall numbers for this architecture \(riscv64\).*pivot_root"):
        sc.pivot_root(".", ".")
