"""Linear probing and k-nearest-neighbour evaluation of frozen features.

The probe answers "how linearly separable are these embeddings?" the way EVAR and X-ARES do, without
their training loops: features are standardised with the training statistics, a multinomial (or, for
multi-label tasks, one-vs-rest sigmoid) linear classifier is fitted full-batch with L-BFGS to
convergence, the L2 penalty is picked on a validation split carved from the training set, and the
classifier is refitted on all training clips with that penalty. The fit is a convex problem with a
unique optimum, so the number is reproducible and does not depend on a learning rate or an epoch count.

Everything here works on plain ``(N, D)`` feature matrices, so any embedding (an encoder's CLS token,
pooled log-mel statistics, ...) can be probed the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from eat.eval.metrics import accuracy, mean_average_precision

TASKS = ("multiclass", "multilabel")
# Penalty grid for standardised features: the loss is the mean over clips plus wd/2 * ||W||^2.
DEFAULT_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class LinearModel:
    """A fitted probe: ``scores = ((x - mean) / std) @ weight.T + bias``."""

    mean: Tensor
    std: Tensor
    weight: Tensor  # (C, D)
    bias: Tensor  # (C,)

    def scores(self, x: Tensor) -> Tensor:
        """Logits ``(N, C)`` for raw (unstandardised) features ``x (N, D)``."""
        x = x.to(self.weight)
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias


def standardize_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std of ``x (N, D)``; constant dimensions get std 1 (they stay 0)."""
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    return mean, torch.where(std > 1e-12, std, torch.ones_like(std))


