"""Evaluation metrics: macro mAP, ROC-AUC, d-prime and top-1 accuracy, vectorised over classes.

``average_precision`` gives the same per-class numbers as scikit-learn's ``average_precision_score``
(step-wise area under the precision-recall curve, tied scores forming one threshold); classes without
a positive example are NaN and left out of the mean, as EAT's AudioSet evaluation does. ``roc_auc``
uses the rank-sum (Mann-Whitney) form with average ranks for ties, which equals scikit-learn's
``roc_auc_score``. All functions take torch tensors or NumPy arrays and compute in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _as_2d(scores: ArrayLike, targets: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.as_tensor(scores).detach().to("cpu", torch.float64)
    y = torch.as_tensor(targets).detach().to("cpu")
    if s.dim() == 1:
        s, y = s.unsqueeze(1), y.unsqueeze(1)
    if s.shape != y.shape or s.dim() != 2:
        raise ValueError(f"scores {tuple(s.shape)} and targets {tuple(y.shape)} must both be (N, C)")
    return s, (y > 0.5).to(torch.float64)


def _tie_group_end(sorted_scores: torch.Tensor) -> torch.Tensor:
    """For each row of column-sorted scores, the row index of the last member of its tie group."""
    n = sorted_scores.shape[0]
    last = torch.ones_like(sorted_scores, dtype=torch.bool)
    last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    rows = torch.arange(n).unsqueeze(1).expand_as(sorted_scores)
    idx = torch.where(last, rows, n - 1)
    return idx.flip(0).cummin(0).values.flip(0)


def _tie_group_start(sorted_scores: torch.Tensor) -> torch.Tensor:
    """For each row of column-sorted scores, the row index of the first member of its tie group."""
    first = torch.ones_like(sorted_scores, dtype=torch.bool)
    first[1:] = sorted_scores[1:] != sorted_scores[:-1]
    rows = torch.arange(sorted_scores.shape[0]).unsqueeze(1).expand_as(sorted_scores)
    return torch.where(first, rows, 0).cummax(0).values


def average_precision(scores: ArrayLike, targets: ArrayLike) -> torch.Tensor:
    """Per-class AP of ``scores (N, C)`` against binary ``targets (N, C)``; NaN for classes with no positive.

    Each positive contributes ``precision / num_positives``, with precision measured at the lowest
    score of its tie group (every clip scoring at least that much counts as retrieved).
    """
    s, y = _as_2d(scores, targets)
    order = s.argsort(dim=0, descending=True, stable=True)
    s, y = s.gather(0, order), y.gather(0, order)
    tp = y.cumsum(0)
    end = _tie_group_end(s)
    precision = tp.gather(0, end) / (end + 1).to(torch.float64)
    positives = y.sum(0)
    ap = (y * precision).sum(0) / positives
    return torch.where(positives > 0, ap, torch.nan)


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """Macro mAP: mean of :func:`average_precision` over the classes that have a positive."""
    return float(torch.nanmean(average_precision(scores, targets)))


def roc_auc(scores: ArrayLike, targets: ArrayLike) -> torch.Tensor:
    """Per-class ROC-AUC; NaN for classes without both positives and negatives."""
    s, y = _as_2d(scores, targets)
    order = s.argsort(dim=0, stable=True)
    s, y = s.gather(0, order), y.gather(0, order)
    rank = (_tie_group_start(s) + _tie_group_end(s)).to(torch.float64) / 2 + 1
    pos = y.sum(0)
    neg = y.shape[0] - pos
    auc = ((y * rank).sum(0) - pos * (pos + 1) / 2) / (pos * neg)
    return torch.where((pos > 0) & (neg > 0), auc, torch.nan)


def d_prime(auc: float | torch.Tensor) -> float | torch.Tensor:
    """Sensitivity index from an AUC: ``sqrt(2) * Phi^-1(auc)`` (AST reports it for the mean AUC)."""
    value = math.sqrt(2.0) * torch.special.ndtri(torch.as_tensor(auc, dtype=torch.float64))
    return float(value) if not isinstance(auc, torch.Tensor) else value


def accuracy(logits: ArrayLike, targets: ArrayLike) -> float:
    """Top-1 accuracy; ``targets`` are class indices ``(N,)`` or one-hot / soft ``(N, C)`` (argmax)."""
    logits = torch.as_tensor(logits)
    targets = torch.as_tensor(targets)
    if targets.dim() == 2:
        targets = targets.argmax(1)
    if logits.shape[0] == 0:
        raise ValueError("accuracy of an empty set")
    return float((logits.argmax(1).cpu() == targets.cpu()).double().mean())


def multilabel_summary(scores: ArrayLike, targets: ArrayLike) -> dict[str, float]:
    """``mAP``, macro ``mAUC`` and ``d_prime`` of the mean AUC for multi-label predictions."""
    mauc = float(torch.nanmean(roc_auc(scores, targets)))
    return {"mAP": mean_average_precision(scores, targets), "mAUC": mauc, "d_prime": d_prime(mauc)}
