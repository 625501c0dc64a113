"""Sound event detection on recordings of any length: windows, stitching, post-processing, event tables.

A file is never decoded whole: :mod:`eat.audio.stream` reads it window by window (windows of the front-end's
training length, ``context`` columns kept on each side, the windowed fbank frames equal to the whole file's)
and concatenates the kept column logits at their absolute column index; they are then interpolated once, over
the whole file, to the output hop (:func:`eat.model.sed.interpolate_columns`): timestamps are integer frame
indices times the hop, with no drift and no seams. An hour at 16 kHz is 230 MB of float32 samples; it is read a
few seconds at a time. Files at another sample rate are decoded whole and resampled first.

:func:`load_detector` loads an export whose head is a sound event detector (``eat.model.sed``) as a
:class:`SoundEventDetector`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from eat.audio.fbank import FrontendConfig, normalize
from eat.audio.io import AudioError
from eat.audio.stream import AudioSource, stream_column_logits
from eat.data.strong_labels import num_output_frames
from eat.eval.sed import filter_frames, median_filter, scores_to_events, timestamps
from eat.export import ExportError, load_module
from eat.model.sed import SEDModel, column_geometry, interpolate_columns


class SoundEventDetector(nn.Module):
    """An exported detector: :class:`~eat.model.sed.SEDModel` + its front-end and class names."""

    def __init__(self, model: SEDModel, frontend: FrontendConfig, class_names: list[str] | None):
        super().__init__()
        self.model = model
        self.frontend = frontend
        self.class_names = class_names or [f"class_{i}" for i in range(model.cfg.num_classes)]
        enc = model.encoder.cfg
        self.col_hop, self.first_centre = column_geometry(enc, frontend.sample_rate, frontend.frame_shift_ms,
                                                          frontend.frame_length_ms)
        self.eval()

    @property
    def hop(self) -> float:
        return self.model.cfg.hop

    @property
    def pad_value(self) -> float:
        return float(normalize(torch.tensor(0.0), self.frontend.norm_mean, self.frontend.norm_std))

    @property
    def window_columns(self) -> int:
        return self.model.encoder.grid(self.frontend.target_length)[0]

    def column_logits(self, fbank: Tensor) -> Tensor:
        """Normalised fbank ``(B, T, F)`` -> column logits ``(B, T', C)``."""
        return self.model(fbank)[0]

    def frame_scores(self, column_logits: Tensor, duration: float) -> np.ndarray:
        """Column logits ``(T', C)`` of a whole file -> frame probabilities ``(N, C)`` at :attr:`hop`
        covering ``duration`` seconds."""
        n = num_output_frames(duration, self.hop)
        frames = interpolate_columns(column_logits.float(), n, self.hop, self.col_hop, self.first_centre)
        return torch.sigmoid(frames).cpu().numpy()


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> SoundEventDetector:
    """The detector of an export written by the SED fine-tuning (``recipes/finetune.py --task sed``)."""
    cfg, model = load_module(path)
    if not isinstance(model, SEDModel):
        raise ExportError(f"{path}: not a sound event detector export (no head.sed in config.json)")
    return SoundEventDetector(model, cfg.frontend, cfg.head.get("class_names")).to(device).eval()


@dataclass
class PostProcess:
    """Per-class median filter (seconds, one value or one per class) and decision thresholds."""

    median_filter: float | list[float] = 0.0
    thresholds: float | list[float] = 0.5


def detect_file(detector: SoundEventDetector, path: str | Path, context: int | None = None,
                batch_size: int = 8, post: PostProcess | None = None, progress: bool = False,
                ) -> tuple[np.ndarray, list[tuple[float, float, str, float]], float]:
    """``(frame scores (N, C) after the median filter, events, duration in seconds)`` of one file."""
    post = post or PostProcess()
    enc = detector.model.encoder
    w = detector.window_columns
    ctx = max(1, w // 8) if context is None else context
    device = next(detector.parameters()).device
    source = AudioSource(path, detector.frontend)
    cols = stream_column_logits(source, detector.column_logits, detector.frontend, enc.cfg.patch_size,
                                enc.cfg.patch_stride[0], w, ctx, detector.pad_value, batch_size, progress, device)
    scores = detector.frame_scores(cols, source.duration)
    c = len(detector.class_names)
    scores = median_filter(scores, filter_frames(post.median_filter, detector.hop, c))
    events = scores_to_events(scores, detector.hop, detector.class_names, post.thresholds)
    return scores, events, source.duration


def write_scores_tsv(path: str | Path, scores: np.ndarray, hop: float, class_names: list[str]) -> Path:
    """Frame scores as ``sed_scores_eval``'s per-file tsv: ``onset offset <class...>`` per frame."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = timestamps(len(scores), hop)
    lines = ["\t".join(["onset", "offset", *class_names])]
    lines += ["\t".join([f"{ts[j]:.6f}", f"{ts[j + 1]:.6f}", *(f"{v:.6f}" for v in scores[j])])
              for j in range(len(scores))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_postprocess(path: str | Path, class_names: list[str]) -> PostProcess:
    """A post-processing file (JSON ``{"median_filter": s | [s per class], "thresholds": t | [t per class]}``,
    written by the SED fine-tuning with the values chosen on validation)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read post-processing settings ({e})") from None
    if not isinstance(doc, dict) or set(doc) - {"median_filter", "thresholds"}:
        raise ValueError(f"{path}: expected an object with keys median_filter and thresholds")
    post = PostProcess(doc.get("median_filter", 0.0), doc.get("thresholds", 0.5))
    for key in ("median_filter", "thresholds"):
        value = getattr(post, key)
        if isinstance(value, list) and len(value) != len(class_names):
            raise ValueError(f"{path}: {key} lists {len(value)} values for {len(class_names)} classes")
    return post


def run_detection(detector: SoundEventDetector, files: list[Path], out: Path, post: PostProcess,
                  names: list[str] | None = None, context: int | None = None, batch_size: int = 8,
                  write_scores: bool = False, progress: bool = True, log=print) -> dict:
    """Detect events in ``files``; write ``out/events.tsv`` (``filename onset offset event_label score``) and,
    with ``write_scores``, ``out/scores/<name>.tsv``. Unreadable files are skipped and counted. Returns
    totals: files, bad files, audio seconds, wall seconds, x real time."""
    out.mkdir(parents=True, exist_ok=True)
    names = names or [f.name for f in files]
    rows, bad, audio_s, wall = ["filename\tonset\toffset\tevent_label\tscore"], [], 0.0, 0.0
    for path, name in zip(files, names, strict=True):
        t0 = time.perf_counter()
        try:
            scores, events, dur = detect_file(detector, path, context, batch_size, post, progress)
        except AudioError as e:
            bad.append(str(e))
            log(f"skipped: {e}")
            continue
        dt = time.perf_counter() - t0
        audio_s, wall = audio_s + dur, wall + dt
        rows += [f"{name}\t{a:.3f}\t{b:.3f}\t{c}\t{s:.4f}" for a, b, c, s in events]
        if write_scores:
            write_scores_tsv(out / "scores" / f"{Path(name).with_suffix('')}.tsv", scores, detector.hop,
                             detector.class_names)
        log(f"{name}: {dur:.1f} s of audio, {len(events)} events, {dur / max(dt, 1e-9):.1f}x real time")
    (out / "events.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"files": len(files) - len(bad), "bad_files": bad, "audio_seconds": audio_s, "wall_seconds": wall,
            "x_real_time": audio_s / max(wall, 1e-9)}
