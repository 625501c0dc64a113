"""Polyphonic probe tasks (``eat.eval.polyphonic``, ``tools/probe_protocol.py --polyphonic``): mixtures of 2-3
clips of different classes, multi-hot labels, mAP."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
import soundfile
import torch

from eat.audio.fbank import FrontendConfig
from eat.eval.polyphonic import make_mixtures, mix_clips
from eat.export import save_export
from eat.features import FeatureExtractor
from eat.model.eat import EATModel, eat_config

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
FREQS = (250.0, 700.0, 1500.0, 3100.0)  # one tone per class


def tone(freq: float, seconds: float, amp: float, seed: int) -> torch.Tensor:
    t = np.arange(int(seconds * SR)) / SR
    noise = 0.001 * np.random.default_rng(seed).standard_normal(len(t))
    return torch.from_numpy(amp * np.sin(2 * np.pi * freq * t) + noise).float()


def test_mix_clips_is_the_equal_rms_sum_padded_and_peak_limited():
    a, b = torch.tensor([3.0, -3.0, 3.0, -3.0]), torch.tensor([0.5, 0.5])
    got = mix_clips([a, b])
    want = torch.tensor([0.1 + 0.1, -0.1 + 0.1, 0.1, -0.1])  # each source at RMS 0.1
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    loud = mix_clips([torch.ones(10)] * 12)  # 12 x 0.1 = 1.2 > 1: scaled to peak 1
    assert float(loud.abs().max()) == pytest.approx(1.0)


def test_mixtures_hold_exactly_the_labelled_classes_and_repeat_with_the_seed():
    waves, labels = [], []
    for c, f in enumerate(FREQS):
        for k in range(3):  # different loudness per clip: the equal-RMS mix evens it out
            waves.append(tone(f, 0.5 + 0.1 * k, amp=10.0 ** -k, seed=10 * c + k))
            labels.append(c)
    mixed, targets = make_mixtures(waves, torch.tensor(labels), 4, 40, seed=7)
    again, targets2 = make_mixtures(waves, torch.tensor(labels), 4, 40, seed=7)
    assert torch.equal(targets, targets2) and all(torch.equal(a, b) for a, b in zip(mixed, again, strict=True))
    assert set(targets.sum(1).tolist()) == {2.0, 3.0}
    for wave, target in zip(mixed, targets, strict=True):
        spectrum = np.abs(np.fft.rfft(wave[: SR // 2].numpy()))  # the first 0.5 s: every source sounds
        bins = np.fft.rfftfreq(SR // 2, 1 / SR)
        energy = [spectrum[np.argmin(np.abs(bins - f))] for f in FREQS]
        heard = [e > 0.2 * max(energy) for e in energy]
        assert heard == target.bool().tolist()
    with pytest.raises(ValueError, match="classes"):
        make_mixtures(waves[:3], torch.tensor(labels[:3]), 4, 5)  # one class only


def test_probe_protocol_tool_adds_the_polyphonic_task(tmp_path):
    torch.manual_seed(0)
    fx = FeatureExtractor(EATModel(eat_config("tiny")).student, FrontendConfig(target_length=128))
    save_export(tmp_path / "enc", fx.encoder.cfg, fx.encoder.state_dict(), fx.frontend)
    task = tmp_path / "tones"
    (task / "wav").mkdir(parents=True)
    for split, n in (("train", 24), ("test", 12)):
        rows = []
        for i in range(n):
            c = i % len(FREQS)
            soundfile.write(task / "wav" / f"{split}{i}.wav", tone(FREQS[c], 0.6, 0.3, seed=i).numpy(), SR)
            rows.append(f"wav/{split}{i}.wav,c{c}")
        (task / f"{split}.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "res.json"
    cmd = [sys.executable, str(ROOT / "tools" / "probe_protocol.py"), "--encoder", f"pre={tmp_path / 'enc'}",
           "--task-dir", str(task), "--layers=-1", "--pooling", "mean,meanstd", "--polyphonic", "--json", str(out),
           "--weight-decays", "1e-3"]
    res = procs.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "poly-tones: 4 classes, 24 train / 12 test mixtures of 2-3 clips, test mAP" in res.stdout
    data = json.loads(out.read_text())["tasks"]
    assert data["tones"]["metric"] == "accuracy" and data["poly-tones"]["metric"] == "mAP"
    poly = {(r["source"], r["pooling"]): r["score"] for r in data["poly-tones"]["rows"]}
    assert set(poly) == {("pre", "mean"), ("pre", "meanstd"), ("log-mel", "mean"), ("log-mel", "meanstd")}
    assert poly[("log-mel", "mean")] > 0.9  # the tones' mel bins tell the mixed classes apart
