"""Fine-tuning losses: multi-label BCE (EAT's positive-count normalisation), CE with label smoothing,
and soft-target CE for mixed-up labels."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

BCENorm = Literal["mean", "batch", "positives"]


def multilabel_bce(logits: torch.Tensor, targets: torch.Tensor, norm: BCENorm = "mean") -> torch.Tensor:
    """Binary cross-entropy with logits for ``(B, C)`` multi-hot (or mixed, soft) targets.

    ``norm`` picks the divisor of the summed loss: ``"mean"`` all B*C terms (AST/PaSST), ``"batch"``
    the batch size (EAT's SPC-2 path), ``"positives"`` the total target mass in the batch, i.e. the number
    of positive labels (EAT on AudioSet; clamped to at least 1 so an all-negative batch stays finite).
    """
    total = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum")
    if norm == "mean":
        return total / targets.numel()
    if norm == "batch":
        return total / targets.shape[0]
    if norm == "positives":
        return total / targets.float().sum().clamp_min(1.0)
    raise ValueError(f"unknown BCE normalisation {norm!r}; choose mean, batch or positives")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-sum_c y_c log softmax(z)_c`` averaged over the batch; ``targets`` are ``(B, C)`` probabilities."""
    return -(targets.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    multi_label: bool,
    label_smoothing: float = 0.0,
    bce_norm: BCENorm = "mean",
) -> torch.Tensor:
    """The loss a fine-tuning task uses: BCE when ``multi_label``, else cross-entropy.

    Single-label targets are class indices ``(B,)`` (cross-entropy with ``label_smoothing``) or soft
    ``(B, C)`` rows (soft-target CE without smoothing: EAT's path whenever mixup is configured).
    """
    if multi_label:
        return multilabel_bce(logits, targets, bce_norm)
    if targets.dim() == 1:
        return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
    return soft_cross_entropy(logits, targets)
