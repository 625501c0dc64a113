"""The batched fbank against Kaldi (torchaudio.compliance.kaldi) and the exact properties of the
pad/crop/normalise steps and the full waveform -> model input recipe.

Kaldi parity is checked against ``tests/fixtures/torchaudio_reference.safetensors`` (recorded by
``tools/make_torchaudio_reference.py``) always, and against live torchaudio in addition when it imports; without
a loadable torchaudio the live checks are skipped with the import error as the reason.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from kaldi_reference import EAT_KALDI, OPTION_CASES, REF, SR, live_torchaudio, names

from eat.audio.fbank import (
    NORM_PRESETS,
    FrontendConfig,
    denormalize,
    fbank,
    mel_banks,
    normalize,
    num_frames,
    pad_or_crop,
    waveform_to_input,
)
from eat.config import ConfigError, from_dict, to_dict


def kaldi_ref(wave: torch.Tensor, **kw) -> torch.Tensor:
    kaldi = live_torchaudio("compliance.kaldi")
    return kaldi.fbank(wave[None], **{**EAT_KALDI, **kw})


def white(n: int, seed: int, std: float = 0.1) -> torch.Tensor:
    return std * torch.randn(n, generator=torch.Generator().manual_seed(seed))


def pink(n: int, seed: int, std: float) -> torch.Tensor:
    spec = torch.fft.rfft(torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    spec = spec / torch.arange(spec.shape[0], dtype=torch.float64).clamp_min(1).sqrt()
    x = torch.fft.irfft(spec, n=n)
    return (x / x.std() * std).float()


STORED = names("fbank")
TONES = names("tone")


def assert_kaldi_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Kaldi's log-mel to fp32 round-off. The same bound serves live torchaudio against the stored file: the
    stored file was recorded on another CPU, and torchaudio's own fp32 result differs between CPUs (AVX2 vs
    AVX-512 FFT kernels) by up to ~2e-4 in low-energy bins, where the log amplifies rounding."""
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    diff = (ours - ref).abs()
    assert diff.max() <= 1e-3, f"max |diff| {diff.max():.2e}"
    assert diff.mean() <= 2e-5, f"mean |diff| {diff.mean():.2e}"  # catches any systematic offset


def test_reference_file_covers_the_signals():
    assert set(STORED) == {"white_2s_plus_77", "pink_2s", "silence_with_clicks", "chord_over_pink_floor", "short_401"}
    assert len(TONES) == 4 and len(OPTION_CASES) == 4
    assert REF["fbank.white_2s_plus_77"].shape == (num_frames(2 * SR + 77), 128)


@pytest.mark.parametrize("name", STORED)
def test_matches_stored_kaldi_reference(name):
    assert_kaldi_close(fbank(REF[f"signal.{name}"]), REF[f"fbank.{name}"])


@pytest.mark.parametrize("name", STORED)
def test_matches_live_torchaudio_kaldi(name):
    wave = REF[f"signal.{name}"]
    ref = kaldi_ref(wave)
    assert_kaldi_close(ref, REF[f"fbank.{name}"])  # the stored file is still true (to fp32 round-off, see below)
    assert_kaldi_close(fbank(wave), ref)


@pytest.mark.parametrize("freq", TONES)
def test_pure_tones(freq):
    """A pure tone leaves most mel bins >100 dB below the peak, where any fp32 FFT is round-off (torchaudio's
    own fp32 result is off by up to ~3e-2 there). Within 60 dB of each frame's peak we must be exact."""
    wave = REF[f"tone.{freq}"]
    exact, fp32 = REF[f"tone64.{freq}"].double(), REF[f"tone32.{freq}"].double()
    ours = fbank(wave).double()
    near_peak = exact >= exact.max(dim=-1, keepdim=True).values - 6 * math.log(10)
    assert near_peak.sum() >= 2 * exact.shape[0]
    assert (ours - exact)[near_peak].abs().max() <= 2e-4
    assert (ours - fp32)[near_peak].abs().max() <= 1e-3
    assert torch.isfinite(ours).all() and ours.min() >= math.log(torch.finfo(torch.float32).eps) - 1e-6


@pytest.mark.parametrize("freq", TONES)
def test_pure_tone_live_torchaudio(freq):
    """Live torchaudio still computes the stored fp32 result within 60 dB of each frame's peak; further down
    any fp32 FFT is round-off that differs between CPUs (see test_pure_tones)."""
    live, stored = kaldi_ref(REF[f"tone.{freq}"]), REF[f"tone32.{freq}"]
    exact = REF[f"tone64.{freq}"]
    near_peak = exact >= exact.max(dim=-1, keepdim=True).values - 6 * math.log(10)
    assert (live - stored)[near_peak].abs().max() <= 1e-4


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_kaldi_options_match_stored_reference(case):
    ours = fbank(REF["signal.pink_options"], **OPTION_CASES[case][0])
    ref = REF[f"options.{case}"]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 1e-3


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_kaldi_options_match_live_torchaudio(case):
    ref = kaldi_ref(REF["signal.pink_options"], **OPTION_CASES[case][1])
    assert_kaldi_close(ref, REF[f"options.{case}"])


