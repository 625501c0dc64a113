"""Batched Kaldi-compatible log-mel filterbank and the EAT/AST input recipe built on it.

``fbank`` gives the same numbers as Kaldi's ``compute-fbank-feats`` (and
``torchaudio.compliance.kaldi.fbank``) for the settings EAT and AST use, but for a whole batch at once
on any device: the frames are a strided view of the signal, pre-emphasis is applied to the signal once,
per-frame DC removal is a rank-one correction, then one FFT and a few small mel matmuls per block (the
whole batch on accelerators, ~1k frames at a time on CPU, where that is what keeps the data in cache).

``waveform_to_input`` is the full recipe (clip DC removal -> fbank -> pad/crop -> normalise); the
trainer runs it on the GPU on a padded batch and the datasets run it on single clips.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

from eat.audio.io import as_float_audio, check_sample_rate, remove_dc
from eat.config import ConfigError

LOG_FLOOR = torch.finfo(torch.float32).eps

# (mean, std) of the unnormalised, padded fbank; inputs become (fbank - mean) / (2 * std).
NORM_PRESETS: dict[str, tuple[float, float]] = {
    "audioset": (-4.268, 4.569),
    "esc50": (-6.627, 5.359),
    "spc2": (-6.846, 5.565),
}
# Frames per clip in the official recipes (10 s AudioSet, 5 s ESC-50, 1 s Speech Commands, padded).
PRESET_TARGET_LENGTH: dict[str, int] = {"audioset": 1024, "esc50": 512, "spc2": 128}

WINDOWS = ("hanning", "hamming", "povey", "rectangular", "blackman")


def mel_scale(freq: torch.Tensor | float) -> torch.Tensor | float:
    """HTK/Kaldi mel scale, 1127 ln(1 + f / 700)."""
    if isinstance(freq, torch.Tensor):
        return 1127.0 * torch.log1p(freq / 700.0)
    return 1127.0 * math.log1p(freq / 700.0)


@functools.lru_cache(maxsize=32)
def mel_banks(
    num_mel_bins: int,
    n_fft: int,
    sample_rate: float,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Kaldi triangular mel filters as a ``[n_fft // 2 + 1, num_mel_bins]`` fp32 matrix (cached).

    Filter ``b`` rises linearly *in mel* from edge ``b`` to ``b + 1`` and falls to ``b + 2``, with
    ``num_mel_bins + 2`` edges evenly spaced in mel between ``low_freq`` and ``high_freq``
    (``high_freq <= 0`` counts back from Nyquist). Kaldi weights only the first ``n_fft // 2`` FFT bins,
    so the Nyquist row is zero. Like Kaldi we evaluate the filters in single precision: exact (float64)
    weights differ by up to ~2e-5, which moves a log-mel value by up to ~1e-3 where one FFT bin
    dominates a narrow low filter.
    """
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0.0 <= low_freq < high <= nyquist:
        raise ValueError(f"need 0 <= low_freq < high_freq <= {nyquist} Hz, got low={low_freq}, high={high}")
    mel_lo, mel_hi = mel_scale(low_freq), mel_scale(high)
    step = (mel_hi - mel_lo) / (num_mel_bins + 1)
    index = torch.arange(num_mel_bins, dtype=torch.float32)
    left, center, right = mel_lo + index * step, mel_lo + (index + 1) * step, mel_lo + (index + 2) * step
    bin_freq = torch.arange(n_fft // 2, dtype=torch.float32) * (sample_rate / n_fft)
    bin_mel = (1127.0 * torch.log(1.0 + bin_freq / 700.0)).unsqueeze(1)
    rising = (bin_mel - left) / (center - left)
    falling = (right - bin_mel) / (right - center)
    weights = torch.where(bin_mel <= center, rising, falling)
    weights = torch.where((bin_mel > left) & (bin_mel < right), weights, 0.0)
    nyquist_row = weights.new_zeros(1, num_mel_bins)
    return torch.cat([weights, nyquist_row]).to(device)


@functools.lru_cache(maxsize=32)
def frame_window(kind: str, length: int, device: torch.device) -> torch.Tensor:
    """Kaldi's analysis windows (symmetric, i.e. ``periodic=False``) as fp32 ``[length]`` (cached)."""
    if kind == "hanning":
        w = torch.hann_window(length, periodic=False, dtype=torch.float64)
    elif kind == "hamming":
        w = torch.hamming_window(length, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float64)
    elif kind == "povey":
        w = torch.hann_window(length, periodic=False, dtype=torch.float64).pow(0.85)
    elif kind == "rectangular":
        w = torch.ones(length, dtype=torch.float64)
    elif kind == "blackman":
        w = torch.blackman_window(length, periodic=False, dtype=torch.float64)
    else:
        raise ValueError(f"unknown window {kind!r}; choose one of {', '.join(WINDOWS)}")
    return w.to(device=device, dtype=torch.float32)


def num_frames(
    num_samples: int | torch.Tensor,
    sample_rate: int = 16000,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    snip_edges: bool = True,
) -> int | torch.Tensor:
    """How many frames :func:`fbank` makes from ``num_samples`` (works elementwise on tensors)."""
    win, hop = _frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    if snip_edges:
        if isinstance(num_samples, torch.Tensor):
            return torch.where(num_samples >= win, (num_samples - win) // hop + 1, 0)
        return (num_samples - win) // hop + 1 if num_samples >= win else 0
    return (num_samples + hop // 2) // hop


def fbank(
    waveforms: torch.Tensor,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemphasis: float = 0.97,
    remove_dc_offset: bool = True,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    window: str = "hanning",
    snip_edges: bool = True,
) -> torch.Tensor:
    """Log-mel filterbank of ``waveforms [..., S]`` -> fp32 ``[..., frames, num_mel_bins]``.

    Kaldi ``compute-fbank-feats`` semantics with the EAT/AST settings as defaults: 25 ms frames every
    10 ms, per-frame DC removal, pre-emphasis (the first sample of a frame is its own predecessor),
    symmetric window, zero-padding to the next power of two for the FFT, power spectrum, HTK-mel
    triangular filters, natural log floored at fp32 eps; no dither, no energy. ``snip_edges=True`` keeps
    only frames that fit (10 s at 16 kHz -> 998 frames); ``False`` centres frames on multiples of the
    shift and mirrors the signal at the edges. numpy arrays and integer PCM (scaled by dtype, see
    :func:`eat.audio.io.as_float_audio`) are accepted. Any input dtype is computed in fp32 (autocast is turned
    off inside; a global TF32 matmul setting on CUDA still applies to the mel projection).
    """
    if not (isinstance(waveforms, torch.Tensor) and waveforms.is_floating_point()):
        waveforms = as_float_audio(waveforms, "waveforms")  # numpy / integer PCM, scaled by dtype
    if waveforms.dim() == 0:
        raise ValueError("waveforms: expected samples [..., S], got a scalar")
    sample_rate = check_sample_rate(sample_rate)
    if isinstance(num_mel_bins, bool) or not isinstance(num_mel_bins, int) or num_mel_bins < 1:
        raise ValueError(f"num_mel_bins: expected a positive integer, got {num_mel_bins!r}")
    win, hop = _frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    n_fft = 1 << (win - 1).bit_length()
    lead = waveforms.shape[:-1]
    signal = waveforms.reshape(math.prod(lead), waveforms.shape[-1]).to(torch.float32)
    if not snip_edges:
        signal = _mirror_extend(signal, win, hop)
    count = (signal.shape[-1] - win) // hop + 1 if signal.shape[-1] >= win else 0
    out = signal.new_empty(signal.shape[0], count, num_mel_bins)
    if out.numel() == 0:
        return out.reshape(*lead, count, num_mel_bins)
    device = signal.device
    spec = _Spec(
        win, hop, n_fft, preemphasis, remove_dc_offset, frame_window(window, win, device),
        _mel_blocks(num_mel_bins, n_fft, float(sample_rate), float(low_freq), float(high_freq), device),
    )
    # On CPU, blocks of ~1k frames keep every intermediate in cache and let the allocator recycle them
    # (one batch-sized pass per step is 2-4x slower there); on accelerators the whole batch is one block.
    block = _CPU_BLOCK_FRAMES if device.type == "cpu" else signal.shape[0] * count
    buf = signal.new_zeros(min(block, signal.shape[0] * count), n_fft)  # rows of zero-padded frames
    with torch.autocast(device.type, enabled=False):
        for c0, c1, f0, f1 in _blocks(signal.shape[0], count, block):
            segment = signal[c0:c1, f0 * hop : (f1 - 1) * hop + win]
            _log_mel_block(segment, spec, buf, out[c0:c1, f0:f1])
    return out.reshape(*lead, count, num_mel_bins)


_CPU_BLOCK_FRAMES = 1024
_MEL_GROUP = 16  # filters per mel block (fastest of 8..128 on CPU)


@dataclass(frozen=True)
class _Spec:
    win: int
    hop: int
    n_fft: int
    preemphasis: float
    remove_dc: bool
    window: torch.Tensor
    mel: tuple[tuple[int, int, torch.Tensor], ...]


def _blocks(clips: int, count: int, block: int):
    """(clip0, clip1, frame0, frame1) pieces of at most ``block`` frames (whole clips when they fit)."""
    if count > block:
        for c in range(clips):
            for f0 in range(0, count, block):
                yield c, c + 1, f0, min(f0 + block, count)
    else:
        step = max(1, block // count)
        for c0 in range(0, clips, step):
            yield c0, min(c0 + step, clips), 0, count


def _log_mel_block(segment: torch.Tensor, spec: _Spec, buf: torch.Tensor, out: torch.Tensor) -> None:
    """Write the log-mel frames of ``segment [n, L]`` (frames start at 0, hop, ...) into ``out``."""
    n, frames = out.shape[0], out.shape[1]
    a = spec.preemphasis
    raw = segment.unfold(-1, spec.win, spec.hop)  # [n, frames, win], a view
    # Pre-emphasis on the signal, y[t] = s[t] - a s[t-1]: inside a frame this is Kaldi's recurrence for
    # every sample but the first, which Kaldi takes as (1 - a) s[start] and is patched below.
    emph = raw
    if a != 0.0:
        emph_signal = torch.empty_like(segment)
        emph_signal[:, 0] = segment[:, 0]
        torch.sub(segment[:, 1:], segment[:, :-1], alpha=a, out=emph_signal[:, 1:])
        emph = emph_signal.unfold(-1, spec.win, spec.hop)
    rows = buf[: n * frames]
    head = rows.view(n, frames, spec.n_fft)[..., : spec.win]  # the rest of each row stays zero
    if spec.remove_dc:
        # Removing the frame mean m before pre-emphasis shifts every emphasised sample by -(1 - a) m.
        mean = raw.mean(dim=-1, keepdim=True)
        torch.sub(emph, mean, alpha=1.0 - a, out=head)
    else:
        mean = None
        head.copy_(emph)
    if a != 0.0:
        first = raw[..., 0] if mean is None else raw[..., 0] - mean[..., 0]
        head[..., 0] = (1.0 - a) * first
    head.mul_(spec.window)
    # Squared real and imaginary parts side by side; the mel blocks repeat each filter weight for both.
    power_parts = torch.view_as_real(torch.fft.rfft(rows, dim=-1)).flatten(-2).square_()
    mel = out.view(n * frames, out.shape[-1])
    torch.cat([power_parts[:, k0:k1] @ w for k0, k1, w in spec.mel], dim=-1, out=mel)
    mel.clamp_min_(LOG_FLOOR).log_()


@functools.lru_cache(maxsize=32)
def _mel_blocks(
    num_mel_bins: int, n_fft: int, sample_rate: float, low_freq: float, high_freq: float, device: torch.device
) -> tuple[tuple[int, int, torch.Tensor], ...]:
    """The mel matrix cut into column groups of 16 filters, each with only the rows (FFT bins) it uses.

    Rows are doubled (real^2 and imag^2 of each bin share a weight). Each FFT bin feeds at most two
    neighbouring filters, so this does 13 % of the multiply-adds of the dense product (128 EAT mels).
    """
    dense = mel_banks(num_mel_bins, n_fft, sample_rate, low_freq, high_freq, device).repeat_interleave(2, dim=0)
    groups = []
    for b0 in range(0, num_mel_bins, _MEL_GROUP):
        b1 = min(b0 + _MEL_GROUP, num_mel_bins)
        k0, k1 = _mel_rows(num_mel_bins, n_fft, sample_rate, low_freq, high_freq, b0, b1)
        groups.append((2 * k0, 2 * k1, dense[2 * k0 : 2 * k1, b0:b1].contiguous()))
    return tuple(groups)


def _mel_rows(num_mel_bins: int, n_fft: int, sample_rate: float, low_freq: float, high_freq: float,
              b0: int, b1: int) -> tuple[int, int]:
    """FFT bins ``[k0, k1)`` that can feed filters ``b0 .. b1 - 1``: those whose mel lies between the left
    edge of filter ``b0`` and the right edge of filter ``b1 - 1``, widened by one bin on each side (the
    float32 filters are zero outside; the margin covers rounding at the edges).

    Plain Python arithmetic on the settings, not a look at the matrix: reading a device tensor's values
    (``nonzero``) would make the first fbank call of a run wait for the GPU."""
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    mel_lo, mel_hi = mel_scale(low_freq), mel_scale(high)
    step = (mel_hi - mel_lo) / (num_mel_bins + 1)
    left, right = mel_lo + b0 * step, mel_lo + (b1 + 1) * step
    bins = [k for k in range(n_fft // 2) if left < mel_scale(k * sample_rate / n_fft) < right]
    if not bins:
        return 0, 0
    return max(0, bins[0] - 1), min(n_fft // 2, bins[-1] + 2)


def clear_caches() -> None:
    """Forget the cached windows and mel matrices (they are kept per device). ``eat.apps.gpu_dryrun`` calls this
    around its fake-tensor region, whose tensors must not outlive it in a cache."""
    for cached in (mel_banks, frame_window, _mel_blocks):
        cached.cache_clear()


def pad_or_crop(
    fb: torch.Tensor,
    target_length: int,
    mode: str = "head",
    generator: torch.Generator | None = None,
    num_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bring ``fb [..., frames, bins]`` to exactly ``target_length`` frames.

    Short inputs are zero-padded at the end (0 in the log-mel domain, i.e. before normalisation, as in
    EAT/AST). Long inputs keep the first ``target_length`` frames (``mode="head"``, the official recipe)
    or a random window per clip (``mode="random"``, drawn from ``generator``). ``num_valid`` (frames per
    clip, leading-dims shape) limits the random window to each clip's real frames in a padded batch.
    """
    if mode not in ("head", "random"):
        raise ValueError(f"unknown crop mode {mode!r}; choose 'head' or 'random'")
    frames = fb.shape[-2]
    if frames < target_length:
        return torch.nn.functional.pad(fb, (0, 0, 0, target_length - frames))
    if mode == "head" or frames == target_length:
        return fb[..., :target_length, :]
    lead = fb.shape[:-2]
    valid = torch.full(lead, frames) if num_valid is None else torch.as_tensor(num_valid).cpu().expand(lead)
    room = (valid - target_length).clamp_min(0)
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand(lead, generator=generator, device=gen_device, dtype=torch.float64).cpu()
    offset = torch.minimum((u * (room + 1)).long(), room).to(fb.device)
    index = offset.unsqueeze(-1) + torch.arange(target_length, device=fb.device)
    return fb.gather(-2, index.unsqueeze(-1).expand(*lead, target_length, fb.shape[-1]))


def normalize(fb: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """EAT/AST normalisation ``(fb - mean) / (2 * std)`` (inputs end up with std ~0.5)."""
    return (fb - mean) / (2.0 * std)


def denormalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Inverse of :func:`normalize`: back to log-mel values."""
    return x * (2.0 * std) + mean


@dataclass
class FrontendConfig:
    """Everything that turns a waveform into model input; saved with exported encoders (JSON-safe)."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    target_length: int = 1024
    crop: str = "head"  # "head" (official) or "random"
    norm_mean: float = NORM_PRESETS["audioset"][0]
    norm_std: float = NORM_PRESETS["audioset"][1]
    remove_dc: bool = True  # subtract the clip mean first (EAT does; HF's AST extractor does not)

    def __post_init__(self) -> None:
        for key in ("sample_rate", "num_mel_bins", "target_length"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be positive, got {getattr(self, key)!r}")
        if self.frame_shift_ms <= 0 or self.frame_length_ms < self.frame_shift_ms:
            raise ConfigError(
                f"frame_length_ms/frame_shift_ms: need 0 < shift <= length, got "
                f"{self.frame_length_ms}/{self.frame_shift_ms}"
            )
        if self.crop not in ("head", "random"):
            raise ConfigError(f"crop: {self.crop!r} is not one of ['head', 'random']")
        if not math.isfinite(self.norm_mean):
            raise ConfigError(f"norm_mean: must be a finite number, got {self.norm_mean!r}")
        if not math.isfinite(self.norm_std) or self.norm_std <= 0:
            raise ConfigError(f"norm_std: must be a positive finite number, got {self.norm_std!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> FrontendConfig:
        """Official settings for ``audioset`` / ``esc50`` / ``spc2`` (norm stats and target length)."""
        if name not in NORM_PRESETS:
            raise ConfigError(f"unknown front-end preset {name!r}; choose one of {', '.join(NORM_PRESETS)}")
        mean, std = NORM_PRESETS[name]
        fields = {"norm_mean": mean, "norm_std": std, "target_length": PRESET_TARGET_LENGTH[name]}
        return cls(**{**fields, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def waveform_to_input(
    waves: torch.Tensor,
    cfg: FrontendConfig,
    lengths: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Model input from audio at ``cfg.sample_rate``: ``[S] -> [T, F]`` or ``[B, S] -> [B, T, F]``.

    Steps: subtract each clip's mean (over its ``lengths[b]`` valid samples when the batch is padded),
    fbank, pad/crop to ``cfg.target_length`` frames, normalise. Frames that reach into a clip's padding
    become 0 before normalisation, so a padded batch gives the same rows as each clip on its own.
    Runs on the input's device.
    """
    if not (isinstance(waves, torch.Tensor) and waves.is_floating_point()):
        waves = as_float_audio(waves, "waves")
    if waves.dim() not in (1, 2):
        raise ValueError(f"waveform_to_input expects [S] or [B, S] audio, got shape {tuple(waves.shape)}")
    waves = waves.to(torch.float32)
    if cfg.remove_dc:
        waves = remove_dc(waves, lengths)
    fb = fbank(
        waves,
        sample_rate=cfg.sample_rate,
        num_mel_bins=cfg.num_mel_bins,
        frame_length_ms=cfg.frame_length_ms,
        frame_shift_ms=cfg.frame_shift_ms,
    )
    valid = None
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=fb.device)
        valid = num_frames(lengths, cfg.sample_rate, cfg.frame_length_ms, cfg.frame_shift_ms)
        keep = torch.arange(fb.shape[-2], device=fb.device) < valid.unsqueeze(-1)
        fb = fb * keep.unsqueeze(-1)
    fb = pad_or_crop(fb, cfg.target_length, cfg.crop, generator, valid)
    return normalize(fb, cfg.norm_mean, cfg.norm_std)


def _frame_sizes(sample_rate: int, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int]:
    win = int(sample_rate * frame_length_ms / 1000)
    hop = int(sample_rate * frame_shift_ms / 1000)
    if hop < 1 or win < hop:
        raise ValueError(f"need 1 <= shift <= window, got {hop} and {win} samples")
    return win, hop


def _mirror_extend(signal: torch.Tensor, win: int, hop: int) -> torch.Tensor:
    """Kaldi's ``snip_edges=False`` framing as plain framing of a mirrored signal.

    Frame ``i`` starts at ``i * hop + hop // 2 - win // 2``; samples outside ``[0, S)`` are mirrored
    with the edge sample repeated (s[-1] = s[0], s[S] = s[S-1]).
    """
    length = signal.shape[-1]
    count = (length + hop // 2) // hop
    if count == 0:
        return signal[:, :0]
    first = hop // 2 - win // 2
    pos = torch.arange(first, first + (count - 1) * hop + win, device=signal.device)
    pos = pos.remainder(2 * length)
    pos = torch.where(pos >= length, 2 * length - 1 - pos, pos)
    return signal[:, pos]
