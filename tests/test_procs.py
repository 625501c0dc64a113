"""The suite's hang handling itself (tests/procs.py): a run that never gets where a drill waits for it is
reported with the stacks of all its processes and killed, grandchildren included; nothing is left behind."""

from __future__ import annotations

import subprocess
import sys

import procs
import pytest

HANG = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)"])
print(child.pid, flush=True)

def stuck_in_here():
    while True:
        time.sleep(0.1)

stuck_in_here()
"""


def test_a_hung_run_is_reported_with_its_stacks_and_killed_whole():
    proc = subprocess.Popen([sys.executable, "-c", HANG], stdout=subprocess.PIPE, text=True, start_new_session=True)
    grandchild = int(proc.stdout.readline())
    with pytest.raises(AssertionError) as failure:  # the condition never holds: a planted hang
        procs.wait_until(lambda: False, [proc], "a step that never comes", timeout=2)
    report = str(failure.value)
    assert "a step that never comes: not within 2 s" in report
    assert f"pid {proc.pid}" in report and f"pid {grandchild}" in report, report
    assert "stuck_in_here" in report, report  # the Python stack of the hung process (py-spy)
    assert proc.poll() is not None and not procs.alive(grandchild)


def test_a_run_that_ends_early_fails_at_once_with_its_output():
    proc = subprocess.Popen([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    with pytest.raises(AssertionError, match=r"status 3\) boom"):
        procs.wait_until(lambda: False, [proc], "step 3", ended=lambda p: p.stdout.read().strip())


def test_leftovers_are_the_processes_carrying_the_marker():
    """Found by the marker in their environment, whatever their parent or session; a process started
    without the marker is not the suite's."""
    import os

    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True,
                               env={k: v for k, v in os.environ.items() if k != procs.MARK})
    try:
        procs.wait_until(lambda: ours.pid in procs.leftovers(), [ours], "the marked process's start", timeout=60)
        assert foreign.pid not in procs.leftovers()
    finally:
        procs.kill([ours.pid, foreign.pid])
        ours.wait()
        foreign.wait()
    assert ours.pid not in procs.leftovers()
