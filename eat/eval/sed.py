"""Sound event detection: post-processing of frame scores and the field's metrics.

Frame scores are ``(N, C)`` arrays at a fixed hop (frame ``j`` covers ``[j*hop, (j+1)*hop)``), one per file.

* :func:`median_filter`: per-class running median (window in frames, odd; edges repeat the end value), the
  DCASE baselines' smoothing. :func:`filter_frames` turns per-class seconds into odd frame counts.
* :func:`scores_to_events`: per-class thresholds -> ``(onset, offset, label, score)`` events whose times are
  exact frame boundaries (integer frame index x hop, rounded to the microsecond).
* :func:`sed_metrics`: PSDS1 / PSDS2 with the DCASE settings, and segment-based (1 s) and collar-based
  (200 ms, 20 % of the length) F1, all computed by the maintained ``sed_scores_eval`` package (the
  ``sed`` extra) from the frame scores: nothing here re-implements a metric. :data:`PSDS1` / :data:`PSDS2`
  hold the DCASE 2022-2024 Task 4 parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.ndimage import median_filter as _ndimage_median

# DCASE Task 4 (2022-2024) PSDS scenarios: detection / ground-truth intersection criteria, cross-trigger
# criterion and weight, class-instability weight, largest effective false-positive rate per hour.
PSDS1 = {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None, "alpha_ct": 0.0, "alpha_st": 1.0,
         "max_efpr": 100.0}
PSDS2 = {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3, "alpha_ct": 0.5, "alpha_st": 1.0,
         "max_efpr": 100.0}
SEGMENT_LENGTH = 1.0  # seconds, DCASE segment-based F1
COLLAR = 0.2  # seconds onset/offset collar of event-based F1 (sed_eval's t_collar) ...
COLLAR_RATE = 0.2  # ... or 20 % of the reference event's length, whichever is larger


def _sed_scores_eval():
    try:
        import sed_scores_eval
    except ImportError:
        raise ImportError("SED metrics need the sed_scores_eval package: pip install 'eat[sed]' "
                          "(sed-scores-eval-np2)") from None
    return sed_scores_eval


def filter_frames(seconds: float | Sequence[float], hop: float, num_classes: int) -> list[int]:
    """Per-class median-filter windows in frames (odd, >= 1) from seconds (one value or one per class)."""
    secs = [float(seconds)] * num_classes if np.isscalar(seconds) else [float(s) for s in seconds]
    if len(secs) != num_classes:
        raise ValueError(f"median filter: {len(secs)} window lengths for {num_classes} classes")
    out = []
    for s in secs:
        if s < 0:
            raise ValueError(f"median filter window must be >= 0 s, got {s}")
        k = int(round(s / hop))
        out.append(k + 1 if k % 2 == 0 else k)
    return out


def median_filter(scores: np.ndarray, frames: int | Sequence[int]) -> np.ndarray:
    """Running median over time of each class column of ``scores (N, C)``; ``frames`` odd window length(s)."""
    scores = np.asarray(scores, dtype=np.float64 if np.asarray(scores).dtype == np.float64 else np.float32)
    n, c = scores.shape
    ks = [int(frames)] * c if np.isscalar(frames) else [int(k) for k in frames]
    if len(ks) != c or any(k < 1 or k % 2 == 0 for k in ks):
        raise ValueError(f"median filter windows must be {c} odd positive frame counts, got {ks}")
    out = np.empty_like(scores)
    for i, k in enumerate(ks):
        out[:, i] = scores[:, i] if k == 1 else _ndimage_median(scores[:, i], size=k, mode="nearest")
    return out


def scores_to_events(scores: np.ndarray, hop: float, class_names: Sequence[str],
                     thresholds: float | Sequence[float] = 0.5) -> list[tuple[float, float, str, float]]:
    """Runs of frames with score >= the class threshold -> ``(onset, offset, label, max score)``, sorted by
    onset. An event of frames ``a .. b-1`` spans ``[a*hop, b*hop)``."""
    scores = np.asarray(scores)
    n, c = scores.shape
    th = np.full(c, float(thresholds)) if np.isscalar(thresholds) else np.asarray(thresholds, dtype=np.float64)
    if th.shape != (c,):
        raise ValueError(f"{th.size} thresholds for {c} classes")
    events = []
    for i in range(c):
        on = np.concatenate([[False], scores[:, i] >= th[i], [False]])
        edges = np.flatnonzero(on[1:] != on[:-1])
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            events.append((round(a * hop, 6), round(b * hop, 6), class_names[i], float(scores[a:b, i].max())))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return events


def timestamps(num_frames: int, hop: float) -> np.ndarray:
    """Frame boundaries ``0, hop, ..., N*hop`` (from integer indices, rounded to the microsecond)."""
    return np.round(np.arange(num_frames + 1, dtype=np.float64) * hop, 6)


def score_dataframes(frame_scores: Mapping[str, np.ndarray], hop: float, class_names: Sequence[str]) -> dict:
    """``{file: (N, C) scores}`` -> ``sed_scores_eval``'s score DataFrames."""
    sse = _sed_scores_eval()
    return {name: sse.base_modules.scores.create_score_dataframe(np.asarray(s, dtype=np.float64), timestamps(len(s), hop),
                                                          list(class_names))
            for name, s in frame_scores.items()}


