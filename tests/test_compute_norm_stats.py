"""Normalisation statistics (eat.data.norm_stats and its command line tools/compute_norm_stats.py): streaming
statistics equal numpy over all frames; bad files are skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
import soundfile
import torch

from eat.audio.fbank import FrontendConfig, fbank, pad_or_crop
from eat.data.manifest import read_manifest, write_manifest
from eat.data.norm_stats import RunningStats, compute_stats

TOOL = Path(__file__).resolve().parents[1] / "tools" / "compute_norm_stats.py"


def test_running_stats_is_exact_for_offset_data():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(1e4, 0.5, size=rng.integers(1, 5000)).astype(np.float32) for _ in range(50)]
    stats = RunningStats()
    for c in chunks:
        stats.update(torch.from_numpy(c))
    stats.update(torch.zeros(0))
    everything = np.concatenate(chunks).astype(np.float64)
    assert stats.count == everything.size
    assert abs(stats.mean - everything.mean()) < 1e-9 * 1e4
    assert abs(stats.std - everything.std()) < 1e-9


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(1)
    waves, entries = [], []
    for i, n in enumerate([16000, 24000, 8000]):
        x = (0.2 * rng.standard_normal(n) + 0.05).astype(np.float32)
        soundfile.write(tmp_path / f"c{i}.wav", x, 16000, subtype="FLOAT")
        waves.append(torch.from_numpy(x))
        entries.append((f"c{i}.wav", n))
    (tmp_path / "broken.wav").write_bytes(rng.bytes(1000))
    entries.append(("broken.wav", 500))
    return write_manifest(tmp_path / "train.tsv", tmp_path, entries), waves


def reference(waves, target_length):
    frames = []
    for w in waves:
        fb = fbank(w - w.mean())
        frames.append((pad_or_crop(fb, target_length) if target_length else fb).double().numpy().ravel())
    values = np.concatenate(frames)
    return values.mean(), values.std(), values.size


def _tool(*args: str) -> subprocess.CompletedProcess:
    return procs.run([sys.executable, str(TOOL), *args], capture_output=True, text=True)


@pytest.mark.parametrize("target_length", [120, 0])
def test_statistics_match_numpy_over_all_frames(corpus, target_length):
    manifest, waves = corpus
    stats, skipped = compute_stats(read_manifest(manifest).paths(), FrontendConfig(), target_length, progress=False)
    mean, std, size = reference(waves, target_length)
    assert stats.count == size and len(skipped) == 1 and "broken.wav" in skipped[0]
    assert abs(stats.mean - mean) < 1e-9 and abs(stats.std - std) < 1e-9


def test_cli_reports_the_statistics_and_takes_a_subset(corpus):
    manifest, waves = corpus
    run = _tool(str(manifest), "--target-length", "120", "--json", "--quiet")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    mean, std, size = reference(waves, 120)
    assert out["clips"] == 3 and out["skipped"] == 1 and out["values"] == size
    assert abs(out["mean"] - mean) < 1e-9 and abs(out["std"] - std) < 1e-9
    assert "broken.wav" in run.stderr
    run = _tool(str(manifest), "--max-clips", "2", "--json", "--quiet", "--target-length", "0")
    out = json.loads(run.stdout)
    assert out["clips"] + out["skipped"] == 2


def test_cli_errors_are_one_line(tmp_path):
    missing = tmp_path / "nope.tsv"
    run = procs.run([sys.executable, str(TOOL), str(missing)], capture_output=True, text=True)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().startswith("error:") and str(missing) in run.stderr
    run = procs.run([sys.executable, str(TOOL), str(missing), "--preset", "nope"], capture_output=True, text=True)
    assert run.returncode != 0 and "preset" in run.stderr and "Traceback" not in run.stderr
