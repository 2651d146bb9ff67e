"""The suite's own isolation (conftest.py): blind to other mounts and loop devices on the machine,
exact for its own."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import HOST_NAMESPACE, mountinfo, needs_root, own_loops

pytestmark = needs_root


def in_host_namespace(*cmd: str) -> None:
    """Run cmd in the mount namespace the session started in, as another program on the machine would."""
    assert HOST_NAMESPACE is not None
    subprocess.run(["nsenter", f"--mount=/proc/self/fd/{HOST_NAMESPACE}", *cmd], check=True,
                   pass_fds=(HOST_NAMESPACE,))


def test_a_mount_made_elsewhere_on_the_machine_is_not_seen(tmp_path: Path) -> None:
    target = tmp_path / "foreign"
    target.mkdir()
    before = mountinfo()
    in_host_namespace("mount", "-t", "tmpfs", "nsbuild-foreign", str(target))
    try:
        assert mountinfo() == before
    finally:
        in_host_namespace("umount", str(target))


def test_a_mount_made_by_a_test_is_seen(tmp_path: Path) -> None:
    target = tmp_path / "own"
    target.mkdir()
    before = mountinfo()
    subprocess.run(["mount", "-t", "tmpfs", "nsbuild-own", str(target)], check=True)
    try:
        added = [line for line in mountinfo() if line not in before]
        assert len(added) == 1 and f" {target} " in added[0]
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert mountinfo() == before


def test_only_the_sessions_loop_devices_count(tmp_path: Path) -> None:
    ours = tmp_path / "ours.img"
    theirs = Path("/var/tmp") / f"nsbuild-foreign-{os.getpid()}.img"
    for f in (ours, theirs):
        f.write_bytes(b"\0" * (1 << 20))
    before = own_loops()
    devices = []
    try:
        for f in (ours, theirs):
            devices.append(subprocess.run(["losetup", "-f", "--show", str(f)], check=True, capture_output=True,
                                          text=True).stdout.strip())
        assert own_loops() - before == {(devices[0].rsplit("/", 1)[1], str(ours))}
    finally:
        for dev in devices:
            subprocess.run(["losetup", "-d", dev], check=True)
        theirs.unlink()
