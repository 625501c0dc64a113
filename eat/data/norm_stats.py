"""Mean and std of the unnormalised log-mel input over many clips, for ``FrontendConfig.norm_mean`` / ``norm_std``.

Each clip goes through the front-end exactly as in training up to, not including, normalisation: decode
and resample, subtract the clip mean, fbank, pad/crop to ``target_length`` frames (padding counts, as in
the AST/EAT statistics; ``target_length=0`` uses each clip's own frames). The statistics are accumulated
per clip in float64 and merged with Chan's parallel formula, so millions of clips lose no precision.
Unreadable files are skipped and reported. Used by ``tools/compute_norm_stats.py`` and by
:func:`eat.train.pretrain.prepare_own_data`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from eat.audio.fbank import FrontendConfig, fbank, pad_or_crop
from eat.audio.io import AudioError, load_audio, remove_dc
from eat.data.loaders import quiet_dataloader, resolve_workers


class RunningStats:
    """Count, mean and sum of squared deviations of everything seen so far (float64, mergeable)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def update(self, values: torch.Tensor) -> None:
        """Fold in a chunk: its own mean/M2 in float64, then Chan et al.'s pairwise merge."""
        x = values.detach().reshape(-1).double()
        n = x.numel()
        if n == 0:
            return
        mean = float(x.mean())
        m2 = float((x - mean).square().sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        """Population standard deviation (ddof = 0)."""
        return math.sqrt(self.m2 / self.count) if self.count else float("nan")


class _Clips(Dataset):
    """Unnormalised model input of each listed clip, or the reason it could not be read."""

    def __init__(self, paths: list[Path], cfg: FrontendConfig, target_length: int, seed: int):
        self.paths, self.cfg, self.target_length, self.seed = paths, cfg, target_length, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        cfg = self.cfg
        try:
            wave = load_audio(self.paths[i], sample_rate=cfg.sample_rate)
        except AudioError as e:
            return str(e)
        if cfg.remove_dc:
            wave = remove_dc(wave)
        fb = fbank(wave, cfg.sample_rate, cfg.num_mel_bins, cfg.frame_length_ms, cfg.frame_shift_ms)
        if fb.shape[0] == 0:
            return f"{self.paths[i]}: shorter than one {cfg.frame_length_ms} ms frame"
        if self.target_length > 0:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            fb = pad_or_crop(fb, self.target_length, cfg.crop, g)
        return fb


def _keep(item: torch.Tensor | str) -> torch.Tensor | str:
    return item


def compute_stats(
    paths: list[Path], cfg: FrontendConfig, target_length: int, workers: int | str = 0, seed: int = 0,
    progress: bool = True, workers_key: str = "--workers",
) -> tuple[RunningStats, list[str]]:
    """Statistics over ``paths`` and the messages of the files that were skipped. ``workers``: loader
    processes, or ``"auto"`` (:func:`eat.data.loaders.resolve_workers`; ``workers_key`` names the setting)."""
    clips = _Clips(paths, cfg, target_length, seed)
    workers = resolve_workers(workers, workers_key)
    loader = quiet_dataloader(clips, batch_size=None, num_workers=workers, collate_fn=_keep)
    stats, skipped = RunningStats(), []
    for item in tqdm(loader, total=len(clips), desc="fbank stats", unit="clip", disable=not progress):
        if isinstance(item, str):
            skipped.append(item)
        else:
            stats.update(item)
    return stats, skipped