def sed_metrics(frame_scores: Mapping[str, np.ndarray], ground_truth: Mapping[str, Sequence[tuple]],
                durations: Mapping[str, float], hop: float, class_names: Sequence[str],
                threshold: float | Mapping[str, float] = 0.5, psds2: bool = True) -> dict[str, float]:
    """PSDS1, PSDS2 (threshold-independent), segment-based macro F1 (1 s) and collar-based macro F1
    (threshold ``threshold``) of ``frame_scores`` against ``ground_truth`` (``{file: [(onset, offset,
    label), ...]}``; every scored file must be listed, possibly with no events).

    Scores are given to ``sed_scores_eval`` as they are (apply :func:`median_filter` first if wanted)."""
    sse = _sed_scores_eval()
    missing = [f for f in frame_scores if f not in ground_truth or f not in durations]
    if missing:
        raise ValueError(f"no ground truth / duration for {len(missing)} scored file(s), e.g. {missing[0]}")
    scores = score_dataframes(frame_scores, hop, class_names)
    gt = {f: [tuple(e[:3]) for e in ground_truth[f]] for f in scores}
    dur = {f: float(durations[f]) for f in scores}
    out = {"psds1": float(sse.intersection_based.psds(scores, gt, dur, **PSDS1)[0])}
    if psds2:
        out["psds2"] = float(sse.intersection_based.psds(scores, gt, dur, **PSDS2)[0])
    f_seg = sse.segment_based.fscore(scores, gt, dur, threshold, segment_length=SEGMENT_LENGTH)[0]
    f_ev = sse.collar_based.fscore(scores, gt, threshold, onset_collar=COLLAR, offset_collar=COLLAR,
                                   offset_collar_rate=COLLAR_RATE)[0]
    out["segment_f1"] = float(f_seg["macro_average"])
    out["event_f1"] = float(f_ev["macro_average"])
    return out


def best_thresholds(frame_scores: Mapping[str, np.ndarray], ground_truth: Mapping[str, Sequence[tuple]],
                    hop: float, class_names: Sequence[str]) -> list[float]:
    """Per-class decision thresholds with the best collar-based F1 (``sed_scores_eval``'s ``best_fscore``)."""
    sse = _sed_scores_eval()
    scores = score_dataframes(frame_scores, hop, class_names)
    gt = {f: [tuple(e[:3]) for e in ground_truth[f]] for f in scores}
    th = sse.collar_based.best_fscore(scores, gt, onset_collar=COLLAR, offset_collar=COLLAR,
                                      offset_collar_rate=COLLAR_RATE)[3]
    return [float(min(max(th.get(c, 0.5), 0.0), 1.0)) for c in class_names]
