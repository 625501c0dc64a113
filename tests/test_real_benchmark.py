"""Real-audio benchmark builder: the parts that need no Debian package (MIDI encoding, variation, splits)
and its one-line errors when a package is missing. The full build is a tool run (docs/benchmarks.md)."""

from __future__ import annotations

import numpy as np
import procs
import pytest

from eat.apps import real_benchmark as rb


def _parse_midi(data: bytes) -> list[tuple[int, bytes]]:
    """(absolute tick, 3-byte message) of a format-0 file with channel messages only (test reader)."""
    assert data[:4] == b"MThd" and data[8:14] == bytes([0, 0, 0, 1, 1, 244])  # format 0, 1 track, 500 ticks/q
    assert data[14:18] == b"MTrk"
    length = int.from_bytes(data[18:22], "big")
    track, pos, now, out = data[22 : 22 + length], 0, 0, []
    assert len(track) == length
    while pos < len(track):
        delta = 0
        while True:
            b = track[pos]
            pos += 1
            delta = (delta << 7) | (b & 0x7F)
            if not b & 0x80:
                break
        now += delta
        if track[pos] == 0xFF:  # end of track
            assert track[pos : pos + 3] == b"\xff\x2f\x00" and pos + 3 == len(track)
            break
        size = 2 if track[pos] & 0xF0 == 0xC0 else 3
        out.append((now, track[pos : pos + size]))
        pos += size
    return out


def test_varlen_quantities():
    assert rb._varlen(0) == b"\x00" and rb._varlen(0x7F) == b"\x7f"
    assert rb._varlen(0x80) == b"\x81\x00" and rb._varlen(0x3FFF) == b"\xff\x7f" and rb._varlen(0x200000) == b"\x81\x80\x80\x00"


def test_midi_file_round_trips_events_in_time_order_with_millisecond_ticks():
    events = [(1.5, bytes([0x80, 60, 0])), (0.0, bytes([0xC0, 40])), (0.25, bytes([0x90, 60, 100])),
              (1.5, bytes([0x90, 64, 90])), (200.0, bytes([0x89, 36, 0]))]
    got = _parse_midi(rb.midi_file(events))
    assert got == [(0, bytes([0xC0, 40])), (250, bytes([0x90, 60, 100])), (1500, bytes([0x80, 60, 0])),
                   (1500, bytes([0x90, 64, 90])), (200000, bytes([0x89, 36, 0]))]  # note-off first at a tie


def test_melody_and_drum_events_stay_inside_their_segment():
    rng = np.random.default_rng(0)
    for _ in range(50):
        ev = rb.melody_events(rng, 40, 55, 88, start=10.0, length=2.0)
        times = [t for t, _ in ev]
        assert min(times) >= 10.0 and max(times) <= 12.0
        notes = [m[1] for _, m in ev if m[0] & 0xF0 == 0x90]
        assert notes and all(55 <= n <= 88 for n in notes)
        assert sum(m[0] & 0xF0 == 0x90 for _, m in ev) == sum(m[0] & 0xF0 == 0x80 for _, m in ev)
        ev = rb.drum_events(rng, [36, 38], start=3.0, length=2.0)
        assert all(3.0 <= t <= 5.0 for t, _ in ev) and {m[1] for _, m in ev} == {36, 38}
        assert all(m[0] in (0x99, 0x89) for _, m in ev)  # channel 10


def test_speed_changes_duration_and_frequency_together():
    sr = rb.SAMPLE_RATE
    t = np.arange(sr) / sr
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    y = rb.speed(x, 1.25)
    assert len(y) == round(sr / 1.25)
    peak = np.argmax(np.abs(np.fft.rfft(y))) * sr / len(y)
    assert abs(peak - 550) < 3