def fit_linear(
    x: Tensor, y: Tensor, task: str, num_classes: int, weight_decay: float, max_iter: int = 1000,
    reduce: bool = True,
) -> LinearModel:
    """Fit a linear classifier to raw features ``x (N, D)`` (standardised inside) and labels ``y``.

    ``y`` is ``(N,)`` class indices for ``multiclass`` (softmax cross-entropy) or ``(N, C)`` 0/1 targets
    for ``multilabel`` (sigmoid binary cross-entropy). Objective: mean loss + ``weight_decay / 2 *
    ||W||^2`` (the bias is not penalised), minimised by L-BFGS with a strong-Wolfe line search from zero.

    Wider than tall (``D > N``, e.g. band-pooled features of every block), the fit runs in the span of
    the training rows (``reduce``): the part of ``W`` orthogonal to every training row changes no logit
    on them and only adds to the penalty, so the optimum lies in that span of at most ``N`` dimensions.
    With ``B`` the ``N`` orthonormal rows of a QR factorisation of the standardised rows (``z.T = B.T R``;
    QR, because an SVD of a 600 x 12,000 matrix is ten times slower), the problem in ``a`` with ``W = a B``
    has the same loss and penalty: the same optimum, found on an ``N``-wide instead of a ``D``-wide problem.
    """
    _check_task(task)
    mean, std = standardize_stats(x)
    z = (x - mean) / std
    basis = None
    if reduce and z.shape[1] > z.shape[0]:
        q, r = torch.linalg.qr(z.T)  # (D, N) orthonormal columns, (N, N)
        basis, z = q.T, r.T  # z = r.T @ basis: the rows' coordinates in the basis
    weight = torch.zeros(num_classes, z.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    target = y.long() if task == "multiclass" else y.to(x.dtype)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, history_size=20,
        tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _data_loss(z @ weight.T + bias, target, task) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    weight = weight.detach() if basis is None else weight.detach() @ basis
    return LinearModel(mean, std, weight, bias.detach())


def knn_scores(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, k: int, task: str, num_classes: int, chunk: int = 1024
) -> Tensor:
    """Cosine k-nearest-neighbour class scores ``(N_test, C)``.

    Features are standardised with the training statistics and L2-normalised. Each of the ``k`` most
    similar training clips votes for its label(s) with weight ``1 + 1e-3 * similarity``, so the vote count
    decides and similarity only breaks ties. Multi-label scores are the (weighted) fraction of neighbours
    carrying each label, which ranks clips for mAP.
    """
    _check_task(task)
    if not 1 <= k <= train_x.shape[0]:
        raise ValueError(f"k must be in 1..{train_x.shape[0]} (the training set size), got {k}")
    mean, std = standardize_stats(train_x)
    bank = F.normalize((train_x - mean) / std, dim=1)
    labels = F.one_hot(train_y.long(), num_classes).to(bank) if task == "multiclass" else train_y.to(bank)
    out = []
    for start in range(0, test_x.shape[0], chunk):
        q = F.normalize((test_x[start : start + chunk].to(bank) - mean) / std, dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = (1.0 + 1e-3 * sim).unsqueeze(-1) * labels[idx]  # (n, k, C)
        out.append(votes.sum(1) / k)
    return torch.cat(out) if out else bank.new_zeros(0, num_classes)


def score(scores: Tensor, y: Tensor, task: str) -> float:
    """Accuracy (multiclass) or macro mAP (multilabel) of ``scores (N, C)`` against labels ``y``."""
    return accuracy(scores, y) if task == "multiclass" else mean_average_precision(scores, y)


def validation_split(y: Tensor, task: str, fraction: float, seed: int,
                     groups: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
    """Indices ``(fit, val)`` of a seeded split; multiclass splits are stratified per class.

    For multiclass, the first ``round(fraction * n_c)`` clips of every class (in a seeded random order)
    go to validation, so a class with a single clip stays entirely in the fitting part. With ``groups``
    (one name per clip: speaker, source, kit) whole groups go to one side (:func:`group_validation_split`).
    """
    if groups is not None:
        if len(groups) != y.shape[0]:
            raise ValueError(f"{len(groups)} groups for {y.shape[0]} clips")
        return group_validation_split(groups, fraction, seed)
    n = y.shape[0]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    if task == "multilabel":
        n_val = int(round(fraction * n))
        return perm[n_val:].sort().values, perm[:n_val].sort().values
    labels = y.long().cpu()[perm]
    order = labels.argsort(stable=True)  # grouped by class, random order inside a class
    sorted_labels = labels[order]
    counts = torch.bincount(sorted_labels)
    first = torch.cumsum(counts, 0) - counts  # start of each class block
    rank = torch.arange(n) - first[sorted_labels]
    in_val = rank < torch.round(fraction * counts[sorted_labels].double()).long()
    chosen = perm[order]
    return chosen[~in_val].sort().values, chosen[in_val].sort().values


def weight_decay_on_validation(
    x: Tensor, y: Tensor, task: str, num_classes: int, weight_decays: tuple[float, ...], val_fraction: float,
    seed: int, max_iter: int = 1000, groups: Sequence[str] | None = None,
) -> tuple[float, dict[str, float]]:
    """The probe's penalty choice: fit on the ``fit`` part of :func:`validation_split` ``(y, task,
    val_fraction, seed)`` with every weight decay, keep the best validation score (ties to the lower
    validation loss). Returns ``(weight decay, {f"{wd:g}": validation score})``; a one-value grid is taken
    as is (no split, empty scores). ``groups``: validation by group (see :func:`validation_split`)."""
    if len(weight_decays) == 1:
        return weight_decays[0], {}
    fit_idx, val_idx = validation_split(y, task, val_fraction, seed, groups)
    if len(val_idx) == 0 or len(fit_idx) == 0:
        raise ValueError(f"the training set ({len(y)} clips) is too small for a validation split")
    val_scores: dict[str, float] = {}
    best_key, best_wd = None, weight_decays[0]
    for wd in weight_decays:
        model = fit_linear(x[fit_idx], y[fit_idx], task, num_classes, wd, max_iter)
        logits = model.scores(x[val_idx])
        val = score(logits, y[val_idx], task)
        key = (val, -float(_data_loss(logits, _target(y[val_idx], task, logits), task)))
        val_scores[f"{wd:g}"] = val
        if best_key is None or key > best_key:
            best_key, best_wd = key, wd
    return best_wd, val_scores


def probe(
    train_x: Tensor | np.ndarray,
    train_y: Tensor | np.ndarray,
    test_x: Tensor | np.ndarray,
    test_y: Tensor | np.ndarray,
    task: str = "multiclass",
    *,
    num_classes: int | None = None,
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.2,
    knn: int | None = None,
    seed: int = 0,
    max_iter: int = 1000,
    device: str | torch.device | None = None,
    groups: Sequence[str] | None = None,
) -> dict:
    """Linear probe (and optionally kNN) of frozen features; returns a JSON-ready dict.

    ``train_x``/``test_x`` are ``(N, D)``; labels are ``(N,)`` class indices (multiclass) or ``(N, C)``
    0/1 matrices (multilabel). The weight decay is chosen on a ``val_fraction`` split of the training
    set (best validation score, ties to the lower validation loss), then the probe is refitted on all
    training clips. Result keys: ``task``, ``metric`` (``accuracy`` or ``mAP``), ``score`` (test),
    ``weight_decay``, ``val_scores`` (per grid point), ``num_train``, ``num_test``, ``dim``,
    ``num_classes`` and, with ``knn=K``, ``knn`` = ``{"k": K, "score": ...}``. ``groups`` (one per training
    clip): the validation split takes whole groups.
    """
    _check_task(task)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    tx, ty, vx, vy = (_as_tensor(a, name).to(dev) for a, name in
                      ((train_x, "training features"), (train_y, "training labels"),
                       (test_x, "test features"), (test_y, "test labels")))
    tx, vx = tx.to(dtype), vx.to(dtype)
    _check_shapes(tx, ty, vx, vy, task)
    _check_values(tx, ty, vx, vy, task)
    if num_classes is None:
        num_classes = int(max(ty.max(), vy.max())) + 1 if task == "multiclass" else ty.shape[1]
    if task == "multiclass" and (ty.min() < 0 or vy.min() < 0 or max(ty.max(), vy.max()) >= num_classes):
        raise ValueError(f"class indices must lie in 0..{num_classes - 1}")
    if task == "multiclass":
        unseen = sorted(set(vy.tolist()) - set(ty.tolist()))
        if unseen:  # the probe could never predict them: their clips would silently score 0
            raise ValueError(f"test labels hold class(es) {unseen[:10]} that no training clip has; "
                             "a linear probe cannot predict a class it was not fitted on")
    if not weight_decays or not all(math.isfinite(w) and w >= 0 for w in weight_decays):
        raise ValueError(f"weight_decays must be one or more finite values >= 0, got {list(weight_decays)}")
    if len(weight_decays) > 1 and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")

    best_wd, val_scores = weight_decay_on_validation(tx, ty, task, num_classes, weight_decays, val_fraction, seed,
                                                     max_iter, groups)
    model = fit_linear(tx, ty, task, num_classes, best_wd, max_iter)
    result = {
        "task": task,
        "metric": "accuracy" if task == "multiclass" else "mAP",
        "score": score(model.scores(vx), vy, task),
        "weight_decay": best_wd,
        "val_scores": val_scores,
        "num_train": int(tx.shape[0]),
        "num_test": int(vx.shape[0]),
        "dim": int(tx.shape[1]),
        "num_classes": int(num_classes),
    }
    if knn is not None:
        result["knn"] = {"k": int(knn), "score": score(knn_scores(tx, ty, vx, knn, task, num_classes), vy, task)}
    return result


def _data_loss(logits: Tensor, target: Tensor, task: str) -> Tensor:
    if task == "multiclass":
        return F.cross_entropy(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.shape[0]


def _target(y: Tensor, task: str, like: Tensor) -> Tensor:
    return y.long() if task == "multiclass" else y.to(like)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def _as_tensor(a: Tensor | np.ndarray, name: str) -> Tensor:
    try:
        t = torch.as_tensor(a)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name}: not a numeric array ({str(e).splitlines()[0]})") from None
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name}: dtype {t.dtype} is not numeric features/labels")
    return t


def _check_values(tx: Tensor, ty: Tensor, vx: Tensor, vy: Tensor, task: str) -> None:
    """Refuse NaN/inf features (L-BFGS would crawl for minutes and fit nothing) and non-integer or
    non-0/1 labels, naming the split."""
    for name, x in (("training", tx), ("test", vx)):
        finite = torch.isfinite(x).all(dim=1)
        if not bool(finite.all()):
            rows = (~finite).nonzero().flatten().tolist()
            raise ValueError(f"{name} features: {len(rows)} row(s) hold NaN or inf (first: row {rows[0]})")
    for name, y in (("training", ty), ("test", vy)):
        if y.dtype.is_floating_point and not bool((torch.isfinite(y) & (y == y.round())).all()):
            raise ValueError(f"{name} labels must be whole numbers, got {y.dtype} values such as "
                             f"{y[~(torch.isfinite(y) & (y == y.round()))][0].item()}")
        if task == "multilabel" and not bool(((y == 0) | (y == 1)).all()):
            raise ValueError(f"{name} labels of a multilabel task must be 0/1")


def _check_shapes(tx: Tensor, ty: Tensor, vx: Tensor, vy: Tensor, task: str) -> None:
    if tx.dim() != 2 or vx.dim() != 2 or tx.shape[1] != vx.shape[1]:
        raise ValueError(f"features must be (N, D) with one D, got {tuple(tx.shape)} and {tuple(vx.shape)}")
    want = 1 if task == "multiclass" else 2
    if ty.dim() != want or vy.dim() != want:
        kind = "(N,) class indices" if want == 1 else "(N, C) 0/1 targets"
        raise ValueError(f"{task} labels must be {kind}, got {tuple(ty.shape)} and {tuple(vy.shape)}")
    if ty.shape[0] != tx.shape[0] or vy.shape[0] != vx.shape[0]:
        raise ValueError(f"{tx.shape[0]}/{vx.shape[0]} feature rows but {ty.shape[0]}/{vy.shape[0]} labels")
    if task == "multilabel" and ty.shape[1] != vy.shape[1]:
        raise ValueError(f"train and test label matrices have {ty.shape[1]} and {vy.shape[1]} classes")
    if tx.shape[0] == 0 or vx.shape[0] == 0:
        raise ValueError("empty training or test set")


def group_validation_split(groups: Sequence[str], fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(fit, val)`` with whole groups (speaker, source, kit) on one side: a seeded random order
    of the distinct groups, validation taking groups until it holds ``round(fraction * n)`` items or more
    (at least one group, never every group when there are two or more).

    When the test split holds out groups, a validation split drawn clip by clip shares every group with
    the fitting part and saturates; drawn by group it asks the same question the test split asks."""
    names = sorted(set(groups))
    if len(names) < 2:
        raise ValueError(f"validation by group needs at least two groups, got {len(names)}")
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    want = int(round(fraction * len(groups)))
    count = {g: 0 for g in names}
    for g in groups:
        count[g] += 1
    val_groups, held = set(), 0
    for k in order:
        if val_groups and (held >= want or len(val_groups) == len(names) - 1):
            break
        val_groups.add(names[k])
        held += count[names[k]]
    in_val = torch.tensor([g in val_groups for g in groups])
    idx = torch.arange(len(groups))
    return idx[~in_val], idx[in_val]
