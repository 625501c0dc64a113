"""Streaming a long recording through a frame model window by window, without decoding it whole.

A file is read window by window with soundfile (at the front-end's sample rate; other rates are decoded
whole and resampled), so memory depends on the window and the batch, not on the file. The plan, in the
model's time columns (patch columns, 160 ms for EAT):

* windows of ``W`` columns start every ``W - 2 * context`` columns; each window keeps the columns at least
  ``context`` columns from its inner edges (the first window keeps its start, the last its end, and the last
  window is moved back so it is full), so every column's output comes from exactly one window and has
  ``context`` columns of audio on both sides (:func:`plan_windows`);
* a window's fbank is computed from exactly the samples its frames read: fbank frame ``i`` reads samples
  ``[i * shift, i * shift + length)``, so the windowed frames are the frames of the whole file (the clip mean
  that the front-end subtracts is measured over the whole file in a first streaming pass) (:func:`window_fbank`);
* the kept column outputs are concatenated at their absolute column index (:func:`stream_column_logits`).

Used by SED inference (:mod:`eat.detect`) and the SED fine-tuning's validation (:mod:`eat.train.sed`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import soundfile
import torch
from torch import Tensor
from tqdm import tqdm

from eat.audio.fbank import FrontendConfig, num_frames, waveform_to_input
from eat.audio.io import AudioError, audio_info, load_audio, resample

BLOCK_SAMPLES = 1 << 20  # samples per read of the streaming mean pass


@dataclass
class Window:
    """One window of the plan: columns ``[start, stop)`` are encoded, ``[keep_from, keep_to)`` kept."""

    start: int
    stop: int
    keep_from: int
    keep_to: int


def plan_windows(total_columns: int, window_columns: int, context: int) -> list[Window]:
    """The window plan of the module docstring for a file of ``total_columns`` columns."""
    if window_columns < 1 or not 0 <= 2 * context < window_columns:
        raise ValueError(f"need 0 <= 2 * context < window, got context {context} and window {window_columns}")
    plan, a = [], 0
    while a < total_columns:
        s = min(max(a - context, 0), max(total_columns - window_columns, 0))
        e = min(s + window_columns, total_columns)
        b = total_columns if e == total_columns else e - context
        plan.append(Window(s, e, a, b))
        a = b
    return plan


class AudioSource:
    """Random access to a file's samples (mono float32 at the front-end rate) without decoding it whole."""

    def __init__(self, path: str | Path, frontend: FrontendConfig):
        self.path = Path(path)
        frames, sr = audio_info(self.path)
        self.wave: Tensor | None = None
        if sr != frontend.sample_rate:  # resampling needs the whole signal: decode it
            self.wave = resample(load_audio(self.path, sr), sr, frontend.sample_rate)
            frames = self.wave.shape[-1]
        self.num_samples = int(frames)
        self.sample_rate = frontend.sample_rate
        self.mean = self._mean() if frontend.remove_dc else 0.0

    def read(self, start: int, stop: int) -> Tensor:
        """Samples ``[start, min(stop, num_samples))`` as a 1-D float32 tensor (mean removed)."""
        stop = min(stop, self.num_samples)
        if self.wave is not None:
            x = self.wave[start:stop]
        else:
            try:
                data, _ = soundfile.read(str(self.path), start=start, stop=stop, dtype="float32", always_2d=True)
            except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
                raise AudioError(self.path, f"cannot decode samples {start}-{stop} ({str(e).splitlines()[0]})") from None
            x = torch.from_numpy(data.mean(axis=1))
        return x.float() - self.mean

    def _mean(self) -> float:
        if self.wave is not None:
            return float(self.wave.double().mean())
        total = 0.0
        with soundfile.SoundFile(str(self.path)) as f:
            for block in f.blocks(blocksize=BLOCK_SAMPLES, dtype="float64", always_2d=True):
                total += float(block.mean(axis=1).sum())
        return total / self.num_samples

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


def window_fbank(source: AudioSource, frontend: FrontendConfig, first_frame: int, frames: int,
                 total_frames: int, pad_value: float) -> Tensor:
    """Normalised fbank frames ``[first_frame, first_frame + frames)`` of the file ``(frames, F)``; frames past
    the file's last full frame hold ``pad_value``."""
    shift = int(frontend.sample_rate * frontend.frame_shift_ms / 1000)
    length = int(frontend.sample_rate * frontend.frame_length_ms / 1000)
    real = max(0, min(frames, total_frames - first_frame))
    out = torch.full((frames, frontend.num_mel_bins), pad_value)
    if real > 0:
        wave = source.read(first_frame * shift, (first_frame + real - 1) * shift + length)
        cfg = dataclasses.replace(frontend, target_length=real, crop="head", remove_dc=False)
        out[:real] = waveform_to_input(wave, cfg)
    return out


def stream_column_logits(
    source: AudioSource, column_fn: Callable[[Tensor], Tensor], frontend: FrontendConfig, patch: int, stride: int,
    window_columns: int, context: int, pad_value: float, batch_size: int = 8, progress: bool = False,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Column logits ``(T', C)`` of a whole file, window by window (see the module docstring).

    ``column_fn`` maps a normalised fbank batch ``(B, T, F)`` to column outputs ``(B, T', C)``; ``patch`` /
    ``stride`` are the encoder's time patch size and stride in frames."""
    total_frames = int(num_frames(source.num_samples, frontend.sample_rate, frontend.frame_length_ms,
                                  frontend.frame_shift_ms))
    if total_frames < 1:
        raise AudioError(source.path, f"shorter than one {frontend.frame_length_ms} ms frame")
    total_cols = max(1, -(-max(total_frames - patch, 0) // stride) + 1)
    plan = plan_windows(total_cols, window_columns, context)
    pieces: list[Tensor] = []
    bar = tqdm(total=len(plan), desc=source.path.name, unit="win", disable=not progress, leave=False)
    for batch in _chunks(plan, batch_size):
        cols = batch[0].stop - batch[0].start  # every window has min(W, T') columns
        frames = (cols - 1) * stride + patch
        x = torch.stack([window_fbank(source, frontend, w.start * stride, frames, total_frames, pad_value)
                         for w in batch]).to(device)
        with torch.inference_mode():
            out = column_fn(x).float().cpu()
        for w, o in zip(batch, out, strict=True):
            pieces.append(o[w.keep_from - w.start : w.keep_to - w.start])
        bar.update(len(batch))
    bar.close()
    return torch.cat(pieces)


def _chunks(plan: list[Window], n: int) -> Iterator[list[Window]]:
    """Batches of ``n`` consecutive windows."""
    for i in range(0, len(plan), n):
        yield plan[i : i + n]
