"""Metrics against scikit-learn / SciPy on random data with ties."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from eat.eval.metrics import (
    accuracy,
    average_precision,
    d_prime,
    mean_average_precision,
    multilabel_summary,
    roc_auc,
)


def random_problem(seed: int, n: int = 300, c: int = 12, decimals: int | None = 1):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < rng.uniform(0.02, 0.4, size=c)).astype(np.float32)
    scores = rng.random((n, c)) + 0.7 * targets  # informative but imperfect
    if decimals is not None:
        scores = np.round(scores, decimals)  # many ties
    targets[:, 0] = 0  # a class without positives
    return scores, targets


@pytest.mark.parametrize("seed,decimals", [(0, 1), (1, 2), (2, None), (3, 0)])
def test_average_precision_matches_sklearn(seed, decimals):
    scores, targets = random_problem(seed, decimals=decimals)
    ap = average_precision(scores, targets)
    assert math.isnan(ap[0])
    ref = [average_precision_score(targets[:, k], scores[:, k]) for k in range(1, targets.shape[1])]
    np.testing.assert_allclose(ap[1:].numpy(), ref, rtol=1e-12, atol=1e-12)
    assert mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets)) == pytest.approx(np.mean(ref))


def test_average_precision_all_tied_is_prevalence():
    targets = np.array([[1], [0], [0], [1], [0]])
    assert average_precision(np.zeros((5, 1)), targets)[0] == pytest.approx(0.4)


@pytest.mark.parametrize("seed,decimals", [(4, 1), (5, None)])
def test_roc_auc_and_d_prime_match_sklearn_and_scipy(seed, decimals):
    scores, targets = random_problem(seed, decimals=decimals)
    auc = roc_auc(scores, targets)
    assert math.isnan(auc[0])
    ref = np.array([roc_auc_score(targets[:, k], scores[:, k]) for k in range(1, targets.shape[1])])
    np.testing.assert_allclose(auc[1:].numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d_prime(auc[1:]).numpy(), np.sqrt(2) * norm.ppf(ref), rtol=1e-10)
    summary = multilabel_summary(scores, targets)
    assert summary["mAUC"] == pytest.approx(ref.mean())
    assert summary["d_prime"] == pytest.approx(np.sqrt(2) * norm.ppf(ref.mean()))
    assert d_prime(0.5) == 0.0


def test_accuracy_index_and_one_hot_targets():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    idx = torch.tensor([0, 1, 1, 2])
    assert accuracy(logits, idx) == 0.5
    assert accuracy(logits, torch.nn.functional.one_hot(idx, 3).float()) == 0.5
    with pytest.raises(ValueError):
        average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
