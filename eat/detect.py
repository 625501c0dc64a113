"""Sound event detection on recordings of any length: windows, stitching, post-processing, event tables.

A file is never decoded whole (at the front-end's sample rate): it is read window by window with soundfile,
so memory depends on the window and the batch, not on the file (an hour at 16 kHz is 230 MB of float32
samples; it is read a few seconds at a time). The plan, in patch columns (160 ms for EAT):

* windows of ``W`` columns (the front-end's training length) start every ``W - 2 * context`` columns;
  each window keeps the columns at least ``context`` columns from its inner edges (the first window keeps
  its start, the last its end, and the last window is moved back so it is full), so every column's
  logits come from exactly one window and have ``context`` columns of audio on both sides;
* a window's fbank is computed from exactly the samples its frames read: fbank frame ``i`` reads samples
  ``[i * shift, i * shift + length)``, so the windowed frames are the frames of the whole file (the clip
  mean that the front-end subtracts is measured over the whole file in a first streaming pass);
* the kept column logits are concatenated at their absolute column index, then interpolated once, over the
  whole file, to the output hop (:func:`eat.model.sed.interpolate_columns`): timestamps are integer frame
  indices times the hop, with no drift and no seams.

Files at another sample rate are decoded whole and resampled first (memory then grows with the file).

:func:`load_detector` loads an export whose head is a sound event detector (``eat.model.sed``) as a
:class:`SoundEventDetector`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch import Tensor, nn
from tqdm import tqdm

from eat.audio.fbank import FrontendConfig, normalize, num_frames, waveform_to_input
from eat.audio.io import AudioError, audio_info, load_audio, resample
from eat.data.strong_labels import num_output_frames
from eat.eval.sed import filter_frames, median_filter, scores_to_events, timestamps
from eat.export import WEIGHTS_FILE, ExportError, _build_module, _check_tensors, read_export
from eat.model.sed import SEDModel, column_geometry, interpolate_columns

BLOCK_SAMPLES = 1 << 20  # samples per read of the streaming mean pass


@dataclass
class Window:
    """One window of the plan: columns ``[start, stop)`` are encoded, ``[keep_from, keep_to)`` kept."""

    start: int
    stop: int
    keep_from: int
    keep_to: int


def plan_windows(total_columns: int, window_columns: int, context: int) -> list[Window]:
    """The window plan of the module docstring for a file of ``total_columns`` columns."""
    if window_columns < 1 or not 0 <= 2 * context < window_columns:
        raise ValueError(f"need 0 <= 2 * context < window, got context {context} and window {window_columns}")
    plan, a = [], 0
    while a < total_columns:
        s = min(max(a - context, 0), max(total_columns - window_columns, 0))
        e = min(s + window_columns, total_columns)
        b = total_columns if e == total_columns else e - context
        plan.append(Window(s, e, a, b))
        a = b
    return plan


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
    cfg, tensors = read_export(path)
    if cfg.head is None or "sed" not in cfg.head:
        raise ExportError(f"{path}: not a sound event detector export (no head.sed in config.json)")
    model = _build_module(cfg)
    _check_tensors(model, tensors, str(Path(path) / WEIGHTS_FILE))
    model.load_state_dict(tensors)
    return SoundEventDetector(model, cfg.frontend, cfg.head.get("class_names")).to(device).eval()


# ---------------------------------------------------------------------------------------------- streaming


class AudioSource:
    """Random access to a file's samples (mono float32 at the front-end rate) without decoding it whole."""

    def __init__(self, path: str | Path, frontend: FrontendConfig):
        self.path = Path(path)
        frames, sr = audio_info(self.path)
        self.wave: Tensor | None = None
        if sr != frontend.sample_rate:  # resampling needs the whole signal: decode it
            self.wave = resample(load_audio(self.path, sr), sr, frontend.sample_rate)
            frames = self.wave.shape[-1]
        self.num_samples = int(frames)
        self.sample_rate = frontend.sample_rate
        self.mean = self._mean() if frontend.remove_dc else 0.0

    def read(self, start: int, stop: int) -> Tensor:
        """Samples ``[start, min(stop, num_samples))`` as a 1-D float32 tensor (mean removed)."""
        stop = min(stop, self.num_samples)
        if self.wave is not None:
            x = self.wave[start:stop]
        else:
            try:
                data, _ = soundfile.read(str(self.path), start=start, stop=stop, dtype="float32", always_2d=True)
            except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
                raise AudioError(self.path, f"cannot decode samples {start}-{stop} ({str(e).splitlines()[0]})") from None
            x = torch.from_numpy(data.mean(axis=1))
        return x.float() - self.mean

    def _mean(self) -> float:
        if self.wave is not None:
            return float(self.wave.double().mean())
        total = 0.0
        with soundfile.SoundFile(str(self.path)) as f:
            for block in f.blocks(blocksize=BLOCK_SAMPLES, dtype="float64", always_2d=True):
                total += float(block.mean(axis=1).sum())
        return total / self.num_samples

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