def test_coloured_noise_has_unit_rms_and_the_right_spectral_slope():
    rng = np.random.default_rng(0)
    for colour, slope in (("white", 0.0), ("pink", -1.0), ("brown", -2.0)):
        x = rb.coloured_noise(rng, 1 << 16, colour)
        assert abs(np.sqrt(np.mean(x**2)) - 1) < 1e-4
        p = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x))
        band = (f > 0.001) & (f < 0.4)
        fit = np.polyfit(np.log(f[band]), np.log(p[band]), 1)[0]
        assert abs(fit - slope) < 0.15, (colour, fit)


def test_vary_gives_fixed_length_clips_at_the_documented_levels():
    rng = np.random.default_rng(1)
    short = np.hanning(4000).astype(np.float32)
    long = np.random.default_rng(2).standard_normal(50000).astype(np.float32)
    peaks = []
    for src in (short, long) * 40:
        clip = rb.vary(src, rng, 2.0, 0.12)
        assert clip.shape == (32000,) and clip.dtype == np.float32 and np.abs(clip).max() <= 1
        peaks.append(20 * np.log10(np.abs(clip).max()))
    assert min(peaks) > -26 and max(peaks) < 0  # -24..-3 dBFS plus at most a little noise on top
    assert max(peaks) - min(peaks) > 10  # the level really varies


def test_spread_and_split_definitions():
    assert rb._spread(10, 3) == [4, 3, 3] and sum(rb._spread(120, 7)) == 120
    speakers = {}
    for v in rb.VOICES:
        speakers.setdefault(v.speaker, set()).add(v.test)
    assert all(len(s) == 1 for s in speakers.values()), "a speaker is in both splits"
    for lang in rb.LANGUAGES:
        split = {v.test for v in rb.VOICES if v.language == lang}
        assert split == {False, True}, f"{lang} needs training and held-out voices"
    assert sum(sf.test for sf in rb.SOUNDFONTS) == 1
    assert all(w.isascii() and w.isalpha() for words in rb.WORDS.values() for w in words)


def test_missing_program_is_a_one_line_error_naming_it(monkeypatch):
    monkeypatch.setattr(rb.shutil, "which", lambda prog: None if prog == "fluidsynth" else "/usr/bin/" + prog)
    with pytest.raises(rb.BenchmarkError, match="'fluidsynth' not found; install: apt-get install -y festival") as e:
        rb.check_requirements()
    assert "\n" not in str(e.value)


def test_tool_refuses_a_non_empty_output_folder(tmp_path):
    import sys
    from pathlib import Path

    (tmp_path / "x").write_text("keep me")
    tool = Path(__file__).resolve().parents[1] / "tools" / "make_real_benchmark.py"
    r = procs.run([sys.executable, str(tool), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip().startswith("error:") and "\n" not in r.stderr.strip()
    assert (tmp_path / "x").read_text() == "keep me"
    r = procs.run([sys.executable, str(tool), "--packages"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == list(rb.PACKAGES)


def test_labelled_drum_clips_hold_the_class_loudest_and_sometimes_a_quiet_other_drum():
    rng = np.random.default_rng(3)
    with_other = 0
    for _ in range(200):
        ev = rb.labelled_drum_events(rng, 42, 0.0, 2.0)
        ons = [(m[1], m[2]) for _, m in ev if m[0] == 0x99]
        main = [v for k, v in ons if k == 42]
        other = [v for k, v in ons if k != 42]
        assert 1 <= len(main) <= 3 and all(70 <= v <= 127 for v in main)
        assert len(other) <= 1 and all(20 <= v <= 50 for v in other)
        with_other += bool(other)
    assert 70 < with_other < 130


def test_streams_are_independent_per_part_and_seeded():
    a = rb.stream(0, "language", "fest_kal").random(3)
    assert np.array_equal(a, rb.stream(0, "language", "fest_kal").random(3))
    assert not np.array_equal(a, rb.stream(1, "language", "fest_kal").random(3))
    assert not np.array_equal(a, rb.stream(0, "keywords", "fest_kal").random(3))
