import csv
import importlib.util
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from eat.data.manifest import read_esc50, read_manifest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_synthetic_data", ROOT / "tools" / "make_synthetic_data.py")
syn = sys.modules.setdefault("make_synthetic_data", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(syn)
SR = 16000


def test_esc50_like_files_csv_and_fold_balance(tmp_path):
    root = syn.make_esc50_like(tmp_path / "esc", num_classes=10, clips_per_class=5, duration=0.5, seed=3)
    with open(root / "meta" / "esc50.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    assert len(rows) == 50 and [r["filename"] for r in rows] == sorted(r["filename"] for r in rows)
    assert sorted(p.name for p in (root / "audio").iterdir()) == sorted(r["filename"] for r in rows)
    for r in rows:
        assert re.fullmatch(rf"{r['fold']}-{r['src_file']}-A-{r['target']}\.wav", r["filename"])
        assert r["category"] == syn.class_spec(int(r["target"])).name
    # every class appears exactly once in every fold
    assert Counter((r["fold"], r["target"]) for r in rows) == {(str(f), str(t)): 1 for f in range(1, 6) for t in range(10)}
    assert len({r["category"] for r in rows}) == 10
    info = soundfile.info(str(root / "audio" / rows[0]["filename"]))
    assert info.samplerate == SR and info.frames == SR // 2 and info.channels == 1
    ls = read_esc50(root, folds=[2])
    assert len(ls) == 10 and sorted(it.labels[0] for it in ls.items) == list(range(10))


def test_deterministic_under_seed(tmp_path):
    a = syn.make_esc50_like(tmp_path / "a", num_classes=3, clips_per_class=2, duration=0.3, seed=7)
    b = syn.make_esc50_like(tmp_path / "b", num_classes=3, clips_per_class=2, duration=0.3, seed=7)
    c = syn.make_esc50_like(tmp_path / "c", num_classes=3, clips_per_class=2, duration=0.3, seed=8)
    names = sorted(p.name for p in (a / "audio").iterdir())
    for name in names:
        assert (a / "audio" / name).read_bytes() == (b / "audio" / name).read_bytes()
    assert any((a / "audio" / n).read_bytes() != (c / "audio" / n).read_bytes() for n in names)
    assert (a / "meta/esc50.csv").read_text() == (c / "meta/esc50.csv").read_text()


def test_unlabelled_corpus_manifest_matches_files(tmp_path):
    man = syn.make_unlabelled_corpus(tmp_path / "u", num_clips=6, duration=0.4, seed=1)
    m = read_manifest(man)
    assert m.root == (tmp_path / "u").resolve() and len(m) == 6
    for path, n in zip(m.paths(), m.num_samples(), strict=True):
        assert soundfile.info(str(path)).frames == n == int(0.4 * SR)
    again = syn.make_unlabelled_corpus(tmp_path / "v", num_clips=6, duration=0.4, seed=1)
    assert [p.read_bytes() for p in m.paths()] == [p.read_bytes() for p in read_manifest(again).paths()]


def _spectrogram(x):
    frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::160] * np.hanning(512)
    return np.abs(np.fft.rfft(frames, axis=-1)) ** 2


def _render(k, n=12, duration=2.0):
    return [syn.render_clip(np.random.default_rng([5, k, i]), [syn.class_spec(k)], duration, SR).astype(np.float64)
            for i in range(n)]


def test_up_and_down_chirps_share_a_spectrum_but_not_a_direction():
    up, down, other = syn.class_spec(0), syn.class_spec(8), syn.class_spec(16)
    assert up.family == down.family == "chirp" and up.params["lo"] == down.params["lo"] and up.params["up"]
    assert not down.params["up"] and other.params["lo"] != up.params["lo"]
    freqs = np.fft.rfftfreq(512, 1 / SR)

    def shape_and_direction(k):
        shapes, dirs = [], []
        for x in _render(k):
            p = _spectrogram(x)
            log = np.log(p.mean(0) + 1e-12)
            shapes.append(log - log.mean())  # spectral shape; the level is random per clip
            centroid = (p * freqs).sum(1) / p.sum(1)
            w = np.minimum(p.sum(1)[1:], p.sum(1)[:-1])
            dirs.append((np.diff(centroid) * w).sum() / w.sum())
        return np.mean(shapes, 0), np.array(dirs)

    s_up, d_up = shape_and_direction(0)
    s_down, d_down = shape_and_direction(8)
    s_other, _ = shape_and_direction(16)
    band = (freqs > 100) & (freqs < 7000)
    same = np.sqrt(np.mean((s_up - s_down)[band] ** 2))
    different = np.sqrt(np.mean((s_up - s_other)[band] ** 2))
    assert same < 0.25 * different
    assert (d_up > 5).all() and (d_down < -5).all()  # centroid rises within every up clip, falls in down


@pytest.mark.parametrize("k", [2, 10, 18])
def test_amplitude_modulation_rate_is_the_class(k):
    rate = syn.class_spec(k).params["rate"]
    for x in _render(k, n=4, duration=4.0):
        env = np.convolve(np.abs(x), np.ones(80) / 80, mode="same")[::40]  # 400 Hz envelope
        spec = np.abs(np.fft.rfft(env - env.mean()))
        f = np.fft.rfftfreq(env.size, 40 / SR)
        peak = f[1:][np.argmax(spec[1:][f[1:] < 40])]
        assert abs(peak - rate) < 0.1 * rate + 0.3


def test_level_is_random_and_bounded():
    levels = {k: [20 * np.log10(np.sqrt(np.mean(x**2))) for x in _render(k, n=8, duration=1.0)] for k in (1, 3, 5)}
    every = np.concatenate(list(levels.values()))
    assert every.min() > -48.5 and every.max() < -27.5 and every.std() > 3
    for x in _render(1, n=4, duration=1.0):
        assert np.abs(x).max() < 1.0


def test_cli_writes_both_sets_and_rejects_bad_sizes(tmp_path):
    tool = str(ROOT / "tools" / "make_synthetic_data.py")
    r = subprocess.run([sys.executable, tool, str(tmp_path / "o"), "--num-clips", "2", "--duration", "0.2",
                        "--num-classes", "2", "--clips-per-class", "5", "--labelled-duration", "0.2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(read_manifest(tmp_path / "o/unlabelled/train.tsv")) == 2
    assert len(read_esc50(tmp_path / "o/esc50")) == 10
    bad = subprocess.run([sys.executable, tool, str(tmp_path / "p"), "--num-clips", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip() == "error: --num-clips must be positive, got 0"
