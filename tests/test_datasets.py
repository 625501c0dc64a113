import logging

import numpy as np
import pytest
import soundfile
import torch

from eat.audio.fbank import FrontendConfig, waveform_to_input
from eat.data.datasets import (
    LabelledDataset,
    MaskConfig,
    PretrainDataset,
    Skipped,
    fixed_length_wave,
    sample_generator,
    wave_length,
)
from eat.data.loaders import BadDataError, ResumableDistributedSampler, build_loader
from eat.data.manifest import LabelledItem, LabelSet, write_manifest

SR = 16000
FE = FrontendConfig(target_length=48, num_mel_bins=128)


def _write_clips(folder, lengths, seed=0):
    """Sine-plus-noise wav clips; returns (manifest path, list of waves)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    entries, waves = [], []
    for i, n in enumerate(lengths):
        t = np.arange(n) / SR
        x = (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
        soundfile.write(folder / f"c{i:03d}.wav", x, SR, subtype="FLOAT")
        entries.append((f"c{i:03d}.wav", n))
        waves.append(torch.from_numpy(x))
    return write_manifest(folder / "train.tsv", folder, entries), waves


def test_source_is_the_frontend_of_the_file(tmp_path):
    man, waves = _write_clips(tmp_path, [8000, 3000])
    ds = PretrainDataset(man, FE)
    assert len(ds) == 2
    for i in range(2):
        item = ds[i]
        assert item["index"] == i and item["source"].shape == (48, 128)
        torch.testing.assert_close(item["source"], waveform_to_input(waves[i], FE), rtol=0, atol=0)


def test_masks_are_keyed_by_seed_epoch_and_index(tmp_path):
    man, _ = _write_clips(tmp_path, [4000] * 3)
    cfg = MaskConfig(clones=4, mask_ratio=0.75, block=2, adjust=0.0, grid=(3, 8))
    ds = PretrainDataset(man, FE, mask_cfg=cfg, seed=5)
    m = ds[(1, 2)]["mask"]
    assert m.shape == (4, 24) and m.dtype == torch.bool
    assert (m.sum(1) == 24 - int(24 * 0.25)).all()  # exact masked count per row
    assert torch.equal(m, ds[(1, 2)]["mask"])
    assert torch.equal(ds[1]["mask"], ds[(1, 0)]["mask"])
    assert not torch.equal(m, ds[(1, 3)]["mask"])
    assert not torch.equal(m, ds[(2, 2)]["mask"])
    assert not torch.equal(m, PretrainDataset(man, FE, mask_cfg=cfg, seed=6)[(1, 2)]["mask"])
    default_grid = PretrainDataset(man, FE, mask_cfg=MaskConfig(clones=2))[0]["mask"]
    assert default_grid.shape == (2, (48 // 16) * (128 // 16))


def test_sample_generator_streams_differ():
    draws = {k: torch.rand(4, generator=sample_generator(*k)) for k in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)]}
    assert len({tuple(v.tolist()) for v in draws.values()}) == 4
    assert torch.equal(torch.rand(4, generator=sample_generator(0, 0, 1)), draws[(0, 0, 1)])


def test_waveform_items_give_the_same_input_on_a_padded_batch(tmp_path):
    long, short = 48 * 160 + 5000, 3000
    man, waves = _write_clips(tmp_path, [long, short])
    ds = PretrainDataset(man, FE, return_waveform=True)
    items = [ds[0], ds[1]]
    size = wave_length(FE)
    assert size == 400 + 47 * 160
    assert [it["wave"].shape[0] for it in items] == [size, size] and [it["length"] for it in items] == [size, short]
    assert (items[1]["wave"][short:] == 0).all()
    batch = torch.stack([it["wave"] for it in items])
    got = waveform_to_input(batch, FE, lengths=torch.tensor([it["length"] for it in items]))
    for i in range(2):
        # the clip mean is taken over the crop instead of the whole clip; per-frame DC removal cancels it
        torch.testing.assert_close(got[i], waveform_to_input(waves[i], FE), rtol=0, atol=2e-4)


def _find_offset(window, full):
    for o in range(full.shape[0] - window.shape[0] + 1):
        if torch.allclose(full[o : o + window.shape[0]], window, atol=2e-4):
            return o
    return None


def test_random_crops_are_real_windows_and_reproducible(tmp_path):
    n = 48 * 160 + 30 * 160
    man, waves = _write_clips(tmp_path, [n])
    fe = FrontendConfig(target_length=48, crop="random")
    full = waveform_to_input(waves[0], FrontendConfig(target_length=10_000))[: (n - 400) // 160 + 1]
    spec_ds, wave_ds = PretrainDataset(man, fe), PretrainDataset(man, fe, return_waveform=True)
    offsets = set()
    for epoch in range(6):
        src = spec_ds[(0, epoch)]["source"]
        assert torch.equal(src, spec_ds[(0, epoch)]["source"])
        offsets.add(_find_offset(src, full))
        w = wave_ds[(0, epoch)]
        via_wave = waveform_to_input(w["wave"][None], fe, lengths=torch.tensor([w["length"]]))[0]
        offsets.add(_find_offset(via_wave, full))
    assert None not in offsets and len(offsets) > 2


def test_fixed_length_wave_head_crop_and_pad():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(20000, dtype=torch.float32)
    w, n = fixed_length_wave(x, FE, "head", g)
    assert n == wave_length(FE) and torch.equal(w, x[:n])
    w, n = fixed_length_wave(x[:100], FE, "head", g)
    assert n == 100 and w.shape[0] == wave_length(FE) and torch.equal(w[:100], x[:100]) and (w[100:] == 0).all()


def _bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is not audio\n")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40)
    soundfile.write(folder / "short.wav", np.zeros(100, np.float32), SR)
    soundfile.write(folder / "nan.wav", np.full(1000, np.nan, np.float32), SR, subtype="FLOAT")
    return ["empty.wav", "text.wav", "corrupt.wav", "short.wav", "nan.wav", "missing.wav"]


def test_each_kind_of_bad_file_is_skipped_with_a_reason(tmp_path):
    names = _bad_files(tmp_path)
    man = write_manifest(tmp_path / "bad.tsv", tmp_path, [(n, 1000) for n in names])
    ds = PretrainDataset(man, FE)
    out = [ds[i] for i in range(len(names))]
    assert all(isinstance(o, Skipped) for o in out)
    assert [o.path for o in out] == [str(tmp_path / n) for n in names]
    reasons = dict(zip(names, (o.reason for o in out), strict=True))
    assert "empty" in reasons["empty.wav"] and "not found" in reasons["missing.wav"]
    assert "shorter than one" in reasons["short.wav"] and "non-finite" in reasons["nan.wav"]


@pytest.mark.parametrize("workers", [0, 2])
def test_one_bad_clip_in_twenty_is_skipped_and_logged_once(tmp_path, caplog, workers):
    man, _ = _write_clips(tmp_path / "ok", [2000] * 19)
    (tmp_path / "ok" / "broken.wav").write_bytes(b"RIFF garbage")
    lines = man.read_text().splitlines()
    man.write_text("\n".join(lines[:8] + ["broken.wav\t2000"] + lines[8:]) + "\n")
    ds = PretrainDataset(man, FE, mask_cfg=MaskConfig(clones=2, grid=(3, 8)), max_bad_fraction=0.05)
    loader = build_loader(ds, ResumableDistributedSampler(20, seed=1), batch_size=4, num_workers=workers)
    caplog.set_level(logging.WARNING, logger="eat.data.loaders")
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert sum(len(b["index"]) for b in batches) == 19 and sum(b["num_skipped"] for b in batches) == 1
        assert 7 not in torch.cat([b["index"] for b in batches]).tolist()  # entry 7 is broken.wav (line 9)
        assert all(b["mask"].shape[0] == 2 * len(b["index"]) for b in batches)
    warnings = [r.getMessage() for r in caplog.records if "broken.wav" in r.getMessage()]
    assert len(warnings) == 1


def test_too_many_bad_clips_stop_the_run_naming_the_limit(tmp_path):
    man, _ = _write_clips(tmp_path, [2000] * 16)
    text = man.read_text() + "".join(f"gone{i}.wav\t2000\n" for i in range(4))
    man.write_text(text)  # 4 of 20 missing = 20 %
    ds = PretrainDataset(man, FE, max_bad_fraction=0.15)
    loader = build_loader(ds, ResumableDistributedSampler(20, seed=0), batch_size=5, max_bad_clips=0)
    with pytest.raises(BadDataError, match=r"^4 of the first \d+ clips read are unreadable \(of 20 this epoch on this "
                       r"process\), more than the 3 allowed \(data.max_bad_clips=0, data.max_bad_fraction=0.15\); "
                       r"first: .*gone\d.wav: "):
        list(loader)
    ok = build_loader(ds, ResumableDistributedSampler(20, seed=0), batch_size=5, max_bad_fraction=0.2)
    assert sum(len(b["index"]) for b in ok) == 16


def test_labelled_targets_and_transform(tmp_path):
    man, waves = _write_clips(tmp_path, [9000, 9000, 9000])
    items = [LabelledItem(tmp_path / f"c{i:03d}.wav", labels) for i, labels in enumerate([(0, 2), (1,), (3,)])]
    multi = LabelledDataset(items, FE, num_classes=4, multi_label=True)
    assert multi[0]["target"].tolist() == [1.0, 0.0, 1.0, 0.0] and multi[0]["target"].dtype == torch.float32
    single = LabelledDataset.from_labels(LabelSet(items[1:], ["a", "b", "c", "d"], False), FE)
    assert single[0]["target"] == 1 and single[1]["target"] == 3 and single[1]["index"] == 1

    calls = []

    def flip(wave, generator):
        calls.append(float(wave.mean()))
        return -wave * (1 + torch.rand((), generator=generator))

    fe = FrontendConfig(target_length=48, crop="random")
    train = LabelledDataset(items, fe, 4, True, wave_transform=flip, train=True)
    evaluation = LabelledDataset(items, fe, 4, True, wave_transform=flip, train=False)
    a, b = train[(0, 1)]["source"], train[(0, 1)]["source"]
    assert torch.equal(a, b) and not torch.equal(a, train[(0, 2)]["source"])
    assert len(calls) == 3 and all(abs(c) < 1e-6 for c in calls)  # the transform sees the DC-free wave
    assert torch.equal(evaluation[0]["source"], waveform_to_input(waves[0], FrontendConfig(target_length=48)))
    assert len(calls) == 3
    with pytest.raises(ValueError, match="outside 0..2"):
        LabelledDataset(items, FE, num_classes=3, multi_label=True)


def test_labelled_waveform_items(tmp_path):
    _, waves = _write_clips(tmp_path, [20000])
    ds = LabelledDataset([LabelledItem(tmp_path / "c000.wav", (0,))], FE, 1, False, return_waveform=True)
    item = ds[0]
    assert item["wave"].shape == (wave_length(FE),) and item["length"] == wave_length(FE) and item["target"] == 0
    assert torch.equal(item["wave"], waves[0][: wave_length(FE)])
