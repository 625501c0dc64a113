"""Polyphonic probe tasks: multi-label tagging of mixtures of 2-3 clips of a single-label task.

A mixture-pretrained encoder (SSLAM stage 2, :mod:`eat.model.mixing`) should tell which sources sound at
once. This builds that test from any single-label task of the probe protocol (``train.csv`` / ``test.csv``,
e.g. the instruments or drums of :mod:`eat.data.real_benchmark`): each mixture sums 2 or 3 clips of
*different* classes and is labelled with all of them (multi-hot); the linear probe is scored by mAP
(:func:`eat.eval.probe.probe`, ``task="multilabel"``). Training mixtures are built from the training clips
only and test mixtures from the test clips only, so the sources of the test mixtures are held out from the
probe's training as the clips of the single-label task are. The choice of clips is seeded.

Levels: every source is scaled to the same RMS (so no class is drowned by a louder recording), then the
sum is scaled down as a whole if its peak exceeds 1. The sources start together; the mixture is as long
as the longest source (shorter ones are zero-padded), so with clips of unequal length the tail may hold
fewer sources than the label says, as in real weakly labelled recordings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

POLY_PREFIX = "poly-"  # task name of the polyphonic version of a task: poly-instruments, ...


def mix_clips(waves: Sequence[Tensor], eps: float = 1e-8) -> Tensor:
    """The equal-RMS sum of ``waves`` (1-D), zero-padded to the longest, peak-limited to 1."""
    length = max(int(w.numel()) for w in waves)
    out = torch.zeros(length, dtype=torch.float32)
    for w in waves:
        w = w.float().flatten()
        rms = w.square().mean().sqrt()
        out[: w.numel()] += w / (rms + eps) * 0.1  # -20 dBFS RMS per source
    peak = float(out.abs().max())
    return out / peak if peak > 1.0 else out


def make_mixtures(waves: Sequence[Tensor], labels: Tensor, num_classes: int, count: int,
                  sources: Sequence[int] = (2, 3), seed: int = 0) -> tuple[list[Tensor], Tensor]:
    """``count`` mixtures of ``waves`` (labels ``(N,)`` class indices) and their ``(count, num_classes)``
    multi-hot targets: each draws its number of sources uniformly from ``sources``, that many distinct
    classes uniformly among those present, and one clip of each class uniformly."""
    labels = torch.as_tensor(labels).long()
    by_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(num_classes)]
    present = [c for c in range(num_classes) if by_class[c]]
    if not sources or min(sources) < 1 or max(sources) > len(present):
        raise ValueError(f"mixtures of {list(sources)} sources need that many classes; the clips hold "
                         f"{len(present)} classes")
    rng = np.random.default_rng(seed)
    mixed, targets = [], torch.zeros(count, num_classes)
    for i in range(count):
        k = int(rng.choice(list(sources)))
        classes = rng.choice(present, size=k, replace=False)
        picked = [by_class[c][int(rng.integers(len(by_class[c])))] for c in classes]
        mixed.append(mix_clips([waves[j] for j in picked]))
        targets[i, torch.as_tensor(classes)] = 1.0
    return mixed, targets
