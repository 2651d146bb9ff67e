"""Runs the mounting tests again inside Debian's 7.2 kernel, where all three strategies exist."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IN_VM, NOT_RUN, REPO, TALLY_PREFIX, needs_root, tally

KERNEL_VM = REPO.parent / "shared" / "tools" / "kernel-vm"
# Two guests side by side: under TCG each runs on one host thread, and the machine has two. The
# rootless suite (users, holders) is about as long as all the others; its fault sweep (~250 builds as
# two users) runs on the host only: under TCG it alone would take longer than the guest may run. So does
# its registry pull (a registry, skopeo pushes): what it tests does not depend on the kernel's strategy.
GUESTS = [["tests/test_e2e.py", "tests/test_propagation.py", "tests/test_contain.py", "tests/test_same_tree.py",
           "tests/test_executor.py", "tests/test_images.py", "tests/test_idmap.py", "tests/test_strace.py"],
          ["tests/test_rootless.py", "-k", "not test_fault_at_every_step and not test_a_registry_image"]]
# test-only: other suites for one guest (tests/test_setup.py runs a quick one from a clone under /tmp)
if os.environ.get("NSBUILD_KVM_SUITES"):
    GUESTS = [os.environ["NSBUILD_KVM_SUITES"].split()]


def hidden_in_guest(path: str) -> bool:
    """The guest mounts fresh tmpfs on /tmp and /run and keeps only the working directory (the
    clone) from the host's there: a clone under /tmp works, a venv elsewhere under /tmp does not."""
    def under(root: str) -> bool:
        return path == root or path.startswith(root.rstrip("/") + "/")

    return (under("/tmp") or under("/run")) and not under(str(REPO))


def not_run(why: str) -> None:
    """Skip, loudly: in the skip reasons and again at the very end of the run."""
    NOT_RUN.append(f"KERNEL 7 TESTS NOT RUN: {why}")
    pytest.skip(f"!!! KERNEL 7 TESTS NOT RUN: {why} !!!")


@needs_root
@pytest.mark.skipif(IN_VM, reason="already inside the VM")
def test_mounting_suites_on_kernel_7() -> None:
    if not KERNEL_VM.exists():
        not_run(f"{KERNEL_VM} is missing (it comes with the project's shared/ directory beside the clone)")
    pytest_script = Path(sys.executable).parent / "pytest"  # the venv's, so the installed package is tested
    for path in (sys.prefix, os.path.realpath(sys.executable)):
        if hidden_in_guest(path):
            pytest.fail(f"{path} is under /tmp or /run, which the VM replaces with a fresh tmpfs, and outside "
                        f"the clone {REPO}, which it keeps: make the venv inside the clone (set-up 2 does)")
    # the guest has no udev/systemd to load the loop driver that image layers use
    guests = [subprocess.Popen([str(KERNEL_VM), "--merge-stderr", "--", "sh", "-c", 'modprobe loop && exec "$@"', "sh",
                                str(pytest_script), "-q", "-rs", "-p", "no:cacheprovider", *suites],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for suites in GUESTS]
    outputs = [guest.communicate(timeout=2400)[0] for guest in guests]
    output = "\n".join(outputs)
    sys.stdout.write(output)  # shown with -s, and on failure
    for guest, out in zip(guests, outputs):
        if guest.returncode == 125:
            not_run("kernel-vm could not start the VM\n" + out[-2000:])
        assert guest.returncode == 0, out[-6000:]
        summary = [line for line in out.splitlines() if " passed" in line][-1]
        assert "failed" not in summary and "error" not in summary, out[-6000:]
    # every strategy ran: nothing was skipped for lack of a kernel feature
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert not [line for line in skipped if "lacks" in line or "only [" in line], skipped
    kernel = re.search(r"kernel (\d+\.\d+\S*)", output)
    for line in output.splitlines():  # the guest's counts join this run's
        if line.startswith(TALLY_PREFIX):
            count, what = line[len(TALLY_PREFIX):].split(maxsplit=1)
            tally(f"{what} [in the kernel-vm guest, {kernel.group(1) if kernel else 'kernel unknown'}]", int(count))
