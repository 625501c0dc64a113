"""The probe protocol's frame task: a linear probe on frozen frame embeddings, scored as sound event detection.

Features are one vector per 160 ms time column (EAT's patch columns) of whole files:

* ``encoder``: the frame embeddings of :meth:`eat.features.FeatureExtractor.extract_features`
  (``granularity="frame"``: each column's frequency patches averaged; blocks ``layers`` concatenated;
  long files windowed by the extractor);
* ``logmel``: the normalised log-mel frames of the same column (its 16 fbank frames) averaged, the mean
  and std per mel bin (``2 * F`` features) - the spectral content a column shows without any network;
* the initial-weights control is the ``encoder`` source with the weights the pretraining started from.

Targets: the strong labels on the same column grid (:func:`eat.data.strong_labels.frame_targets`, hop =
the column hop, shifted by nothing: column ``t`` covers ``[t * hop, (t + 1) * hop)``). The probe is
:func:`eat.eval.probe.fit_linear` (multi-label logistic regression on standardised features); its penalty
is chosen on validation *files* (a held-out part of the training files; whole groups with ``groups``) by
PSDS1, then it is refitted on every training file and scored once on the test files: the column logits
are interpolated to the output hop (:func:`eat.model.sed.interpolate_columns`), turned into probabilities
and scored by :func:`eat.eval.sed.sed_metrics` (PSDS1, PSDS2, segment and event F1 at 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from eat.audio.io import load_audio
from eat.data.strong_labels import StrongLabels, frame_targets, num_output_frames
from eat.eval.probe import fit_linear, group_validation_split
from eat.eval.sed import sed_metrics
from eat.features import FeatureExtractor
from eat.model.sed import interpolate_columns

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)


class MLPProbe:
    """The optional small MLP probe: standardised features -> Linear(hidden) -> ReLU -> Linear(C), trained
    full-batch with AdamW (``steps`` updates, lr 1e-3, decoupled weight decay ``weight_decay``) on the
    multi-label BCE, from a fixed seed."""

    def __init__(self, x: Tensor, y: Tensor, hidden: int, weight_decay: float, steps: int = 300, seed: int = 0):
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        gen = torch.Generator().manual_seed(seed)
        d, c = x.shape[1], y.shape[1]
        self.w1 = (torch.randn(d, hidden, generator=gen, dtype=x.dtype) / d**0.5).requires_grad_()
        self.b1 = torch.zeros(hidden, dtype=x.dtype, requires_grad=True)
        self.w2 = (torch.randn(hidden, c, generator=gen, dtype=x.dtype) / hidden**0.5).requires_grad_()
        self.b2 = torch.zeros(c, dtype=x.dtype, requires_grad=True)
        params = [self.w1, self.b1, self.w2, self.b2]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=weight_decay)
        z = (x - self.mean) / self.std
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(self._logits(z), y)
                loss.backward()
                opt.step()
        for p in params:
            p.requires_grad_(False)

    def _logits(self, z: Tensor) -> Tensor:
        return torch.relu(z @ self.w1 + self.b1) @ self.w2 + self.b2

    def scores(self, x: Tensor) -> Tensor:
        return self._logits((x.to(self.mean) - self.mean) / self.std)


@torch.no_grad()
def column_features(extractor: FeatureExtractor, labels: StrongLabels, source: str = "encoder",
                    layers: int | Sequence[int] = -1) -> dict[str, Tensor]:
    """``{file: (T', D) features}`` for every file of ``labels`` (``source``: ``encoder`` or ``logmel``)."""
    out = {}
    p, st = extractor.encoder.cfg.patch_size, extractor.encoder.cfg.patch_stride[0]
    for name in labels.files:
        wave = load_audio(labels.paths[name], extractor.sample_rate)
        if source == "logmel":
            fb, frames = extractor.fbank(wave)
            cols = int(extractor.columns_for_frames(frames)[0])
            fb = torch.nn.functional.pad(fb[0], (0, 0, 0, (cols - 1) * st + p - fb.shape[1]), value=extractor.pad_value)
            grid = fb.unfold(0, p, st)  # (T', F, p)
            out[name] = torch.cat([grid.mean(-1), grid.std(-1, unbiased=False)], 1).double()
        else:
            feats = extractor.extract_features(wave, layers=layers, granularity="frame")
            emb = feats.embeddings[0]
            out[name] = (emb.permute(1, 0, 2).flatten(1) if emb.dim() == 3 else emb).double()
    return out


def column_targets(labels: StrongLabels, feats: dict[str, Tensor], col_hop: float) -> dict[str, Tensor]:
    idx = labels.class_index()
    return {f: frame_targets(labels.events[f], idx, feats[f].shape[0], col_hop).double() for f in labels.files}


def _scores(model, feats: dict[str, Tensor], durations: dict[str, float], hop: float, col_hop: float,
            first_centre: float) -> dict[str, np.ndarray]:
    out = {}
    for f, x in feats.items():
        logits = model.scores(x).float()
        n = num_output_frames(durations[f], hop)
        out[f] = torch.sigmoid(interpolate_columns(logits, n, hop, col_hop, first_centre)).numpy()
    return out


def frame_probe(train_feats: dict[str, Tensor], test_feats: dict[str, Tensor], train: StrongLabels,
                test: StrongLabels, col_hop: float, first_centre: float, hop: float = 0.04,
                val_fraction: float = 0.2, groups: list[str] | None = None, seed: int = 0,
                weight_decays: Sequence[float] = WEIGHT_DECAYS, mlp_hidden: int = 0) -> dict:
    """Fit, select on validation files, refit, score the test files (see the module docstring); with
    ``mlp_hidden`` > 0 the same for a :class:`MLPProbe` of that width (result key ``mlp``)."""
    files = train.files
    if groups is not None:
        fit_idx, val_idx = group_validation_split(groups, val_fraction, seed)
    else:
        perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, int(round(val_fraction * len(files))))
        fit_idx, val_idx = perm[n_val:], perm[:n_val]
    fit_files, val_files = [files[int(i)] for i in fit_idx], [files[int(i)] for i in val_idx]
    ytr = column_targets(train, train_feats, col_hop)
    c = len(train.class_names)

    def stack(names: list[str]) -> tuple[Tensor, Tensor]:
        return torch.cat([train_feats[f] for f in names]), torch.cat([ytr[f] for f in names])

    x_fit, y_fit = stack(fit_files)
    x_all, y_all = stack(files)
    gt, dur = train.ground_truth(), train.durations

    def run(fit) -> dict:
        val_scores = {}
        for wd in weight_decays:
            s = _scores(fit(x_fit, y_fit, wd), {f: train_feats[f] for f in val_files}, dur, hop, col_hop, first_centre)
            val_scores[wd] = sed_metrics(s, gt, dur, hop, train.class_names, psds2=False)["psds1"]
        best_wd = max(weight_decays, key=lambda w: (val_scores[w], -w))
        s = _scores(fit(x_all, y_all, best_wd), test_feats, test.durations, hop, col_hop, first_centre)
        return {"weight_decay": best_wd, "val_psds1": {str(k): v for k, v in val_scores.items()},
                "test": sed_metrics(s, test.ground_truth(), test.durations, hop, test.class_names)}

    out = run(lambda x, y, wd: fit_linear(x, y, "multilabel", c, wd))
    out.update(dim=int(x_all.shape[1]), fit_files=len(fit_files), val_files=len(val_files))
    if mlp_hidden > 0:
        out["mlp"] = run(lambda x, y, wd: MLPProbe(x, y, mlp_hidden, wd, seed=seed))
    return out
