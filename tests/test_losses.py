"""Fine-tuning losses against plain formulas."""

import pytest
import torch

from eat.train.losses import classification_loss, multilabel_bce, soft_cross_entropy


def plain_bce_terms(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(z.double())
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))


def test_bce_normalisations():
    torch.manual_seed(0)
    z = torch.randn(6, 10)
    y = (torch.rand(6, 10) < 0.3).float()
    terms = plain_bce_terms(z, y)
    assert multilabel_bce(z, y, "mean").item() == pytest.approx(terms.mean().item(), rel=1e-6)
    assert multilabel_bce(z, y, "batch").item() == pytest.approx(terms.sum().item() / 6, rel=1e-6)
    assert multilabel_bce(z, y, "positives").item() == pytest.approx(terms.sum().item() / y.sum().item(), rel=1e-6)
    assert torch.isfinite(multilabel_bce(z, torch.zeros_like(y), "positives"))
    with pytest.raises(ValueError):
        multilabel_bce(z, y, "sum")


def test_cross_entropy_with_label_smoothing():
    torch.manual_seed(1)
    z, idx, eps = torch.randn(5, 7), torch.tensor([0, 3, 6, 2, 2]), 0.1
    logp = torch.log_softmax(z.double(), -1)
    ref = ((1 - eps) * -logp[torch.arange(5), idx] + eps * -logp.mean(-1)).mean()
    loss = classification_loss(z, idx, multi_label=False, label_smoothing=eps)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_soft_cross_entropy_is_linear_in_the_mixed_target():
    torch.manual_seed(2)
    z = torch.randn(4, 5)
    a, b = torch.eye(5)[[0, 1, 2, 3]], torch.eye(5)[[3, 2, 1, 0]]
    lam = 0.3
    mixed = soft_cross_entropy(z, lam * a + (1 - lam) * b)
    parts = lam * soft_cross_entropy(z, a) + (1 - lam) * soft_cross_entropy(z, b)
    assert mixed.item() == pytest.approx(parts.item(), rel=1e-6)
    hard = torch.nn.functional.cross_entropy(z, torch.tensor([0, 1, 2, 3]))
    assert soft_cross_entropy(z, a).item() == pytest.approx(hard.item(), rel=1e-6)
    assert classification_loss(z, a, multi_label=False, label_smoothing=0.1).item() == pytest.approx(hard.item())