def window_fbank(source: AudioSource, frontend: FrontendConfig, first_frame: int, frames: int,
                 total_frames: int, pad_value: float) -> Tensor:
    """Normalised fbank frames ``[first_frame, first_frame + frames)`` of the file ``(frames, F)``; frames past
    the file's last full frame hold ``pad_value``."""
    shift = int(frontend.sample_rate * frontend.frame_shift_ms / 1000)
    length = int(frontend.sample_rate * frontend.frame_length_ms / 1000)
    real = max(0, min(frames, total_frames - first_frame))
    out = torch.full((frames, frontend.num_mel_bins), pad_value)
    if real > 0:
        wave = source.read(first_frame * shift, (first_frame + real - 1) * shift + length)
        cfg = dataclasses.replace(frontend, target_length=real, crop="head", remove_dc=False)
        out[:real] = waveform_to_input(wave, cfg)
    return out


def stream_column_logits(
    source: AudioSource, column_fn: Callable[[Tensor], Tensor], frontend: FrontendConfig, patch: int, stride: int,
    window_columns: int, context: int, pad_value: float, batch_size: int = 8, progress: bool = False,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Column logits ``(T', C)`` of a whole file, window by window (see the module docstring).

    ``column_fn`` maps a normalised fbank batch ``(B, T, F)`` to column outputs ``(B, T', C)``; ``patch`` /
    ``stride`` are the encoder's time patch size and stride in frames."""
    total_frames = int(num_frames(source.num_samples, frontend.sample_rate, frontend.frame_length_ms,
                                  frontend.frame_shift_ms))
    if total_frames < 1:
        raise AudioError(source.path, f"shorter than one {frontend.frame_length_ms} ms frame")
    total_cols = max(1, -(-max(total_frames - patch, 0) // stride) + 1)
    plan = plan_windows(total_cols, window_columns, context)
    pieces: list[Tensor] = []
    bar = tqdm(total=len(plan), desc=source.path.name, unit="win", disable=not progress, leave=False)
    for batch in _chunks(plan, batch_size):
        cols = batch[0].stop - batch[0].start  # every window has min(W, T') columns
        frames = (cols - 1) * stride + patch
        x = torch.stack([window_fbank(source, frontend, w.start * stride, frames, total_frames, pad_value)
                         for w in batch]).to(device)
        with torch.inference_mode():
            out = column_fn(x).float().cpu()
        for w, o in zip(batch, out, strict=True):
            pieces.append(o[w.keep_from - w.start : w.keep_to - w.start])
        bar.update(len(batch))
    bar.close()
    return torch.cat(pieces)


def _chunks(plan: list[Window], n: int) -> Iterator[list[Window]]:
    """Batches of ``n`` consecutive windows."""
    for i in range(0, len(plan), n):
        yield plan[i : i + n]


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
