"""Test-session settings: one torch thread per process, here and in every process a test starts.

The tests run tiny models, where more threads only contend. On a 2-core machine that something else is
also using, two OpenMP threads per process made single tests 20-40x slower (the pretraining-loss test
95 s instead of 2.4 s, the 5-fold ESC-50 recipe test ~400 s instead of ~18 s). An ``OMP_NUM_THREADS``
set before pytest starts is kept.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the tools, recipes and torchrun a test launches

import torch  # noqa: E402  (after the environment is set, so torch's own start-up sees it)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import time  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402
from procs import MARK, kill, leftovers, stacks  # noqa: E402

# Every process this session starts carries the marker, so one that escapes its parent is still found.
os.environ[MARK] = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
LEFTOVER_GRACE_S = 60.0  # orphaned loader workers notice their parent's death within ~5 s (PyTorch's check)


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """A test ends with no process of its own still alive: whatever it started has exited, or it fails
    with their stacks (they are then killed, so one test's leftovers never disturb the next)."""
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    left = leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = leftovers()
    if left:
        report = stacks(left)
        kill(left)
        pytest.fail(f"the test left {len(left)} process(es) alive (now killed):\n{report}", pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    left = leftovers()
    if left:  # e.g. a module-scoped fixture's process: kill it, and say so
        kill(left)
        print(f"\nconftest: killed {len(left)} process(es) left alive by the suite: {left}")
