"""What a contained run may do, as data: capability sets and the seccomp rules (no root needed)."""
from __future__ import annotations

import pytest

from builder.runtime import policy


def names(mask: int) -> set[str]:
    return {name for i, name in enumerate(policy.CAPS) if mask >> i & 1}


def test_default_capabilities() -> None:
    assert names(policy.capabilities(0, ())) == set(policy.ROOT_DEFAULT)
    assert policy.capabilities(1000, ()) == 0
    assert "SYS_ADMIN" not in names(policy.capabilities(0, ())) and "MKNOD" not in names(policy.capabilities(0, ()))


@pytest.mark.parametrize("changes,uid,expected", [
    (["+CAP_NET_RAW"], 0, set(policy.ROOT_DEFAULT) | {"NET_RAW"}),
    (["net_raw", "-CAP_CHOWN"], 0, set(policy.ROOT_DEFAULT) - {"CHOWN"} | {"NET_RAW"}),
    (["-ALL", "+SETUID"], 0, {"SETUID"}),
    (["ALL"], 1000, set(policy.CAPS)),
    (["+NET_BIND_SERVICE"], 1000, {"NET_BIND_SERVICE"}),
])
def test_capability_changes_apply_in_order(changes: list[str], uid: int, expected: set[str]) -> None:
    assert names(policy.capabilities(uid, changes)) == expected


def test_seccomp_rules_follow_sys_admin() -> None:
    denied = {name for name, _, cmps in policy.seccomp_rules(0, 1, 2) if not cmps}
    required = {"open_by_handle_at", "kexec_load", "kexec_file_load", "init_module", "finit_module",
                "delete_module", "reboot", "swapon", "swapoff", "keyctl", "add_key", "request_key", "bpf",
                "perf_event_open", "userfaultfd", "mount", "unshare", "setns", "fsopen", "open_tree", "move_mount"}
    assert required <= denied | {"clone3"}
    admin = {name for name, _, cmps in policy.seccomp_rules(1 << policy.CAPS.index("SYS_ADMIN"), 1, 2) if not cmps}
    assert "mount" not in admin and "unshare" not in admin and "kexec_load" in admin
    ioctls = [cmps for name, _, cmps in policy.seccomp_rules(0, 1, 2) if name == "ioctl"]
    assert ((1, 0xFFFFFFFF, 0x5412),) in ioctls  # TIOCSTI, on the 32 bits the kernel reads


@pytest.mark.parametrize("name,ok", [("dev", True), ("a.b-c", True), ("-a", False), ("a_b", False),
                                     ("", False), ("a" * 64, False), ("a." * 31 + "a", True)])
def test_hostnames(name: str, ok: bool) -> None:
    assert policy.valid_hostname(name) is ok


@pytest.mark.parametrize("user,ok", [("root", True), ("1000", True), ("1000:1000", True), ("nobody", True),
                                     ("1000:", False), (":1", False), ("a:b", False), ("-x", False), ("", False)])
def test_users(user: str, ok: bool) -> None:
    assert policy.valid_user(user) is ok
