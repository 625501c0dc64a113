"""Reading audio files into mono float32 tensors at the model's sample rate.

EAT and AST feed 16 kHz mono float audio in [-1, 1] (soundfile's float scale, not int16) to the
filterbank. Everything that goes wrong with a file becomes an :class:`AudioError` whose message names
the file, so a data loader can report or skip it without a stack trace.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

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
    at its native rate; channels are averaged. Returns ``(wave, sample_rate)``."""
    p = Path(path)
    if not p.is_file():
        raise AudioError(path, "file not found" if not p.exists() else "not a regular file")
    if p.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        data, sr = soundfile.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports every decoding problem through a handful of types
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AudioError(path, f"cannot decode ({reason})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "no samples after decoding")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(mono)), int(sr)


def load_audio(
    path: str | os.PathLike, sample_rate: int | None = 16000, resampler: str = "scipy"
) -> torch.Tensor:
    """Decode ``path`` to a mono float32 ``[T]`` tensor resampled to ``sample_rate``.

    ``sample_rate=None`` keeps the file's own rate (use :func:`load_audio_with_rate` to learn it).
    ``resampler`` is ``"scipy"`` (polyphase, no extra dependency) or ``"torchaudio"`` (the windowed-sinc
    resampler the official EAT recipe used; needs torchaudio).
    """
    _check_resampler(resampler)
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
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    wave = wave.float()
    if orig_sr == new_sr:
        return wave
    if resampler == "torchaudio":
        try:
            import torchaudio.functional as taf
        except ImportError:
            raise ImportError(
                "resampler='torchaudio' needs torchaudio (pip install torchaudio); "
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
