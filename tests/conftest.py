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
