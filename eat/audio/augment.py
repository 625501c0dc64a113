"""Fine-tuning augmentations: mixup, SpecAugment, time roll, random gain and the SPC-2 noise.

Every function works on a batch (rows = examples), runs on the input's device with tensor ops only, and
draws its randomness from an explicit ``torch.Generator`` (``None``: the data device's global RNG) so a
run is reproducible from its seed. Random numbers are drawn on the generator's device and copied to the
data without waiting (a CPU generator stays valid for GPU batches); nothing is ever read back to the host,
so a training step on a GPU never waits for the device here. Beta variates are ratios of two Gamma draws.

Which recipe uses what (see ``recipes/configs/finetune_*.yaml``):

* EAT: spectrogram mixup (timm "batch" mode, one lambda ~ Beta(0.8, 0.8) per batch with probability
  0.9, partner = batch in reverse order), then SpecAugment (one frequency and one time mask per example,
  fill 0), waveform roll by a uniform offset in ``[0, len)`` and gain x (Beta(10, 10) + 0.5); SPC-2
  adds :func:`spc2_noise`.
* PaSST: gain in whole dB from ``{-7, ..., +6}``, waveform mixup (Beta(2, 2), lambda = max(lambda,
  1 - lambda)), spectrogram mixup per example (Beta(0.3, 0.3), same max).
* AST: waveform mixup Beta(10, 10), SpecAugment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class AugmentConfig:
    """Fine-tuning augmentation settings (all off by default).

    Mixup comes in two levels, each with its own probability and Beta(alpha, alpha): ``wave_*`` mixes raw
    waveforms (before the fbank), ``spec_*`` mixes model inputs. ``mixup_per_example`` draws lambda (and
    the apply/skip coin) per row instead of once per batch; ``mixup_dominant`` uses max(lambda, 1 - lambda)
    so each row keeps its own clip as the larger part (PaSST). ``freq_mask`` / ``time_mask`` are the
    SpecAugment width limits in bins / frames (EAT: ratio x 128 and ratio x target_length). ``gain`` is
    ``"none"``, ``"beta"`` (EAT: x (Beta(10, 10) + 0.5), i.e. 0.5..1.5 around 1) or ``"db"`` (PaSST:
    a whole number of dB from ``[-gain_db, gain_db)``).
    """

    wave_mixup_prob: float = 0.0
    wave_mixup_alpha: float = 0.0
    spec_mixup_prob: float = 0.0
    spec_mixup_alpha: float = 0.0
    mixup_per_example: bool = False
    mixup_dominant: bool = False
    freq_mask: float = 0.0
    time_mask: float = 0.0
    roll: bool = False
    gain: Literal["none", "beta", "db"] = "none"
    gain_db: int = 7
    spc2_noise: bool = False


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device``; a host-to-device copy does not wait (a copy to the host must, to be safe)."""
    device = torch.device(device)
    return t.to(device, non_blocking=device.type != "cpu")


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """U[0, 1) float32 draws from ``generator`` (on its device), returned on ``device``."""
    gen_device = generator.device if generator is not None else device
    return to_device(torch.rand(shape, generator=generator, device=gen_device), device)


