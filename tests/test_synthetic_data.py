import csv
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import procs
import pytest
import soundfile

from eat.data import synthetic as syn
from eat.data.manifest import read_esc50, read_manifest

ROOT = Path(__file__).resolve().parents[1]
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
    """Clean clips of class ``k`` (no overlapping event)."""
    return [syn.render_clip(np.random.default_rng([5, k, i]), [syn.class_spec(k)], duration, SR).astype(np.float64)
            for i in range(n)]


def test_up_and_down_sweeps_share_a_spectrum_but_not_a_direction():
    up, down, other = syn.class_spec(0), syn.class_spec(5), syn.class_spec(20)
    assert up.family == down.family == other.family == "sweep"
    assert (up.params["shape"], down.params["shape"], other.params["shape"]) == ("up", "down", "up")
    assert up.params["lo"] == down.params["lo"] != other.params["lo"]
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
    s_down, d_down = shape_and_direction(5)
    s_other, _ = shape_and_direction(20)
    band = (freqs > 100) & (freqs < 7000)
    same = np.sqrt(np.mean((s_up - s_down)[band] ** 2))
    different = np.sqrt(np.mean((s_up - s_other)[band] ** 2))
    assert same < 0.25 * different
    assert (d_up > 5).all() and (d_down < -5).all()  # centroid rises within every up clip, falls in down


def _band_stats(x):
    """Per-band mean and std over time of the log power (what the pooled log-mel baseline sees), with the
    clip's level removed."""
    log = np.log(_spectrogram(x) + 1e-10)
    log -= log.mean()
    return np.concatenate([log.mean(0), log.std(0)])


def test_members_of_a_family_share_band_statistics_other_families_do_not():
    """The premise of the labelled task: per-band statistics tell the family, hardly the member. The mean
    distance between members of a family is well below the mean distance to the nearest other family."""
    stats = np.array([np.mean([_band_stats(x) for x in _render(k, n=10)], 0) for k in range(20)])
    dist = np.abs(stats[:, None] - stats[None]).mean(-1)  # (20, 20)
    family = np.arange(20) % 5
    for fam in range(5):
        own = family == fam
        within = dist[np.ix_(own, own)].sum() / (own.sum() * (own.sum() - 1))
        nearest = min(dist[np.ix_(own, family == other)].mean() for other in range(5) if other != fam)
        assert within < 0.6 * nearest, (syn.FAMILIES[fam], within, nearest)


def _pitch_track(x, lo, hi):
    """Frequency of the strongest bin in [lo, hi] Hz per 10 ms frame, and the frame energy there."""
    p = _spectrogram(x)
    f = np.fft.rfftfreq(512, 1 / SR)
    band = (f >= lo) & (f <= hi)
    return f[band][p[:, band].argmax(1)], p[:, band].max(1)


def test_melody_members_play_the_same_notes_in_their_own_order():
    rising, falling = syn.class_spec(1), syn.class_spec(6)
    assert rising.params["steps"] == (0, 4, 7) and falling.params["steps"] == (7, 4, 0)
    f0 = rising.params["f0"]
    ups, downs = [], []
    for k, out in ((1, ups), (6, downs)):
        for x in _render(k, n=4):
            track, energy = _pitch_track(x, 0.9 * f0, 1.7 * f0)
            loud = energy > 0.1 * energy.max()
            steps = np.diff(np.log2(track))[loud[1:] & loud[:-1]]
            steps = steps[np.abs(steps) > 0.1]  # note changes: a third (0.33 oct) or a fourth/fifth
            out.append(np.mean(steps > 0))
    assert min(ups) > 0.7 and max(downs) < 0.3


def _onset_gaps(x):
    env = np.convolve(np.abs(x), np.ones(80) / 80, mode="same")[::80]  # 5 ms envelope
    above = env > 0.3 * env.max()
    onsets = np.flatnonzero(above[1:] & ~above[:-1]) * 80 / SR
    return np.diff(onsets)


def test_rhythm_members_differ_in_their_gaps_not_their_density():
    even, pairs = syn.class_spec(4), syn.class_spec(9)
    assert even.params["pattern"].count("x") == pairs.params["pattern"].count("x") == 4
    for x in _render(4, n=3, duration=3.0):
        gaps = _onset_gaps(x)
        assert np.median(gaps) == pytest.approx(0.22, abs=0.03)  # x.x.x.x.: every second 110 ms step
    for x in _render(9, n=3, duration=3.0):
        gaps = _onset_gaps(x)
        assert np.mean(np.abs(gaps - 0.11) < 0.03) > 0.35  # xx..xx..: half the gaps are one step


def test_pulse_hit_and_swell_are_time_reversed():
    """Hits rise abruptly and fade slowly, swells the other way: the skewness of the loudness changes
    (over 10 ms) is positive for hits and negative for swells."""

    def skew_of_changes(k):
        out = []
        for x in _render(k, n=4):
            env = np.sqrt(np.convolve(x**2, np.ones(160) / 160, mode="same")[::80])  # 5 ms hop
            d = env[2:] - env[:-2]
            out.append(np.mean(d**3) / np.mean(d**2) ** 1.5)
        return np.array(out)

    assert [syn.class_spec(k).params["shape"] for k in (2, 7, 12, 17)] == ["hit", "swell", "hits", "swells"]
    for k in (2, 12):
        assert (skew_of_changes(k) > 2).all()
    for k in (7, 17):
        assert (skew_of_changes(k) < -2).all()


def test_labelled_clips_overlap_another_family_half_the_time(monkeypatch):
    calls = []
    real = syn.render_clip

    def spy(rng, specs, duration, sr, rel_levels=None):
        calls.append(([s.family for s in specs], rel_levels))
        return real(rng, specs, duration, sr, rel_levels)

    monkeypatch.setattr(syn, "render_clip", spy)
    for j in range(40):
        syn.render_labelled(np.random.default_rng([0, j]), 3, 20, 0.5, SR)
    mixed = [c for c in calls if len(c[0]) == 2]
    assert len(calls) == 40 and 10 <= len(mixed) <= 30
    for families, levels in mixed:
        assert families[0] == "am" and families[1] != "am" and levels[0] == 1.0
        assert 10 ** (-14 / 20) <= levels[1] <= 10 ** (-6 / 20)


@pytest.mark.parametrize("k", [3, 8, 18])
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
    r = procs.run([sys.executable, tool, str(tmp_path / "o"), "--num-clips", "2", "--duration", "0.2",
                        "--num-classes", "2", "--clips-per-class", "5", "--labelled-duration", "0.2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(read_manifest(tmp_path / "o/unlabelled/train.tsv")) == 2
    assert len(read_esc50(tmp_path / "o/esc50")) == 10
    bad = procs.run([sys.executable, tool, str(tmp_path / "p"), "--num-clips", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip() == "error: --num-clips must be positive, got 0"
