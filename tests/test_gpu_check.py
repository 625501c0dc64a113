"""tools/gpu_check.sh --dry-run: every part of the GPU-day script runs at tiny size on the CPU, so it cannot rot."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import procs
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gc"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    r = procs.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env=env, start_new_session=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["dry_run"] is True
    assert [(p["part"], p["status"]) for p in result["parts"]] == [("suite", 0), ("run", 0), ("bench", 0)]
    assert "preemption signal" in (out / "run_first.log").read_text()  # SIGTERM reached the ranks
    assert "resumed from" in (out / "run_second.log").read_text()
    assert result["bench_pretrain"]["clips_per_s"] > 0 and result["predict_memory"]["rows"]


def test_gpu_check_help_and_bad_option():
    script = str(ROOT / "tools" / "gpu_check.sh")
    r = procs.run(["bash", script, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--dry-run" in r.stdout and "15-min budget" in r.stdout
    r = procs.run(["bash", script, "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown option --bogus")
