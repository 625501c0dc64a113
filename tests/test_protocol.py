"""Probe protocol: pooling over valid tokens only, layer concatenation in spec order, the log-mel baseline
under the same poolings, the initial-weights control, and the tool end to end."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
import soundfile
import torch
import yaml

from eat.apps.probe_protocol import initial_weights
from eat.audio.fbank import FrontendConfig
from eat.eval.probe import probe
from eat.eval.protocol import (
    Row,
    encoder_embeddings,
    format_table,
    logmel_embeddings,
    parse_layers,
    pool_tokens,
    seed_summary,
    select_on_validation,
)
from eat.features import FeatureExtractor, logmel_statistics
from eat.model.eat import EATModel, eat_config
from eat.model.vit import Encoder

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def tiny_extractor(seed: int = 0) -> FeatureExtractor:
    torch.manual_seed(seed)
    return FeatureExtractor(Encoder(eat_config("tiny").encoder), FrontendConfig(target_length=256))


def waves(seconds: list[float], seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(s * SR), generator=gen) for s in seconds]


def test_pool_tokens_matches_a_per_clip_loop_and_ignores_padding():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    valid = torch.tensor([7, 4, 1])
    mask = torch.arange(7)[None] >= valid[:, None]
    tokens[mask] = 1e6  # padding rows hold garbage that must not leak in
    got_mean = pool_tokens(tokens, mask, "mean")
    got_ms = pool_tokens(tokens, mask, "meanstd")
    for b, n in enumerate(valid.tolist()):
        rows = tokens[b, :n].numpy()
        np.testing.assert_allclose(got_mean[b].numpy(), rows.mean(0), rtol=1e-12)
        np.testing.assert_allclose(got_ms[b].numpy(), np.concatenate([rows.mean(0), rows.std(0)]), rtol=1e-10, atol=1e-12)
    assert torch.equal(pool_tokens(tokens[:1], None, "mean"), got_mean[:1])
    with pytest.raises(ValueError, match="unknown token pooling"):
        pool_tokens(tokens, mask, "cls")


def test_band_pooling_is_a_per_band_loop_over_valid_time_columns():
    gen = torch.Generator().manual_seed(3)
    t, f, d = 5, 3, 4
    tokens = torch.randn(2, t * f, d, generator=gen, dtype=torch.float64)
    cols = torch.tensor([5, 2])  # clip 1: 2 valid time columns, then padding
    mask = (torch.arange(t)[None] >= cols[:, None]).repeat_interleave(f, dim=1)
    tokens[mask] = -1e6
    got_m = pool_tokens(tokens, mask, "band-mean", num_bands=f)
    got_ms = pool_tokens(tokens, mask, "band-meanstd", num_bands=f)
    assert got_m.shape == (2, f * d) and got_ms.shape == (2, 2 * f * d)
    for b, n in enumerate(cols.tolist()):
        # time-major rows: token t * f + band
        per_band = [tokens[b, [k * f + band for k in range(n)]].numpy() for band in range(f)]
        means = np.concatenate([r.mean(0) for r in per_band])
        stds = np.concatenate([r.std(0) for r in per_band])
        np.testing.assert_allclose(got_m[b].numpy(), means, rtol=1e-12)
        np.testing.assert_allclose(got_ms[b].numpy(), np.concatenate([means, stds]), rtol=1e-10, atol=1e-12)
    # one band holding everything is the plain pooling
    torch.testing.assert_close(pool_tokens(tokens, mask, "band-meanstd", 1), pool_tokens(tokens, mask, "meanstd"))
    with pytest.raises(ValueError, match="grid of 2 frequency bands"):
        pool_tokens(tokens, mask, "band-mean", num_bands=2)


def test_band_pooling_keeps_where_a_pattern_sits_and_plain_mean_does_not():
    # two classes: the same token pattern in the lower or in the upper frequency band
    gen = torch.Generator().manual_seed(2)
    n, t, f, d = 120, 6, 2, 4
    y = torch.arange(n) % 2
    pattern = torch.randn(n, t, 1, d, generator=gen) + 2.0
    noise = torch.randn(n, t, 1, d, generator=gen)
    lower_first = torch.cat([pattern, noise], 2)
    upper_first = torch.cat([noise, pattern], 2)
    tokens = torch.where(y[:, None, None, None] == 1, upper_first, lower_first).reshape(n, t * f, d)
    tr, te = slice(0, 80), slice(80, n)
    accs = {}
    for p in ("mean", "band-mean"):
        x = pool_tokens(tokens, None, p, num_bands=f)
        accs[p] = probe(x[tr], y[tr], x[te], y[te], weight_decays=(1e-3, 1e-1))["score"]
    assert accs["band-mean"] >= 0.95 and accs["mean"] <= 0.75


def test_meanstd_separates_classes_that_differ_only_in_spread_and_mean_does_not():
    # two classes of token sequences with the same mean but a different spread over time
    gen = torch.Generator().manual_seed(1)
    n, t, d = 120, 20, 6
    y = torch.arange(n) % 2
    scale = torch.where(y == 1, 3.0, 0.5)[:, None, None]
    tokens = torch.randn(n, t, d, generator=gen) * scale + 0.1 * torch.randn(n, 1, d, generator=gen)
    tr, te = slice(0, 80), slice(80, n)
    accs = {}
    for p in ("mean", "meanstd"):
        x = pool_tokens(tokens, None, p)
        accs[p] = probe(x[tr], y[tr], x[te], y[te], weight_decays=(1e-3, 1e-1))["score"]
    assert accs["meanstd"] >= 0.95 and accs["mean"] <= 0.75


def test_the_reported_cell_is_chosen_on_validation_not_on_test():
    rows = [Row("pre", "-1", "mean", score=0.9, dim=4, weight_decay=0.1, val_score=0.5),
            Row("pre", "all", "meanstd", score=0.6, dim=8, weight_decay=0.1, val_score=0.7),
            Row("pre", "all", "band-mean", score=0.8, dim=8, weight_decay=0.1, val_score=0.7),  # tie: earlier wins
            Row("log-mel", "-", "mean", score=0.4, dim=2, weight_decay=1.0, val_score=0.3)]
    chosen = select_on_validation(rows)
    assert chosen["pre"] is rows[1] and chosen["log-mel"] is rows[3]
    table = format_table(rows, ["mean", "meanstd", "band-mean"])
    assert "| pre | all | - | 0.600* | 0.800 |" in table
    assert "chosen on validation for pre: layers all, meanstd -> test 0.600" in table


def test_parse_layers():
    assert parse_layers("-1", 3) == [2]
    assert parse_layers("0+2", 3) == [0, 2]
    assert parse_layers("2+0", 3) == [2, 0]
    assert parse_layers("all", 3) == [0, 1, 2]
    for bad, msg in (("3", "out of range"), ("x", "not a block"), ("1+1", "twice"), ("-4", "out of range")):
        with pytest.raises(ValueError, match=msg):
            parse_layers(bad, 3)


def test_encoder_embeddings_are_the_extractors_pooled_layers_concatenated_in_spec_order():
    fx = tiny_extractor()
    clips = waves([0.9, 2.5, 1.3])  # different lengths: one batch with a padding mask
    emb = encoder_embeddings(fx, clips, ["-1", "2+0", "all"], ["mean", "meanstd", "band-meanstd", "cls"], batch_size=2)
    d = fx.embed_dim
    assert emb[("-1", "mean")].shape == (3, d) and emb[("2+0", "meanstd")].shape == (3, 4 * d)
    assert emb[("all", "cls")].shape == (3, 3 * d)
    # mean of the last block = the extractor's own mean pooling; cls = its CLS token
    ref_mean = fx.extract_features(clips, layers=-1, utterance="mean").embeddings
    torch.testing.assert_close(emb[("-1", "mean")], ref_mean, atol=1e-5, rtol=0)
    ref_cls = fx.extract_features(clips, layers=[0, 1, 2], utterance="cls").embeddings  # (B, 3, D)
    torch.testing.assert_close(emb[("all", "cls")], ref_cls.reshape(3, -1), atol=1e-6, rtol=0)
    # meanstd of "2+0": [mean2, std2, mean0, std0], each clip computed alone from its patch tokens
    for i, clip in enumerate(clips):
        alone = fx.extract_features([clip], layers=[2, 0], granularity="patch").embeddings[0]  # (2, N, D)
        want = torch.cat([torch.cat([alone[k].mean(0), alone[k].std(0, unbiased=False)]) for k in range(2)])
        torch.testing.assert_close(emb[("2+0", "meanstd")][i], want, atol=1e-5, rtol=0)
        # band-meanstd of the last block: per frequency row of the (T', F') grid, over time
        f = fx.encoder.num_freq_patches
        grid = alone[0].reshape(-1, f, d)  # block 2, time-major
        want = torch.cat([grid.mean(0).reshape(-1), grid.std(0, unbiased=False).reshape(-1)])
        torch.testing.assert_close(emb[("-1", "band-meanstd")][i], want, atol=1e-5, rtol=0)


def test_logmel_embeddings_follow_the_same_poolings():
    clips = waves([1.0, 1.7])
    fe = FrontendConfig()
    stats = logmel_statistics(clips, fe)
    emb = logmel_embeddings(clips, fe, ["mean", "meanstd", "band-mean", "band-meanstd", "cls"])
    assert set(emb) == {("-", p) for p in ("mean", "meanstd", "band-mean", "band-meanstd")}  # no CLS
    assert torch.equal(emb[("-", "band-meanstd")], stats) and torch.equal(emb[("-", "band-mean")], emb[("-", "mean")])
    assert torch.equal(emb[("-", "meanstd")], stats)
    torch.testing.assert_close(emb[("-", "mean")], stats[:, : fe.num_mel_bins])
    # the mean really is the per-band mean over time (not e.g. the std half)
    assert not torch.allclose(emb[("-", "mean")], stats[:, fe.num_mel_bins :])


def _run_dir(tmp_path: Path, seed: int) -> Path:
    """A pretraining run folder as the recipe leaves it, as far as the control needs: config.yaml."""
    run = tmp_path / "run"
    run.mkdir()
    model = json.loads(json.dumps(dataclasses.asdict(eat_config("tiny"))))  # tuples -> lists, as in yaml
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"preset": "tiny", **model}, "train": {"seed": seed}}))
    return run


def test_initial_weights_rebuild_the_runs_starting_network_and_keep_the_global_rng(tmp_path):
    run = _run_dir(tmp_path, seed=7)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    fx = initial_weights(run, FrontendConfig(target_length=256))
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(7)
    want = EATModel(eat_config("tiny")).student.state_dict()
    got = fx.encoder.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    torch.manual_seed(8)
    other = EATModel(eat_config("tiny")).student.state_dict()
    assert not all(torch.equal(got[k], other[k]) for k in want)
    with pytest.raises(ValueError, match="config.yaml"):
        initial_weights(tmp_path / "nowhere", FrontendConfig())


def test_tool_end_to_end_with_control_logmel_and_a_broken_clip(tmp_path):
    from eat.export import save_export

    torch.manual_seed(3)  # the network a run with train.seed=3 starts from
    fx = FeatureExtractor(EATModel(eat_config("tiny")).student, FrontendConfig(target_length=256))
    save_export(tmp_path / "enc", fx.encoder.cfg, fx.encoder.state_dict(), fx.frontend)
    task = tmp_path / "tones"
    (task / "wav").mkdir(parents=True)
    gen = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 4)):
        rows = []
        for i in range(n):
            label = ("low", "high")[i % 2]
            f = 300.0 if label == "low" else 3000.0
            t = np.arange(int(0.8 * SR)) / SR
            x = 0.3 * np.sin(2 * np.pi * f * t) + 0.01 * gen.standard_normal(len(t))
            soundfile.write(task / "wav" / f"{split}{i}.wav", x.astype(np.float32), SR)
            rows.append(f"wav/{split}{i}.wav,{label}")
        (task / f"{split}.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    (task / "wav" / "test3.wav").write_bytes(b"RIFF broken")
    run = _run_dir(tmp_path, seed=3)
    out = tmp_path / "res.json"
    cmd = [sys.executable, str(ROOT / "tools" / "probe_protocol.py"), "--encoder", f"pre={tmp_path / 'enc'}",
           "--control-from", str(run), "--task-dir", str(task), "--layers=-1,0+1", "--json", str(out),
           "--weight-decays", "1e-3", "1e-1"]
    res = procs.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "| source | layers | mean | meanstd | band-mean | band-meanstd | cls |" in res.stdout
    assert "3 skipped" not in res.stdout and res.stdout.count("chosen on validation for") == 3
    assert "1 skipped" in res.stdout and "test3.wav" in res.stderr
    data = json.loads(out.read_text())["tasks"]["tones"]
    keys = {(r["source"], r["layers"], r["pooling"]) for r in data["rows"]}
    for src in ("pre", "initial weights"):
        assert {(src, s, p) for s in ("-1", "0+1") for p in ("mean", "meanstd", "band-mean", "band-meanstd", "cls")} <= keys
    assert {("log-mel", "-", p) for p in ("mean", "meanstd", "band-mean", "band-meanstd")} <= keys and len(keys) == 24
    best = {src: max((r for r in data["rows"] if r["source"] == src), key=lambda r: r["val_score"])["val_score"]
            for src in ("pre", "initial weights", "log-mel")}
    assert {src: r["val_score"] for src, r in data["selected"].items()} == best
    dims = {(r["source"], r["layers"], r["pooling"]): r["dim"] for r in data["rows"]}
    assert dims[("pre", "0+1", "meanstd")] == 4 * fx.embed_dim and dims[("log-mel", "-", "meanstd")] == 256
    # log-mel separates 300 Hz from 3 kHz tones perfectly
    assert all(r["score"] == 1.0 for r in data["rows"] if r["source"] == "log-mel")
    # the control really is the run's initial weights (seed 3 = the exported encoder here): same numbers
    pre = {(r["layers"], r["pooling"]): r["score"] for r in data["rows"] if r["source"] == "pre"}
    init = {(r["layers"], r["pooling"]): r["score"] for r in data["rows"] if r["source"] == "initial weights"}
    assert pre == init
    bad = procs.run(cmd[:-3] + ["--layers", "7"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "block 7 out of range" in bad.stderr


def test_seed_summary_averages_each_sources_chosen_cell_over_seeds():
    def doc(pre_name, scores):  # scores: (pre -1/mean, pre all/band-meanstd, control all/band-meanstd, log-mel)
        rows = [Row(pre_name, "-1", "mean", scores[0], 4, 0.1, val_score=0.9),  # chosen for pre on validation
                Row(pre_name, "all", "band-meanstd", scores[1], 4, 0.1, val_score=0.5),
                Row("initial weights", "all", "band-meanstd", scores[2], 4, 0.1, val_score=0.5),
                Row("log-mel", "-", "meanstd", scores[3], 4, 0.1, val_score=0.5)]
        return {"tasks": {"kw": {"rows": [dataclasses.asdict(r) for r in rows]}}}

    docs = [doc("s1@100", (0.6, 0.9, 0.3, 0.5)), doc("s2@100", (0.8, 0.1, 0.5, 0.5))]
    lines = seed_summary(docs).splitlines()
    assert lines[2] == ("| kw (n=2) | 0.700 ± 0.141 (-1/mean) | 0.400 ± 0.141 (all/band-meanstd) | "
                        "0.500 ± 0.000 (-/meanstd) | +30.0 | +20.0 |")
    fixed = seed_summary(docs, ("all", "band-meanstd")).splitlines()[2]
    assert fixed.startswith("| kw (n=2) | 0.500 ± 0.566 (all/band-meanstd) |") and fixed.endswith("| +10.0 | +0.0 |")
    two = doc("s1@100", (0.6, 0.9, 0.3, 0.5))
    two["tasks"]["kw"]["rows"].append(dict(two["tasks"]["kw"]["rows"][0], source="other"))
    with pytest.raises(ValueError, match="one pretrained encoder per file"):
        seed_summary([two])
