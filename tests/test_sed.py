"""Sound event detection: label->frame alignment, the frame head, seamless windowed inference, median
filtering, the metric wrapper against sed_scores_eval / sed_eval, bad strong-label rows, export."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from eat.audio.fbank import FrontendConfig, waveform_to_input
from eat.audio.stream import AudioSource, plan_windows, stream_column_logits, window_fbank
from eat.data.manifest import ManifestError
from eat.data.strong_labels import (
    Event,
    active_frames,
    events_in_window,
    frame_targets,
    read_strong_tsv,
    read_weak_tsv,
    window_starts,
)
from eat.detect import PostProcess, SoundEventDetector, detect_file, load_detector
from eat.eval.sed import filter_frames, median_filter, scores_to_events
from eat.export import ExportError, load_classifier, save_export
from eat.model.sed import SEDConfig, SEDModel, column_geometry, interpolate_columns, sed_head_spec
from eat.model.vit import EncoderConfig

FIXTURES = Path(__file__).parent / "fixtures" / "sed"
HOPS = ["0.001", "0.01", "0.02", "0.025", "0.03", "0.04", "0.05", "0.064", "0.07", "0.08", "0.1", "0.16", "0.2",
        "0.25", "0.3", "0.37", "0.5", "1"]


# ---------------------------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("hop", HOPS)
@pytest.mark.parametrize("on, off", [("0.37", "0.91"), ("0.29", "0.57"), ("1.13", "2.07"), ("0.35", "0.7")])
def test_event_lands_on_exactly_the_overlapping_frames(hop, on, off):
    """Frame j ([j h, (j+1) h)) is active iff it overlaps the event, checked in exact rational arithmetic.
    (Float seconds fail this: floor(0.29 / 0.01) = 28, ceil(0.7 / 0.025) = 29.)"""
    on, off, h = Fraction(on), Fraction(off), Fraction(hop)
    n = int(Fraction(3) / h) + 2
    want = [j for j in range(n) if j * h < off and (j + 1) * h > on]
    y = frame_targets([Event(float(on), float(off), "b")], {"a": 0, "b": 1}, n, float(h))
    assert torch.nonzero(y[:, 1]).flatten().tolist() == want
    assert y[:, 0].sum() == 0
    assert active_frames(float(on), float(off), float(h)) == (want[0], want[-1] + 1)


def test_window_cut_keeps_labels_aligned():
    """An event cut by a window lands on the same absolute frames as in the whole file."""
    events = [Event(0.37, 0.91, "x"), Event(1.9, 2.33, "x")]
    hop, idx = 0.04, {"x": 0}
    whole = frame_targets(events, idx, 100, hop)
    for start in (0.0, 0.4, 0.8, 1.2, 2.0):  # window starts on the frame grid
        first = round(start / hop)
        win = frame_targets(events_in_window(events, start, start + 1.6), idx, 40, hop)
        assert torch.equal(win, whole[first : first + 40])
        assert torch.equal(frame_targets(events, idx, 40, hop, start=start), win)
    assert window_starts(10.0, 4.0, 3.0) == [0.0, 3.0, 6.0]
    assert window_starts(3.0, 4.0, 3.0) == [0.0]
    assert window_starts(10.5, 4.0, 3.0) == [0.0, 3.0, 6.0, 6.5]


def test_interpolation_reproduces_a_linear_function_of_time():
    enc = EncoderConfig(embed_dim=32, depth=1, num_heads=2, num_mel_bins=32, target_length=64)
    col_hop, c0 = column_geometry(enc, 16000, 10.0, 25.0)
    assert (col_hop, c0) == (0.16, 0.0875)  # 16 frames of 10 ms; frames 0..15 read samples [0, 2800)
    t = 12
    centres = c0 + col_hop * torch.arange(t, dtype=torch.float64)
    for hop in (0.01, 0.04, 0.05, 0.16, 0.3):
        n = int(t * col_hop / hop)
        out = interpolate_columns(centres[:, None].float(), n, hop, col_hop, c0)[:, 0].double()
        want = ((torch.arange(n, dtype=torch.float64) + 0.5) * hop).clamp(centres[0], centres[-1])
        assert torch.allclose(out, want, atol=1e-5)


# ---------------------------------------------------------------------------------------------- strong-label tables


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_overlapping_events_of_one_class_are_merged_for_the_metrics():
    from eat.data.strong_labels import StrongLabels, merge_events

    ev = [Event(1.8, 2.7, "v"), Event(2.1, 3.3, "v"), Event(3.3, 3.5, "v"), Event(2.0, 2.2, "d"), Event(4.0, 4.5, "v")]
    assert merge_events(ev) == [Event(1.8, 3.5, "v"), Event(2.0, 2.2, "d"), Event(4.0, 4.5, "v")]
    gt = StrongLabels({"a.wav": ev}, ["d", "v"]).ground_truth()["a.wav"]
    assert gt == [(1.8, 3.5, "v"), (2.0, 2.2, "d"), (4.0, 4.5, "v")]
    idx = {"d": 0, "v": 1}  # frame targets: the same union, merged or not
    assert torch.equal(frame_targets(ev, idx, 120, 0.04), frame_targets(merge_events(ev), idx, 120, 0.04))


def test_bad_strong_rows_error_or_skip(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "a.wav", np.zeros(16000 * 2, dtype=np.float32), 16000)  # 2 s
    soundfile.write(audio / "b.wav", np.zeros(16000, dtype=np.float32), 16000)
    rows = {
        "a.wav\t0.5\t0.3\tdog": "need 0 <= onset < offset",
        "a.wav\t1.5\t2.6\tdog": "reaches past the end of the file",
        "a.wav\t0.1\t0.4\tcat": "unknown class 'cat'",
        "missing.wav\t0.1\t0.4\tdog": "audio file unusable",
        "a.wav\tx\t0.4\tdog": "are not numbers",
    }
    good = "filename\tonset\toffset\tevent_label\na.wav\t0.2\t0.9\tdog\nb.wav\t\t\t\na.wav\t1.0\t2.03\tbell\n"
    for i, (row, reason) in enumerate(rows.items()):
        path = _write(tmp_path / f"t{i}.tsv", good + row + "\n")
        with pytest.raises(ManifestError, match=f"t{i}.tsv:5: .*{reason}"):
            read_strong_tsv(path, ["dog", "bell"], audio, on_bad="error")
    path = _write(tmp_path / "all.tsv", good + "\n".join(rows) + "\n")
    labels = read_strong_tsv(path, ["dog", "bell"], audio, on_bad="skip")
    assert len(labels.skipped) == len(rows)
    assert labels.events["b.wav"] == []  # a file without events
    assert labels.events["a.wav"] == [Event(0.2, 0.9, "dog"), Event(1.0, 2.0, "bell")]  # offset clipped to 2 s
    assert labels.durations == {"a.wav": 2.0, "b.wav": 1.0}
    with pytest.raises(ManifestError, match="header must name"):
        read_strong_tsv(_write(tmp_path / "h.tsv", "file\ton\toff\tlabel\n"))
    aset = _write(tmp_path / "as.tsv", "segment_id\tstart_time_seconds\tend_time_seconds\tlabel\nY1\t0.0\t1.0\t/m/01\n")
    assert read_strong_tsv(aset).class_names == ["/m/01"]
    weak = _write(tmp_path / "w.tsv", "filename\tevent_labels\nx.wav\tdog,bell\ny.wav\tcat\n")
    table, skipped = read_weak_tsv(weak, ["dog", "bell"])
    assert table == {"x.wav": ["dog", "bell"]} and len(skipped) == 1


# ---------------------------------------------------------------------------------------------- post-processing


def test_median_filter_matches_a_plain_running_median():
    rng = np.random.default_rng(0)
    x = rng.random((57, 3)).astype(np.float32)
    ks = [1, 5, 9]
    out = median_filter(x, ks)
    for c, k in enumerate(ks):
        pad = np.concatenate([np.full(k // 2, x[0, c]), x[:, c], np.full(k // 2, x[-1, c])])
        want = np.array([np.median(pad[j : j + k]) for j in range(len(x))])
        np.testing.assert_array_equal(out[:, c], want.astype(np.float32))
    assert filter_frames([0.0, 0.2, 0.45], 0.04, 3) == [1, 5, 11]
    with pytest.raises(ValueError, match="odd"):
        median_filter(x, [2, 3, 3])


def test_events_from_scores_have_exact_frame_boundaries():
    s = np.zeros((30, 2))
    s[7:19, 0] = 0.9
    s[25:, 1] = 0.6
    ev = scores_to_events(s, 0.04, ["a", "b"], [0.5, 0.7])
    assert ev == [(0.28, 0.76, "a", 0.9)]
    assert scores_to_events(s, 0.04, ["a", "b"], 0.5)[-1] == (1.0, 1.2, "b", 0.6)


# ---------------------------------------------------------------------------------------------- metrics


def test_metric_wrapper_matches_the_libraries_on_stored_fixtures():
    sse = pytest.importorskip("sed_scores_eval")
    from eat.eval.sed import COLLAR, COLLAR_RATE, PSDS1, PSDS2, sed_metrics

    exp = json.loads((FIXTURES / "expected.json").read_text())
    classes, hop = exp["classes"], exp["hop"]
    scores = {f"clip{k}.wav": np.loadtxt(FIXTURES / "scores" / f"clip{k}.tsv", skiprows=1)[:, 2:] for k in range(4)}
    gt = read_strong_tsv(FIXTURES / "ground_truth.tsv", classes).ground_truth()
    dur = {f: 10.0 for f in scores}
    ours = sed_metrics(scores, gt, dur, hop, classes, exp["threshold"])
    for k, v in exp["metrics"].items():  # stored numbers: a changed library or wrapper shows here
        assert ours[k] == pytest.approx(v, abs=1e-9), k
    # the library on its own readers of the same files
    lib_scores = {f"clip{k}": sse.io.read_sed_scores(FIXTURES / "scores" / f"clip{k}.tsv") for k in range(4)}
    lib_gt = sse.io.read_ground_truth_events(FIXTURES / "ground_truth.tsv")
    lib_gt.update({f: [] for f in lib_scores if f not in lib_gt})  # the library names files without extension
    lib_dur = {f: 10.0 for f in lib_scores}
    assert ours["psds1"] == pytest.approx(sse.intersection_based.psds(lib_scores, lib_gt, lib_dur, **PSDS1)[0])
    assert ours["psds2"] == pytest.approx(sse.intersection_based.psds(lib_scores, lib_gt, lib_dur, **PSDS2)[0])
    # F1 against sed_eval itself (sed_scores_eval's reference functions run the sed_eval package)
    seg = sse.segment_based.reference.metrics(lib_scores, str(FIXTURES / "ground_truth.tsv"), exp["threshold"],
                                              segment_length=1.0)
    assert ours["segment_f1"] == pytest.approx(seg.results_class_wise_average_metrics()["f_measure"]["f_measure"])
    ev = sse.collar_based.reference.metrics(lib_scores, str(FIXTURES / "ground_truth.tsv"), exp["threshold"],
                                            collar=COLLAR, offset_collar_rate=COLLAR_RATE)
    assert ours["event_f1"] == pytest.approx(ev.results_class_wise_average_metrics()["f_measure"]["f_measure"])


# ---------------------------------------------------------------------------------------------- model, stitching


def _tiny(target_length=64, gru=0, hop=0.04, classes=3):
    enc = EncoderConfig(embed_dim=32, depth=2, num_heads=2, num_mel_bins=32, target_length=target_length)
    torch.manual_seed(0)
    return SEDModel(SEDConfig(num_classes=classes, hop=hop, gru_hidden=gru), enc).eval()


def _frontend(target_length=64):
    return FrontendConfig(num_mel_bins=32, target_length=target_length, norm_mean=-4.0, norm_std=4.0)


def _wav(path: Path, seconds: float, seed: int = 0, sr: int = 16000) -> Path:
    rng = np.random.default_rng(seed)
    x = (0.1 * rng.standard_normal(int(seconds * sr)) + 0.05).astype(np.float32)
    soundfile.write(path, x, sr)
    return path


def test_window_plan_keeps_every_column_once():
    for total in (1, 3, 4, 5, 17, 40, 101):
        for w, ctx in ((4, 0), (4, 1), (16, 2), (16, 7)):
            plan = plan_windows(total, w, ctx)
            kept = [c for p in plan for c in range(p.keep_from, p.keep_to)]
            assert kept == list(range(total))
            for p in plan:
                assert p.stop - p.start == min(w, total)
                assert p.keep_from - p.start >= (ctx if p.start > 0 else 0)
                assert p.stop - p.keep_to >= (ctx if p.stop < total else 0)


def test_stitched_long_file_equals_the_unwindowed_prediction(tmp_path):
    """A per-column model (no context) shows the stitching itself: windows of 4 columns with 1 column of
    context give exactly the columns of the whole file in one pass."""
    fe = _frontend()
    path = _wav(tmp_path / "long.wav", 21.37)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, (16, 32), stride=(16, 32))

    def local(x):  # (B, T, F) -> (B, T', 3): each column sees only its own 16 frames
        return conv(x[:, None])[..., 0].transpose(1, 2)

    src = AudioSource(path, fe)
    wave, _ = soundfile.read(path, dtype="float32")
    full = waveform_to_input(torch.from_numpy(wave), FrontendConfig(**{**fe.to_dict(), "target_length": 2135}))
    streamed = window_fbank(src, fe, 0, 2135, 2135, 0.0)
    assert torch.allclose(streamed, full, atol=1e-4)
    with torch.no_grad():
        cols = stream_column_logits(src, local, fe, 16, 16, window_columns=4, context=1, pad_value=1.0, batch_size=3)
        pad = torch.full((1, 2144 - 2135, 32), 1.0)
        whole = local(torch.cat([full[None], pad], 1))[0]
    assert cols.shape == whole.shape == (134, 3)
    assert torch.allclose(cols, whole, atol=1e-4)


def test_detector_on_a_file_that_fits_one_window_equals_the_model(tmp_path):
    model, fe = _tiny(target_length=256, gru=8), _frontend(256)
    det = SoundEventDetector(model, fe, ["a", "b", "c"])
    path = _wav(tmp_path / "short.wav", 2.0)
    scores, events, dur = detect_file(det, path, post=PostProcess(median_filter=0.0, thresholds=0.5))
    wave, _ = soundfile.read(path, dtype="float32")
    fb = waveform_to_input(torch.from_numpy(wave), FrontendConfig(**{**fe.to_dict(), "target_length": 208}))
    with torch.no_grad():
        col = model(fb[None])[0][0]
    want = torch.sigmoid(interpolate_columns(col, 50, 0.04, *column_geometry(model.encoder.cfg, 16000, 10, 25)))
    assert dur == 2.0 and scores.shape == (50, 3)
    np.testing.assert_allclose(scores, want.numpy(), atol=1e-5)


def test_event_timestamps_on_a_long_file_are_exact(tmp_path):
    """A level detector through the whole streaming path finds tone bursts at their true times."""
    sr, seconds = 16000, 60.015  # 6000 whole fbank frames: no padding frame (the stub would read it as sound)
    x = np.zeros(int(sr * seconds), dtype=np.float32)
    truth = [(3.2, 4.8), (17.6, 18.4), (41.6, 44.0), (58.4, 59.2)]  # on the 160 ms column grid
    for on, off in truth:
        a, b = int(on * sr), int(off * sr)
        x[a:b] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(b - a) / sr)
    path = tmp_path / "bursts.wav"
    soundfile.write(path, x, sr)
    fe = _frontend(64)
    model = _tiny(64, hop=0.16)
    det = SoundEventDetector(model, fe, ["tone", "b", "c"])
    # log-mel level of the column: silence normalises to about -1.5, the tone to about -1.0
    det.column_logits = lambda fb: torch.stack([fb.reshape(fb.shape[0], -1, 16, 32).mean((2, 3)) * 20 + 25] * 3, -1)
    det.first_centre = 0.08  # score frames share the column grid: frame j = column j
    _, events, dur = detect_file(det, path, post=PostProcess(0.0, [0.5, 2.0, 2.0]))
    assert dur == seconds
    found = [(round(a, 2), round(b, 2)) for a, b, c, _ in events if c == "tone"]
    assert found == truth


def test_sed_export_round_trip(tmp_path):
    model, fe = _tiny(gru=4), _frontend()
    head = {**sed_head_spec(model.cfg), "class_names": ["a", "b", "c"]}
    save_export(tmp_path / "det", model.encoder.cfg, model.state_dict(), fe, head=head)
    det = load_detector(tmp_path / "det")
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        assert torch.equal(det.model(x)[0], model(x)[0]) and torch.equal(det.model(x)[1], model(x)[1])
    assert det.class_names == ["a", "b", "c"] and det.hop == 0.04
    with pytest.raises(ExportError, match="sound event detector"):
        load_classifier(tmp_path / "det")


def test_sed_infer_tool_writes_events_and_skips_bad_files(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sed_infer", Path(__file__).parents[1] / "tools" / "sed_infer.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model, fe = _tiny(), _frontend()
    save_export(tmp_path / "det", model.encoder.cfg, model.state_dict(), fe, head=sed_head_spec(model.cfg))
    audio = tmp_path / "audio"
    audio.mkdir()
    _wav(audio / "a.wav", 3.3)
    (audio / "broken.wav").write_bytes(b"RIFF0000WAVE")
    (tmp_path / "post.json").write_text('{"median_filter": [0.0, 0.12, 0.2], "thresholds": 0.0}')
    tool.main([str(tmp_path / "det"), str(audio), "--out", str(tmp_path / "out"), "--scores", "--no-progress",
               "--postprocess", str(tmp_path / "post.json")])
    rows = (tmp_path / "out" / "events.tsv").read_text().splitlines()
    assert rows[0] == "filename\tonset\toffset\tevent_label\tscore"
    assert rows[1:] and all(r.startswith("a.wav\t") for r in rows[1:])  # threshold 0: every class is on
    assert {r.split("\t")[3] for r in rows[1:]} == {"class_0", "class_1", "class_2"}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["files"] == 1
    scores = np.loadtxt(tmp_path / "out" / "scores" / "a.tsv", skiprows=1)
    assert scores.shape == (83, 5) and scores[-1, 1] == pytest.approx(3.32)
    assert "1 unreadable file(s) skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "det"), str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")])