def slow_kaldi_mel_banks(num_bins: int, n_fft: int, sr: float, low: float, high: float) -> list[list[float]]:
    """Kaldi's MelBanks constructor, one weight at a time in double precision."""
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    high = high if high > 0 else sr / 2 + high
    delta = (mel(high) - mel(low)) / (num_bins + 1)
    rows = [[0.0] * num_bins for _ in range(n_fft // 2 + 1)]
    for b in range(num_bins):
        left, center, right = (mel(low) + (b + k) * delta for k in range(3))
        for i in range(n_fft // 2):
            m = mel(i * sr / n_fft)
            if left < m < right:
                rows[i][b] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    return rows


@pytest.mark.parametrize("args", [(128, 512, 16000.0, 20.0, 0.0), (40, 1024, 44100.0, 0.0, -1000.0)])
def test_mel_banks_follow_kaldi_definition(args):
    ours = mel_banks(*args)
    ref = torch.tensor(slow_kaldi_mel_banks(*args), dtype=torch.float32)
    assert ours.shape == ref.shape and ours[-1].abs().sum() == 0  # Nyquist bin unused
    # Single-precision evaluation (as Kaldi does it) moves weights by at most a few 1e-5.
    torch.testing.assert_close(ours, ref, rtol=0, atol=5e-5)
    assert ((ours > 0) == (ref > 0)).float().mean() > 0.999


def test_frame_counts():
    assert fbank(torch.zeros(10 * SR)).shape == (998, 128)
    assert num_frames(10 * SR) == 998
    for n in [0, 399, 400, 559, 560, 16077]:
        assert fbank(white(n, n) if n else torch.zeros(0)).shape[0] == num_frames(n)
        assert fbank(white(n, n) if n else torch.zeros(0), snip_edges=False).shape[0] == num_frames(n, snip_edges=False)
    lengths = torch.tensor([0, 399, 400, 160000])
    assert num_frames(lengths).tolist() == [0, 0, 1, 998]


def test_batch_and_leading_dims_equal_per_clip():
    waves = torch.stack([white(2 * SR + 77, s) for s in range(6)]).reshape(2, 3, -1)
    batched = fbank(waves)
    assert batched.shape == (2, 3, num_frames(2 * SR + 77), 128)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(batched[i, j], fbank(waves[i, j]), rtol=0, atol=1e-4)


def test_long_clip_is_split_into_blocks_correctly():
    """Each frame depends on its own 400 samples only, so any slice of frames equals the fbank of the samples
    it spans, computed on its own (one block); the stored Kaldi comparisons pin down the frames themselves."""
    wave = pink(25 * SR + 33, 6, 0.1)  # 2498 frames: more than one CPU block
    ours = fbank(wave)
    assert ours.shape == (2498, 128)
    for first, count in [(0, 300), (950, 200), (2048 - 37, 100), (2398, 100)]:
        alone = fbank(wave[160 * first: 160 * (first + count - 1) + 400])
        assert alone.shape[0] == count
        torch.testing.assert_close(ours[first: first + count], alone, rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.int16, torch.int32])
def test_input_dtypes_computed_in_fp32(dtype):
    base = pink(SR, 7, 0.3)
    wave = (base * 32767).to(dtype) if not dtype.is_floating_point else base.to(dtype)
    out = fbank(wave)
    assert out.dtype == torch.float32
    scale = 1.0 if dtype.is_floating_point else {torch.int16: 2.0**15, torch.int32: 2.0**31}[dtype]  # PCM scaled
    torch.testing.assert_close(out, fbank(wave.float() / scale), rtol=0, atol=0)  # fp32 path: tested against Kaldi


def test_autocast_does_not_lower_precision():
    wave = white(SR, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = fbank(wave)
    torch.testing.assert_close(inside, fbank(wave), rtol=0, atol=0)


def test_empty_and_bad_arguments():
    assert fbank(torch.zeros(4, 399)).shape == (4, 0, 128)
    assert fbank(torch.zeros(0, 1000)).shape == (0, 4, 128)
    with pytest.raises(ValueError, match="window"):
        fbank(white(1000, 0), window="kaiser")
    with pytest.raises(ValueError, match="low_freq"):
        fbank(white(1000, 0), low_freq=9000.0)


def test_pad_or_crop():
    fb = torch.randn(2, 3, 10, 4)
    padded = pad_or_crop(fb, 16)
    assert padded.shape == (2, 3, 16, 4)
    assert torch.equal(padded[..., :10, :], fb) and torch.equal(padded[..., 10:, :], torch.zeros(2, 3, 6, 4))
    assert torch.equal(pad_or_crop(fb, 7), fb[..., :7, :])
    assert torch.equal(pad_or_crop(fb, 10, mode="random"), fb)

    frames = torch.arange(50.0).view(1, 50, 1).expand(32, 50, 2)  # value = frame index
    crops = pad_or_crop(frames, 20, mode="random", generator=torch.Generator().manual_seed(0))
    starts = crops[:, 0, 0]
    assert torch.equal(crops[..., 0], starts[:, None] + torch.arange(20.0))  # contiguous windows
    assert starts.min() >= 0 and starts.max() <= 30 and len(set(starts.tolist())) > 5
    again = pad_or_crop(frames, 20, mode="random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)
    valid = torch.tensor([25] * 16 + [10] * 16)  # real frames per clip in a padded batch
    crops = pad_or_crop(frames, 20, mode="random", generator=torch.Generator().manual_seed(1), num_valid=valid)
    assert crops[:16, 0, 0].max() <= 5 and crops[16:, 0, 0].eq(0).all()
    with pytest.raises(ValueError, match="crop mode"):
        pad_or_crop(fb, 4, mode="center")


def test_normalize_and_presets():
    fb = torch.randn(3, 5, 7) * 4 - 5
    mean, std = NORM_PRESETS["audioset"]
    assert (mean, std) == (-4.268, 4.569)
    assert NORM_PRESETS["esc50"] == (-6.627, 5.359) and NORM_PRESETS["spc2"] == (-6.846, 5.565)
    torch.testing.assert_close(normalize(fb, mean, std), (fb + 4.268) / 9.138)
    torch.testing.assert_close(denormalize(normalize(fb, mean, std), mean, std), fb)


def test_frontend_config():
    cfg = FrontendConfig()
    assert (cfg.norm_mean, cfg.norm_std, cfg.target_length, cfg.crop) == (-4.268, 4.569, 1024, "head")
    esc = FrontendConfig.from_preset("esc50", crop="random")
    assert (esc.norm_mean, esc.norm_std, esc.target_length, esc.crop) == (-6.627, 5.359, 512, "random")
    assert FrontendConfig.from_preset("spc2").target_length == 128
    assert from_dict(FrontendConfig, json.loads(json.dumps(to_dict(esc)))) == esc
    with pytest.raises(ConfigError, match="preset"):
        FrontendConfig.from_preset("librispeech")
    with pytest.raises(ConfigError, match="crop"):
        FrontendConfig(crop="middle")
    with pytest.raises(ConfigError, match="norm_std"):
        FrontendConfig(norm_std=0.0)


def test_waveform_to_input_recipe_and_padding_value():
    cfg = FrontendConfig(target_length=512)
    wave = white(3 * SR, 9) + 0.2  # DC offset that the recipe removes
    out = waveform_to_input(wave, cfg)
    assert out.shape == (512, 128)
    expected = normalize(pad_or_crop(fbank(wave - wave.mean()), 512), cfg.norm_mean, cfg.norm_std)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    frames = num_frames(3 * SR)
    pad_value = (0 - cfg.norm_mean) / (2 * cfg.norm_std)
    torch.testing.assert_close(out[frames:], torch.full((512 - frames, 128), pad_value), rtol=0, atol=1e-7)
    assert out[frames:].unique().numel() == 1 and abs(pad_value - 0.467) < 1e-3
    batch = waveform_to_input(torch.stack([wave, white(3 * SR, 10)]), cfg)
    assert batch.shape == (2, 512, 128)
    torch.testing.assert_close(batch[0], out, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        waveform_to_input(torch.zeros(2, 2, 100), cfg)


def test_waveform_to_input_padded_batch_equals_single_clips():
    cfg = FrontendConfig(target_length=256)
    clips = [white(n, n) + 0.1 for n in (2 * SR, SR + 77, 300)]
    lengths = torch.tensor([c.numel() for c in clips])
    batch = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        batch[i, : c.numel()] = c
        batch[i, c.numel() :] = 3.0  # whatever sits after a clip must not leak into its features
    got = waveform_to_input(batch, cfg, lengths=lengths)
    for i, c in enumerate(clips):
        torch.testing.assert_close(got[i], waveform_to_input(c, cfg), rtol=0, atol=2e-4)


def test_waveform_to_input_random_crop_stays_in_valid_frames():
    cfg = FrontendConfig(target_length=50, crop="random")
    clip = white(SR, 11)  # 98 frames
    batch = torch.zeros(8, 3 * SR)
    batch[:, : SR] = clip
    lengths = torch.full((8,), SR)
    full = waveform_to_input(clip, FrontendConfig(target_length=98))
    got = waveform_to_input(batch, cfg, lengths=lengths, generator=torch.Generator().manual_seed(0))
    for row in got:  # every crop is a window of the clip's own 98 frames, never padding
        matches = [s for s in range(49) if torch.allclose(row, full[s : s + 50], atol=2e-4)]
        assert matches