def beta(alpha: float, n: int, generator: torch.Generator | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` draws of Beta(alpha, alpha) as float32 on ``device``: ``g1 / (g1 + g2)`` of two Gamma(alpha)
    variates, drawn in float64 from ``generator`` on its device."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be positive, got {alpha}")
    gen_device = generator.device if generator is not None else device
    g = torch._standard_gamma(torch.full((2, n), float(alpha), dtype=torch.float64, device=gen_device),
                              generator=generator)
    return to_device((g[0] / (g[0] + g[1])).float(), device)


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    prob: float = 1.0,
    generator: torch.Generator | None = None,
    per_example: bool = False,
    dominant: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix every row with its partner in the reversed batch: ``x' = lam x + (1 - lam) x.flip(0)``.

    ``y`` are float targets ``(B, C)`` (one-hot or multi-hot) mixed with the same weights, so the result
    is a soft target. With ``per_example=False`` (timm's batch mode, EAT) one coin decides with
    probability ``prob`` whether the whole batch is mixed and one lambda serves all rows; with
    ``per_example=True`` each row has its own coin and lambda. Rows not mixed get lambda = 1.
    Returns ``(x_mixed, y_mixed, lam)`` with ``lam`` of shape ``(B,)`` on ``x``'s device.
    """
    if y.dim() != 2 or not y.is_floating_point():
        raise ValueError(f"mixup needs float (B, C) targets, got {tuple(y.shape)} {y.dtype}")
    b = x.shape[0]
    draws = b if per_example else 1
    lam = beta(alpha, draws, generator, x.device)
    if dominant:
        lam = torch.maximum(lam, 1.0 - lam)
    apply = uniform((draws,), generator, x.device) < prob
    lam = torch.where(apply, lam, torch.ones_like(lam)).expand(b)
    lx = lam.to(x.dtype).view(b, *([1] * (x.dim() - 1)))
    ly = lam.to(y.dtype).view(b, 1)
    return lx * x + (1 - lx) * x.flip(0), ly * y + (1 - ly) * y.flip(0), lam


def mask_spans(
    batch: int, size: int, max_width: float, generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """One random span per row as a bool ``(batch, size)`` mask (True = masked).

    Width ``w = u * max_width`` (u ~ U[0, 1)) and start ``s = v * (size - w)``; positions
    ``floor(s) <= i < floor(s + w)`` are masked, so a span is never wider than ``max_width`` and always
    lies inside the axis (torchaudio's ``mask_along_axis_iid`` draws the same way).
    """
    max_width = min(float(max_width), float(size))
    u = uniform((batch, 2), generator, device)
    width = u[:, 0] * max_width
    start = u[:, 1] * (size - width)
    pos = torch.arange(size, device=device)
    return (pos >= start.floor().unsqueeze(1)) & (pos < (start + width).floor().unsqueeze(1))


def spec_augment(
    x: torch.Tensor, freq_mask: float, time_mask: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One frequency and one time mask per example on ``x (B, T, F)`` (or ``(B, 1, T, F)``), filled with 0.

    Each example draws its own spans (iid masks), with widths uniform in ``[0, freq_mask)`` bins and
    ``[0, time_mask)`` frames. Returns a new tensor.
    """
    b, t, f = x.shape[0], x.shape[-2], x.shape[-1]
    masked = torch.zeros(b, t, f, dtype=torch.bool, device=x.device)
    if freq_mask > 0:
        masked |= mask_spans(b, f, freq_mask, generator, x.device).unsqueeze(1)
    if time_mask > 0:
        masked |= mask_spans(b, t, time_mask, generator, x.device).unsqueeze(2)
    if x.dim() == 4:
        masked = masked.unsqueeze(1)
    return x.masked_fill(masked, 0.0)


def roll_rows(x: torch.Tensor, shifts: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Circularly roll each row of ``x`` along ``dim`` by its own integer ``shifts[b]`` (like torch.roll)."""
    dim = dim % x.dim()
    size = x.shape[dim]
    pos = torch.arange(size, device=x.device).view([size if d == dim else 1 for d in range(x.dim())])
    index = (pos - to_device(shifts, x.device).view([-1] + [1] * (x.dim() - 1))).remainder(size)
    return x.gather(dim, index.expand(x.shape))


def random_roll(wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """EAT's roll: each clip of ``wave (B, S)`` (or one ``(S,)`` clip) rolled by a uniform offset in [0, S)."""
    rows = wave.reshape(-1, wave.shape[-1])
    shifts = (uniform((rows.shape[0],), generator, rows.device).double() * rows.shape[-1]).long()
    return roll_rows(rows, shifts).reshape(wave.shape)


def random_gain(
    wave: torch.Tensor, mode: Literal["beta", "db"], generator: torch.Generator | None = None, max_db: int = 7
) -> torch.Tensor:
    """Scale each clip of ``wave (B, S)`` (or one ``(S,)`` clip) by a random factor.

    ``"beta"``: factor = Beta(10, 10) + 0.5 (EAT; mean 1, mostly within 0.8..1.2).
    ``"db"``: a whole number of dB from ``{-max_db, ..., max_db - 1}``, factor 10^(dB / 20) (PaSST).
    """
    rows = wave.reshape(-1, wave.shape[-1])
    n = rows.shape[0]
    if mode == "beta":
        factor = beta(10.0, n, generator, rows.device) + 0.5
    elif mode == "db":
        db = (uniform((n,), generator, rows.device).double() * 2 * max_db).floor() - max_db
        factor = 10.0 ** (db / 20.0)
    else:
        raise ValueError(f"unknown gain mode {mode!r}; choose 'beta' or 'db'")
    return (rows * factor.to(rows.dtype).unsqueeze(1)).reshape(wave.shape)


def spc2_noise(x: torch.Tensor, generator: torch.Generator | None = None, max_shift: int = 10) -> torch.Tensor:
    """EAT/AST Speech Commands noise on normalised inputs ``x (B, T, F)`` (or ``(B, 1, T, F)``).

    Adds ``U[0, 1) * (c / 10)`` to every bin with one ``c ~ U[0, 1)`` per example, then rolls each
    example along time by an integer in ``[-max_shift, max_shift)`` frames (NumPy ``randint(-10, 10)``).
    """
    b = x.shape[0]
    scale = uniform((b,), generator, x.device).to(x.dtype) / 10
    noise = uniform(tuple(x.shape), generator, x.device).to(x.dtype)
    noisy = x + noise * scale.view([b] + [1] * (x.dim() - 1))
    shifts = (uniform((b,), generator, x.device).double() * 2 * max_shift).floor().long() - max_shift
    return roll_rows(noisy, shifts, dim=-2)


def augment_waveform(wave: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Per-clip waveform augmentation (roll, then gain), usable as a dataset ``wave_transform``."""
    if cfg.roll:
        wave = random_roll(wave, generator)
    if cfg.gain != "none":
        wave = random_gain(wave, cfg.gain, generator, cfg.gain_db)
    return wave


def augment_batch(
    x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-side training augmentation in EAT's order: spectrogram mixup, SpecAugment, SPC-2 noise.

    ``x`` are normalised inputs ``(B, T, F)``, ``y`` float targets ``(B, C)``; returns the new pair.
    """
    if cfg.spec_mixup_prob > 0:
        x, y, _ = mixup(
            x, y, cfg.spec_mixup_alpha, cfg.spec_mixup_prob, generator, cfg.mixup_per_example, cfg.mixup_dominant
        )
    if cfg.freq_mask > 0 or cfg.time_mask > 0:
        x = spec_augment(x, cfg.freq_mask, cfg.time_mask, generator)
    if cfg.spc2_noise:
        x = spc2_noise(x, generator)
    return x, y
