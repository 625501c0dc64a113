"""Evaluation: metrics for classification (:mod:`eat.eval.metrics`)."""

from eat.eval.metrics import (
    accuracy,
    average_precision,
    d_prime,
    mean_average_precision,
    multilabel_summary,
    roc_auc,
)

__all__ = [
    "accuracy",
    "average_precision",
    "d_prime",
    "mean_average_precision",
    "multilabel_summary",
    "roc_auc",
]
