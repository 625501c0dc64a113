"""Reading audio files into mono float32 tensors at the model's sample rate.

EAT and AST feed 16 kHz mono float audio in [-1, 1] (soundfile's float scale, not int16) to the
filterbank. Everything that goes wrong with a file becomes an :class:`AudioError` whose message names
the file, so a data loader can report or skip it without a stack trace.

This module is the one place audio is checked, for files (:func:`load_audio_with_rate`,
:func:`audio_info`: missing, empty, undecodable, truncated, non-finite) and for in-memory audio
(:func:`validate_audio`: numpy or torch, integer PCM scaled by dtype, non-finite refused;
:func:`check_sample_rate`: positive integers only). Every tool, dataset, the feature extractor, the
probe's embedding step and the HEAR API go through these.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import torch

RESAMPLERS = ("scipy", "torchaudio")


class AudioError(Exception):
    """An audio file could not be turned into samples; ``str(err)`` names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read audio file '{self.path}': {reason}")


def load_audio_with_rate(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Decode ``path`` (any format libsndfile reads: wav, flac, ogg, ...) to mono float32 ``[T]``
    at its native rate; channels are averaged. Returns ``(wave, sample_rate)``.

    Refused with an :class:`AudioError`: a missing, empty or undecodable file, a WAV whose header
    promises more frames than the file holds (truncated), no samples, and non-finite (NaN/inf) samples.
    """
    p = _check_file(path)
    return _decode(str(p), path, wav_data_frames(p))


def decode_audio_bytes(data: bytes, name: str, sample_rate: int | None = 16000) -> torch.Tensor:
    """:func:`load_audio` for an encoded file held in memory (e.g. a tar member), with the same refusals;
    ``name`` is what the errors call it."""
    if not data:
        raise AudioError(name, "empty file (0 bytes)")
    wave, sr = _decode(io.BytesIO(data), name, _wav_frames(io.BytesIO(data), len(data)))
    return wave if sample_rate is None or sr == sample_rate else resample(wave, sr, sample_rate)


def _decode(source: str | io.BytesIO, name: str | os.PathLike,
            header: tuple[int, int] | None) -> tuple[torch.Tensor, int]:
    try:
        data, sr = soundfile.read(source, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports every decoding problem through a handful of types
        raise AudioError(name, f"cannot decode ({_first_line(e)})") from None
    if header is not None and header[0] > data.shape[0]:
        raise AudioError(name, f"truncated: the header promises {header[0]} frames, the file holds {data.shape[0]}")
    if data.shape[0] == 0:
        raise AudioError(name, "no samples after decoding")
    if not _all_finite(data):
        raise AudioError(name, "non-finite samples (NaN or inf)")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(mono)), int(sr)


def _all_finite(data: np.ndarray) -> bool:
    """Whether every sample is finite. A finite sum proves it (a NaN or inf makes the sum NaN or inf) at a
    fraction of the cost of ``isfinite`` over the whole clip; only a non-finite (or overflowing) sum takes the
    full check. Decoding is the one place file audio is checked: the datasets and the shard writer rely on it."""
    return bool(np.isfinite(data.sum(dtype=np.float64))) or bool(np.isfinite(data).all())


def audio_info(path: str | os.PathLike) -> tuple[int, int]:
    """``(frames, sample_rate)`` from the file's header without decoding it, with the same refusals as
    :func:`load_audio_with_rate` that a header shows (missing/empty/unreadable file, truncated WAV)."""
    p = _check_file(path)
    try:
        info = soundfile.info(str(p))
    except Exception as e:
        raise AudioError(path, f"cannot decode ({_first_line(e)})") from None
    header = wav_data_frames(p)
    if header is not None and header[0] > header[1]:
        raise AudioError(path, f"truncated: the header promises {header[0]} frames, the file holds {header[1]}")
    if info.frames <= 0:
        raise AudioError(path, "no samples")
    return int(info.frames), int(info.samplerate)


def wav_data_frames(path: str | os.PathLike) -> tuple[int, int] | None:
    """For a RIFF/WAVE file: ``(frames its data chunk declares, whole frames the file holds)``; ``None``
    for other formats and for WAVs written without a known length (data size 0 or 0xFFFFFFFF, as from a
    pipe). libsndfile silently shortens a truncated WAV to what is present; this is how it is noticed."""
    try:
        with open(path, "rb") as f:
            return _wav_frames(f, os.fstat(f.fileno()).st_size)
    except OSError:
        return None


def _wav_frames(f: BinaryIO, size: int) -> tuple[int, int] | None:
    """:func:`wav_data_frames` of an open binary file (or an in-memory one) of ``size`` bytes."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    block = 0
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            return None
        cid, n = chunk[:4], int.from_bytes(chunk[4:], "little")
        if cid == b"fmt ":
            fmt = f.read(min(n, 16))
            if len(fmt) < 14:
                return None
            block = int.from_bytes(fmt[12:14], "little")
            f.seek(n - len(fmt) + (n & 1), os.SEEK_CUR)
        elif cid == b"data":
            if block <= 0 or n in (0, 0xFFFFFFFF):
                return None
            present = size - f.tell()
            return n // block, max(present, 0) // block
        else:
            f.seek(n + (n & 1), os.SEEK_CUR)


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise AudioError(path, "file not found" if not p.exists() else "not a regular file")
    if p.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    return p


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


# ---------------------------------------------------------------------------- in-memory audio

# Integer PCM -> float in [-1, 1): divide by 2^(bits-1) (soundfile's and WAV's convention); uint8 is offset.
PCM_SCALE = {torch.int8: 2.0**7, torch.int16: 2.0**15, torch.int32: 2.0**31}


def as_float_audio(audio: torch.Tensor | np.ndarray | Sequence, name: str = "audio") -> torch.Tensor:
    """``audio`` (a tensor, numpy array or nested list of samples) as a float32 tensor of the same shape.

    Floating point is taken as it is ([-1, 1] scale). Integer PCM is scaled by its dtype: int8, int16
    and int32 by 2^(bits-1), uint8 as 8-bit WAV (offset 128). Other dtypes (int64, as a Python list of
    ints becomes, bool, complex) are refused with a ``ValueError``: their scale cannot be known.
    No copy for float32 tensors; no finiteness check (see :func:`validate_audio`).
    """
    if isinstance(audio, np.ndarray):
        if audio.dtype.kind not in "fiub":
            raise ValueError(f"{name}: numpy dtype {audio.dtype} is not audio (use float or int8/16/32 PCM)")
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    elif not isinstance(audio, torch.Tensor):
        try:
            audio = torch.as_tensor(np.asarray(audio))
        except (TypeError, ValueError):
            raise ValueError(f"{name}: not an array of samples (got a {type(audio).__name__}: "
                             f"{str(audio)[:40]!r})") from None
    dt = audio.dtype
    if dt.is_floating_point:
        return audio.float()
    if dt in PCM_SCALE:
        return audio.float() / PCM_SCALE[dt]
    if dt == torch.uint8:
        return (audio.float() - 128.0) / 128.0
    raise ValueError(f"{name}: dtype {str(dt).replace('torch.', '')} has no known sample scale; pass float "
                     "samples in [-1, 1] or int8/int16/int32 PCM")


def validate_audio(audio: torch.Tensor | np.ndarray | Sequence, name: str = "audio") -> torch.Tensor:
    """:func:`as_float_audio` plus the checks every consumer of in-memory audio needs: at least one
    sample, and every sample finite (a NaN or inf would silently turn every output into NaN)."""
    wave = as_float_audio(audio, name)
    if wave.numel() == 0:
        raise ValueError(f"{name}: no samples (shape {tuple(wave.shape)})")
    if not bool(torch.isfinite(wave).all()):
        bad = int((~torch.isfinite(wave)).sum())
        raise ValueError(f"{name}: {bad} non-finite sample(s) (NaN or inf)")
    return wave


def check_sample_rate(sample_rate: object, name: str = "sample_rate") -> int:
    """``sample_rate`` as a positive ``int`` (an integral float or numpy integer is accepted); else
    ``ValueError`` naming ``name``."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a positive integer rate in Hz, got {sample_rate!r}")
    value = float(sample_rate)
    if not math.isfinite(value) or value <= 0 or not value.is_integer():
        raise ValueError(f"{name}: expected a positive integer rate in Hz, got {sample_rate!r}")
    return int(value)


def load_audio(
    path: str | os.PathLike, sample_rate: int | None = 16000, resampler: str = "scipy"
) -> torch.Tensor:
    """Decode ``path`` to a mono float32 ``[T]`` tensor resampled to ``sample_rate``.

    ``sample_rate=None`` keeps the file's own rate (use :func:`load_audio_with_rate` to learn it).
    ``resampler`` is ``"scipy"`` (polyphase, no extra dependency) or ``"torchaudio"`` (the windowed-sinc
    resampler the official EAT recipe used; needs torchaudio).
    """
    _check_resampler(resampler)
    if sample_rate is not None:
        sample_rate = check_sample_rate(sample_rate)
    wave, sr = load_audio_with_rate(path)
    if sample_rate is None or sr == sample_rate:
        return wave
    return resample(wave, sr, sample_rate, resampler=resampler)


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int, resampler: str = "scipy") -> torch.Tensor:
    """Resample float audio ``[..., T]`` from ``orig_sr`` to ``new_sr`` Hz along the last dim.

    The output has ``ceil(T * new_sr / orig_sr)`` samples, float32, on the input's device. ``"scipy"``
    runs ``scipy.signal.resample_poly`` with the up/down ratio reduced by their gcd (on CPU);
    ``"torchaudio"`` runs ``torchaudio.functional.resample`` (on the input's device).
    """
    _check_resampler(resampler)
    orig_sr, new_sr = check_sample_rate(orig_sr, "orig_sr"), check_sample_rate(new_sr, "new_sr")
    wave = wave.float()
    if orig_sr == new_sr:
        return wave
    if resampler == "torchaudio":
        try:
            import torchaudio.functional as taf
        except Exception as e:  # not installed (ImportError), or built for another torch (OSError: undefined symbol)
            raise ImportError(
                f"resampler='torchaudio' needs a torchaudio that loads with this torch {torch.__version__} "
                f"({type(e).__name__}: {_first_line(e)}); "
                "or use the default resampler='scipy'"
            ) from None
        return taf.resample(wave, orig_sr, new_sr)
    from scipy.signal import resample_poly

    g = math.gcd(orig_sr, new_sr)
    out = resample_poly(wave.detach().cpu().numpy(), new_sr // g, orig_sr // g, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(wave.device)


def remove_dc(wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Subtract each clip's mean over the last dim (EAT does this before the filterbank).

    With ``lengths`` (valid samples per clip, shape = leading dims) the mean is taken over the valid
    samples only and the padding after them stays exactly zero.
    """
    if lengths is None:
        return wave - wave.mean(dim=-1, keepdim=True)
    lengths = torch.as_tensor(lengths, device=wave.device)
    valid = torch.arange(wave.shape[-1], device=wave.device) < lengths.unsqueeze(-1)
    total = torch.where(valid, wave, 0).sum(dim=-1, keepdim=True)
    mean = total / lengths.clamp_min(1).unsqueeze(-1).to(wave.dtype)
    return torch.where(valid, wave - mean, 0)


def _check_resampler(resampler: str) -> None:
    if resampler not in RESAMPLERS:
        raise ValueError(f"unknown resampler {resampler!r}; choose one of {', '.join(RESAMPLERS)}")
