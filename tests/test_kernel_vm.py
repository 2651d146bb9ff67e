"""Runs the mounting tests again inside Debian's 7.2 kernel, where all three strategies exist."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IN_VM, REPO, TALLY_PREFIX, needs_root, tally

KERNEL_VM = REPO.parent / "shared" / "tools" / "kernel-vm"
SUITES = ["tests/test_e2e.py", "tests/test_propagation.py", "tests/test_contain.py", "tests/test_same_tree.py", "tests/test_executor.py", "tests/test_images.py"]


@needs_root
@pytest.mark.skipif(IN_VM, reason="already inside the VM")
def test_mounting_suites_on_kernel_7() -> None:
    if not KERNEL_VM.exists():
        pytest.skip(f"!!! KERNEL 7 TESTS NOT RUN: {KERNEL_VM} is missing !!!")
    pytest_script = Path(sys.executable).parent / "pytest"  # the venv's, so the installed package is tested
    if str(pytest_script).startswith("/tmp/"):
        pytest.fail("the test venv is under /tmp, which the VM replaces with a fresh tmpfs: put it elsewhere")
    # the guest has no udev/systemd to load the loop driver that image layers use
    cmd = [str(KERNEL_VM), "--merge-stderr", "--", "sh", "-c", 'modprobe loop && exec "$@"', "sh",
           str(pytest_script), "-q", "-rs", "-p", "no:cacheprovider", *SUITES]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=2400)
    output = proc.stdout + proc.stderr
    sys.stdout.write(output)  # shown with -s, and on failure
    if proc.returncode == 125:
        pytest.skip("!!! KERNEL 7 TESTS NOT RUN: kernel-vm could not start the VM !!!\n" + output[-2000:])
    assert proc.returncode == 0, output[-6000:]
    summary = [line for line in output.splitlines() if " passed" in line][-1]
    assert "failed" not in summary and "error" not in summary, output[-6000:]
    # every strategy ran: nothing was skipped for lack of a kernel feature
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert not [line for line in skipped if "lacks" in line or "only [" in line], skipped
    kernel = re.search(r"kernel (\d+\.\d+\S*)", output)
    for line in output.splitlines():  # the guest's counts join this run's
        if line.startswith(TALLY_PREFIX):
            count, what = line[len(TALLY_PREFIX):].split(maxsplit=1)
            tally(f"{what} [in the kernel-vm guest, {kernel.group(1) if kernel else 'kernel unknown'}]", int(count))
