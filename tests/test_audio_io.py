"""Decoding, mono mixing, resampling and the file errors of eat.audio.io."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import soundfile
import torch
from kaldi_reference import REF, SR, live_torchaudio, names

from eat.audio.io import AudioError, load_audio, load_audio_with_rate, remove_dc, resample


def sine(freq: float, sr: int, n: int, phase: float = 0.3) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / sr + phase)).astype(np.float32)


def test_mono_file_roundtrip_wav_and_flac(tmp_path):
    x = sine(440.0, 16000, 16000)
    soundfile.write(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    soundfile.write(tmp_path / "a.flac", x, 16000)  # 16-bit PCM
    wav = load_audio(tmp_path / "a.wav")
    assert wav.dtype == torch.float32 and wav.shape == (16000,)
    assert np.array_equal(wav.numpy(), x)
    flac, sr = load_audio_with_rate(tmp_path / "a.flac")
    assert sr == 16000 and flac.shape == (16000,)
    assert np.abs(flac.numpy() - x).max() <= 1.0 / 32768  # 16-bit quantisation only


def test_ogg_decodes(tmp_path):
    x = sine(440.0, 16000, 16000)
    soundfile.write(tmp_path / "a.ogg", x, 16000, format="OGG", subtype="VORBIS")
    y = load_audio(tmp_path / "a.ogg")
    assert abs(y.numel() - 16000) <= 64 and torch.isfinite(y).all() and y.abs().max() > 0.3


def test_channels_are_averaged(tmp_path):
    left, right = sine(440.0, 16000, 8000), sine(1000.0, 16000, 8000, phase=1.0)
    soundfile.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    soundfile.write(tmp_path / "four.wav", np.stack([left, right, left, -right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "st.wav").numpy(), (left + right) / 2, atol=1e-7)
    np.testing.assert_allclose(load_audio(tmp_path / "four.wav").numpy(), left / 2, atol=1e-7)


@pytest.mark.parametrize("sr", [44100, 22050, 32000, 8000])
@pytest.mark.parametrize("resampler", ["scipy", "torchaudio"])
def test_resampling_keeps_length_and_frequency(tmp_path, sr, resampler):
    if resampler == "torchaudio":
        live_torchaudio("functional")
    n = 2 * sr + 13
    soundfile.write(tmp_path / "x.wav", sine(440.0, sr, n), sr, subtype="FLOAT")
    y = load_audio(tmp_path / "x.wav", sample_rate=16000, resampler=resampler).numpy()
    assert y.shape == (math.ceil(n * 16000 / sr),)
    expected = sine(440.0, 16000, y.size)  # the same continuous tone sampled at 16 kHz
    mid = slice(800, y.size - 800)  # away from the filter's edge transients
    assert np.abs(y[mid] - expected[mid]).max() < 2e-3
    assert load_audio(tmp_path / "x.wav", sample_rate=None).numel() == n


RATES = names("resample_in")


def test_reference_covers_the_rates():
    assert RATES == sorted(["44100", "22050", "32000", "8000"])


@pytest.mark.parametrize("sr", RATES)
def test_scipy_resampler_agrees_with_stored_torchaudio(sr):
    """Both are band-limited resamplers; away from the edges they agree closely, also on content above the
    new Nyquist frequency (11 kHz at 44.1 and 32 kHz), which both must remove. Their filters differ near the
    band edge, where the white-noise part of the signal puts up to ~2e-2 of difference; a sample of delay or a
    wrong gain would move the mean by far more than the bound (the 440 Hz tone alone: ~7e-2)."""
    x, theirs = REF[f"resample_in.{sr}"], REF[f"resample_out.{sr}"]
    ours = resample(x, int(sr), SR)
    assert ours.shape == theirs.shape == (math.ceil(x.numel() * SR / int(sr)),)
    diff = (ours - theirs)[400:-400].abs()
    assert diff.max() < 3e-2 and diff.mean() < 3e-3, (diff.max(), diff.mean())


@pytest.mark.parametrize("sr", RATES)
def test_torchaudio_resampler_live_equals_stored(sr):
    live_torchaudio("functional")
    ours = resample(REF[f"resample_in.{sr}"], int(sr), SR, resampler="torchaudio")
    torch.testing.assert_close(ours, REF[f"resample_out.{sr}"], rtol=0, atol=1e-6)


def test_resample_tensor_batch_and_identity():
    x = torch.randn(2, 3, 4410, dtype=torch.float64)
    y = resample(x, 44100, 16000)
    assert y.shape == (2, 3, 1600) and y.dtype == torch.float32
    torch.testing.assert_close(y[1, 2], resample(x[1, 2], 44100, 16000))
    assert torch.equal(resample(x, 16000, 16000), x.float())
    with pytest.raises(ValueError, match="resampler"):
        resample(x, 44100, 16000, resampler="sox")
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 16000)


def test_torchaudio_resampler_missing_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchaudio", None)
    monkeypatch.setitem(sys.modules, "torchaudio.functional", None)
    with pytest.raises(ImportError, match="resampler='scipy'"):
        resample(torch.zeros(441), 44100, 16000, resampler="torchaudio")


def test_torchaudio_built_for_another_torch_gives_clear_error(monkeypatch):
    """A torchaudio release built for another torch fails at import with OSError (undefined symbol)."""
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("torchaudio"):
            raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torchaudio.functional", raising=False)
    monkeypatch.delitem(sys.modules, "torchaudio", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(ImportError, match="undefined symbol.*resampler='scipy'"):
        resample(torch.zeros(441), 44100, 16000, resampler="torchaudio")


def expect_audio_error(path, reason: str):
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert str(path) in str(info.value) and reason in str(info.value)
    assert info.value.path == str(path)


def test_file_errors_name_the_file(tmp_path):
    expect_audio_error(tmp_path / "missing.wav", "file not found")
    expect_audio_error(tmp_path, "not a regular file")
    (tmp_path / "empty.wav").write_bytes(b"")
    expect_audio_error(tmp_path / "empty.wav", "empty file (0 bytes)")
    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    expect_audio_error(tmp_path / "noise.wav", "cannot decode")
    soundfile.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 16000)
    assert (tmp_path / "zero.wav").stat().st_size > 0  # a valid header with no samples
    expect_audio_error(tmp_path / "zero.wav", "no samples")


def test_remove_dc():
    x = torch.randn(3, 1000) + torch.tensor([[1.0], [-2.0], [0.5]])
    y = remove_dc(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(3), rtol=0, atol=1e-6)
    torch.testing.assert_close(y, x - x.mean(-1, keepdim=True))
    lengths = torch.tensor([1000, 600, 1])
    padded = x.clone()
    padded[1, 600:] = 7.0
    y = remove_dc(padded, lengths)
    torch.testing.assert_close(y[1, :600], x[1, :600] - x[1, :600].mean(), rtol=0, atol=1e-6)
    assert torch.equal(y[1, 600:], torch.zeros(400)) and torch.equal(y[2], torch.zeros(1000))
    torch.testing.assert_close(y[0], x[0] - x[0].mean())


@pytest.mark.parametrize("bad", [[np.nan], [np.inf], [-np.inf], [np.inf, -np.inf], [3e38, 3e38]])
def test_non_finite_samples_are_refused_at_decoding(tmp_path, bad):
    """One check at decoding serves every reader. [inf, -inf] sums to NaN and [3e38, 3e38] is finite (a float64
    sum does not overflow), so both the fast path and the full check are exercised."""
    x = sine(440.0, 16000, 4000)
    x[1000: 1000 + len(bad)] = bad
    soundfile.write(tmp_path / "x.wav", x, 16000, subtype="FLOAT")
    finite = np.isfinite(x).all()
    if finite:
        assert load_audio(tmp_path / "x.wav").numel() == 4000
    else:
        expect_audio_error(tmp_path / "x.wav", "non-finite")
