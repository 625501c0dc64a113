"""Sound event detection fine-tuning (``recipes/finetune.py --task sed``).

Data: a strong-label table of training files (DESED / AudioSet-strong tsv, :mod:`eat.data.strong_labels`),
optionally a weak table (clip labels only), and a strong table of evaluation files. Long training files are
cut into windows of the front-end's length (``data.window_hop`` apart) whose labels are cut with them. A
part of the training files (``data.val_fraction``; by group with ``data.groups``) is held out for
selection; the evaluation table is scored once, with the selected checkpoint.

Loss: frame BCE on the output frames (``sed.hop``; padding frames and weak-only clips excluded) plus
``loss.clip_weight`` x clip BCE (clip targets: the classes with an event in the window, or the weak labels).

Augmentations that keep labels aligned (``augment``): ``roll`` rolls the fbank by a random whole number of
output frames and the frame targets by the same number; ``mixup_prob`` mixes waveforms with the reversed
batch and takes the *union* (max) of frame and clip targets; ``time_mask`` / ``freq_mask`` SpecAugment
masks leave the labels as they are.

Schedule: ``freeze_steps`` updates with the encoder frozen (only the head learns; the encoder runs without
autograd), then everything with layer-wise LR decay (the DCASE 2024 winners' frozen-then-joint schedule).
Selection: validation PSDS1 (``sed_scores_eval``; ties, such as PSDS1 = 0 for every early checkpoint of a
small run, broken by PSDS2 and then segment F1), evaluated every ``eval_every_epochs``; the best model is
exported to ``best/`` (load with :func:`eat.detect.load_detector`). At the end the median filter (one of
``post.median_filters``) that maximises validation PSDS1 and per-class thresholds that maximise validation
collar F1 are written to ``postprocess.json``; ``test_metrics.json`` holds the evaluation split's metrics.

``model.kind: crnn`` trains the DCASE baseline's shape from log-mel instead of an encoder (the control).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from eat.audio.augment import beta, spec_augment, uniform
from eat.audio.fbank import FrontendConfig, normalize, waveform_to_input
from eat.audio.stream import AudioSource, stream_column_logits
from eat.config import ConfigError, to_dict
from eat.data.datasets import split_key
from eat.data.loaders import ResumableDistributedSampler, build_loader
from eat.data.manifest import ManifestError
from eat.data.strong_labels import (
    Event,
    StrongLabels,
    events_in_window,
    frame_targets,
    num_output_frames,
    read_class_list,
    read_groups,
    read_strong_tsv,
    read_weak_tsv,
    weak_targets,
    window_starts,
)
from eat.eval.probe import group_validation_split
from eat.eval.sed import best_thresholds, filter_frames, median_filter, sed_metrics
from eat.export import read_export, save_export
from eat.model.classifier import set_drop_path
from eat.model.sed import SEDConfig, SEDHead, SEDModel, column_geometry, interpolate_columns, sed_head_spec
from eat.model.vit import Encoder
from eat.train.dist import DistEnv
from eat.train.finetune import LayerDecaySection, batch_seed_of
from eat.train.layer_decay import finetune_param_groups
from eat.train.optim import OptimConfig
from eat.train.trainer import TrainConfig, Trainer


@dataclass
class SEDModelSection:
    """``kind``: ``encoder`` (an exported encoder ``init`` + the detection head ``sed``) or ``crnn`` (the
    log-mel CRNN control: ``crnn_channels`` conv blocks, each pooling frequency by 2 (time by
    ``crnn_time_pool`` in the first block), then the same head). ``drop_path``: stochastic depth of the
    encoder's last block (linear from 0)."""

    kind: Literal["encoder", "crnn"] = "encoder"
    init: str = ""
    sed: SEDConfig = field(default_factory=lambda: SEDConfig(gru_hidden=0))
    drop_path: float = 0.0
    crnn_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    crnn_time_pool: int = 4


@dataclass
class SEDDataSection:
    """Tables and audio folders. ``train`` / ``valid``: strong tsv of the training / evaluation files,
    their file names relative to ``train_audio`` / ``valid_audio``; ``weak`` (+ ``weak_audio``): optional
    weak tsv; ``classes``: class list (empty: the training table's labels, sorted). ``groups``: optional
    ``filename<TAB>group`` tsv (speaker / source / kit) -> the validation split takes whole groups.
    ``val_fraction``: training files held out for selection. ``window_hop``: seconds between training
    windows of files longer than one window (0: half a window). ``on_bad``: bad table rows ``skip``
    (counted) or ``error``."""

    train: str = ""
    train_audio: str = ""
    valid: str = ""
    valid_audio: str = ""
    weak: str = ""
    weak_audio: str = ""
    classes: str = ""
    groups: str = ""
    val_fraction: float = 0.2
    window_hop: float = 0.0
    on_bad: Literal["skip", "error"] = "skip"
    batch_size: int = 16
    num_workers: int = 1
    frontend: FrontendConfig = field(default_factory=lambda: FrontendConfig(target_length=256))


@dataclass
class SEDAugment:
    """Label-aligned augmentation (module docstring): ``roll``; waveform mixup with probability
    ``mixup_prob`` and Beta(``mixup_alpha``) weights; SpecAugment widths ``time_mask`` frames and
    ``freq_mask`` bins (0 = off)."""

    roll: bool = True
    mixup_prob: float = 0.5
    mixup_alpha: float = 0.2
    time_mask: float = 0.0
    freq_mask: float = 0.0


@dataclass
class SEDLoss:
    """``clip_weight``: weight of the clip-level BCE next to the frame BCE."""

    clip_weight: float = 0.5


@dataclass
class SEDPost:
    """Median filters (seconds, one for every class) tried on validation at the end."""

    median_filters: list[float] = field(default_factory=lambda: [0.0, 0.24, 0.48, 0.96])


@dataclass
class SEDFinetuneConfig:
    """Everything of an SED fine-tuning run (``recipes/configs/finetune_sed*.yaml``)."""

    task: str = "sed"
    model: SEDModelSection = field(default_factory=SEDModelSection)
    data: SEDDataSection = field(default_factory=SEDDataSection)
    augment: SEDAugment = field(default_factory=SEDAugment)
    loss: SEDLoss = field(default_factory=SEDLoss)
    layer_decay: LayerDecaySection = field(default_factory=lambda: LayerDecaySection(decay=0.75, head_scale=10.0))
    post: SEDPost = field(default_factory=SEDPost)
    freeze_steps: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, min_lr=1e-6, warmup_steps=50,
                                                                   clip_grad=1.0, min_lr_mode="absolute"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="outputs/finetune_sed", max_steps=1000,
                                                                   save_every=0, keep_last=1, log_every=50))
    eval_every_epochs: int = 1


# ---------------------------------------------------------------------------------------------- models


class CRNN(nn.Module):
    """The DCASE baseline's shape on log-mel: conv blocks (3x3 conv, batch norm, GLU-free ReLU, pooling)
    -> mean over frequency -> :class:`~eat.model.sed.SEDHead` (BiGRU when ``sed.gru_hidden`` > 0). One
    column per ``time_pool`` fbank frames."""

    def __init__(self, cfg: SEDConfig, num_mel_bins: int, channels: list[int], time_pool: int):
        super().__init__()
        self.cfg, self.time_pool = cfg, time_pool
        layers, c_in = [], 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.AvgPool2d((time_pool if i == 0 else 1, 2))]
            c_in = c
        self.cnn = nn.Sequential(*layers)
        self.head = SEDHead(c_in, cfg)

    def time_patch(self) -> tuple[int, int]:
        return self.time_pool, self.time_pool

    def forward(self, x: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.cnn(x[:, None])  # (B, C, T / pool, F / 2^k)
        return self.head(h.mean(-1).transpose(1, 2), valid)


def _time_patch(model: nn.Module) -> tuple[int, int]:
    if isinstance(model, SEDModel):
        return model.encoder.cfg.patch_size, model.encoder.cfg.patch_stride[0]
    return model.time_patch()


def geometry(model: nn.Module, fe: FrontendConfig) -> tuple[float, float]:
    """Column hop and first column centre (seconds) of ``model``'s output grid."""
    if isinstance(model, SEDModel):
        return column_geometry(model.encoder.cfg, fe.sample_rate, fe.frame_shift_ms, fe.frame_length_ms)
    p, _ = model.time_patch()
    shift = fe.frame_shift_ms / 1000
    return p * shift, (p - 1) * shift / 2 + fe.frame_length_ms / 2000


def build_model(cfg: SEDFinetuneConfig, num_classes: int) -> tuple[nn.Module, FrontendConfig]:
    """The detector to train and the front-end it reads (an encoder's own export front-end, length from
    ``data.frontend.target_length``)."""
    sed = dataclasses.replace(cfg.model.sed, num_classes=num_classes)
    fe = cfg.data.frontend
    if cfg.model.kind == "crnn":
        return CRNN(sed, fe.num_mel_bins, cfg.model.crnn_channels, cfg.model.crnn_time_pool), fe
    if not cfg.model.init:
        raise ConfigError("model.init: an exported encoder is needed (--init DIR), or model.kind: crnn")
    exported, tensors = read_export(cfg.model.init)
    fe = dataclasses.replace(exported.frontend, target_length=fe.target_length)
    encoder = Encoder(dataclasses.replace(exported.encoder, target_length=fe.target_length))
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")})
    set_drop_path(encoder, cfg.model.drop_path)
    return SEDModel(sed, encoder), fe


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Clip:
    """One training item: ``start`` seconds into ``path``; ``events`` relative to the window (None: weak)."""

    path: Path
    start: float
    events: list[Event] | None
    weak: list[str] = field(default_factory=list)


class WindowDataset(torch.utils.data.Dataset):
    """Fixed-length waveform windows with frame targets at the output hop, clip targets and masks."""

    def __init__(self, clips: list[Clip], class_names: list[str], fe: FrontendConfig, hop: float):
        self.clips, self.fe, self.hop = clips, fe, hop
        self.index = {c: i for i, c in enumerate(class_names)}
        shift = int(fe.sample_rate * fe.frame_shift_ms / 1000)
        win = int(fe.sample_rate * fe.frame_length_ms / 1000)
        self.samples = (fe.target_length - 1) * shift + win  # exactly target_length fbank frames
        self.seconds = fe.target_length * shift / fe.sample_rate
        self.frames = num_output_frames(self.seconds, hop)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, epoch = split_key(key)
        c = self.clips[i]
        sr = self.fe.sample_rate
        a = int(round(c.start * sr))
        data, file_sr = soundfile.read(str(c.path), start=a, stop=a + self.samples, dtype="float32", always_2d=True)
        if file_sr != sr:
            raise ManifestError(f"{c.path}: sample rate {file_sr}, the front-end reads {sr} Hz (resample the files)")
        wave = torch.zeros(self.samples)
        n = min(len(data), self.samples)
        wave[:n] = torch.from_numpy(data[:n].mean(axis=1))
        strong = c.events is not None
        frames = frame_targets(c.events or [], self.index, self.frames, self.hop)
        valid_s = n / sr
        mask = torch.arange(self.frames, dtype=torch.float64) * self.hop < valid_s
        clip = weak_targets(c.events, self.index) if strong else torch.zeros(len(self.index))
        for label in c.weak:
            clip[self.index[label]] = 1.0
        return {"wave": wave, "length": max(n, 1), "frames": frames, "frame_mask": mask & strong, "clip": clip,
                "index": i, "epoch": epoch}


def training_clips(labels: StrongLabels, window: float, hop: float) -> list[Clip]:
    out = []
    for name, events in labels.events.items():
        dur = labels.durations[name]
        for s in window_starts(dur, window, hop):
            out.append(Clip(labels.paths[name], s, events_in_window(events, s, s + window)))
    return out


def split_files(labels: StrongLabels, cfg: SEDDataSection, seed: int) -> tuple[StrongLabels, StrongLabels]:
    """``(fit, validation)`` parts of the training table: whole files, whole groups with ``groups``."""
    files = labels.files
    if cfg.groups:
        fit_idx, val_idx = group_validation_split(read_groups(cfg.groups, files), cfg.val_fraction, seed)
    else:
        perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))
        n_val = int(round(cfg.val_fraction * len(files)))
        fit_idx, val_idx = perm[n_val:].sort().values, perm[:n_val].sort().values
    if len(fit_idx) == 0 or len(val_idx) == 0:
        raise ConfigError(f"data.val_fraction {cfg.val_fraction} leaves no file on one side of {len(files)}")

    def part(idx: Tensor) -> StrongLabels:
        keep = [files[int(i)] for i in idx]
        return StrongLabels({f: labels.events[f] for f in keep}, labels.class_names,
                            {f: labels.durations[f] for f in keep}, {f: labels.paths[f] for f in keep})

    return part(fit_idx), part(val_idx)


# ---------------------------------------------------------------------------------------------- training step


class SEDTrainModel(nn.Module):
    """Detector + label-aligned augmentation + loss; ``forward(**batch) -> {"loss", "frame_loss", "clip_loss"}``."""

    def __init__(self, model: nn.Module, cfg: SEDFinetuneConfig, fe: FrontendConfig, frames: int, seed: int):
        super().__init__()
        self.model, self.cfg, self.fe, self.frames = model, cfg, fe, frames
        self.col_hop, self.first_centre = geometry(model, fe)
        self.seed = seed
        self.register_buffer("updates", torch.zeros(1, dtype=torch.long))  # 1-D: the trainer hashes buffers as bytes
        self._host_updates: int | None = None
        hop_frames = cfg.model.sed.hop * 1000 / fe.frame_shift_ms
        self.roll_frames = int(round(hop_frames))
        if cfg.augment.roll and (abs(hop_frames - self.roll_frames) > 1e-9
                                 or self.roll_frames * frames != fe.target_length):
            raise ConfigError(f"augment.roll needs sed.hop to be a whole number of {fe.frame_shift_ms} ms frames "
                              f"dividing the window of {fe.target_length} frames; set augment.roll false")

    def after_optimizer_step(self, step: int) -> None:
        self.updates.fill_(step)  # saved with the checkpoint: a resumed run knows where the schedule is
        self._host_updates = step

    def frozen(self) -> bool:
        if not isinstance(self.model, SEDModel) or self.cfg.freeze_steps <= 0:
            return False
        if self._host_updates is None:  # one read of the (restored) buffer, then a host counter: no sync per step
            self._host_updates = int(self.updates[0])
        return self._host_updates < self.cfg.freeze_steps

    def forward(self, fbank: Tensor, frames: Tensor, frame_mask: Tensor, clip: Tensor,
                batch_seed: int = 0) -> dict[str, Tensor]:
        gen = torch.Generator(device=fbank.device).manual_seed(self.seed * 1_000_003 + batch_seed)
        aug = self.cfg.augment
        if self.training and aug.roll:
            k = (uniform((fbank.shape[0],), gen, fbank.device) * self.frames).long()
            fbank = _roll(fbank, k * self.roll_frames)
            frames, frame_mask = _roll(frames, k), _roll(frame_mask, k)
        if self.training and (aug.time_mask > 0 or aug.freq_mask > 0):
            fbank = spec_augment(fbank, aug.freq_mask, aug.time_mask, gen)
        m = self.model
        if self.training and self.frozen():
            with torch.no_grad():
                feats = m.column_features(fbank)
            col, clip_logits = m.head(feats)
            if dist.is_available() and dist.is_initialized():  # DDP wants every parameter in the graph
                col = col + 0.0 * sum(p.sum() for p in m.encoder.parameters() if p.requires_grad)
        else:
            col, clip_logits = m(fbank)
        logits = interpolate_columns(col, self.frames, self.cfg.model.sed.hop, self.col_hop, self.first_centre)
        per = F.binary_cross_entropy_with_logits(logits.float(), frames, reduction="none")
        w = frame_mask.float()[..., None].expand_as(per)
        frame_loss = (per * w).sum() / w.sum().clamp_min(1.0)
        clip_loss = F.binary_cross_entropy_with_logits(clip_logits.float(), clip)
        return {"loss": frame_loss + self.cfg.loss.clip_weight * clip_loss, "frame_loss": frame_loss.detach(),
                "clip_loss": clip_loss.detach()}


def _roll(x: Tensor, shifts: Tensor) -> Tensor:
    """Roll each row of ``x (B, T, ...)`` along time by ``shifts[b]``."""
    t = x.shape[1]
    pos = (torch.arange(t, device=x.device)[None] - shifts[:, None]).remainder(t)
    return x.gather(1, pos.view(*pos.shape, *([1] * (x.dim() - 2))).expand(x.shape))


class SEDBatchPrep:
    """Trainer ``prepare``: waveform mixup (union of targets), then the fbank on the device."""

    def __init__(self, fe: FrontendConfig, aug: SEDAugment, seed: int):
        self.fe, self.aug, self.seed = fe, aug, seed

    def __call__(self, batch: dict, device: torch.device) -> tuple[dict[str, Any], dict[str, float]]:
        seed = batch_seed_of(batch["index"], batch.get("epoch"))
        gen = torch.Generator().manual_seed(self.seed + 7919 + seed)
        wave, length = batch["wave"], batch["length"]
        frames, mask, clip = batch["frames"], batch["frame_mask"], batch["clip"]
        a = self.aug
        if a.mixup_prob > 0 and float(uniform((1,), gen, "cpu")) < a.mixup_prob and wave.shape[0] > 1:
            lam = float(beta(a.mixup_alpha, 1, gen))
            wave = lam * wave + (1 - lam) * wave.flip(0)
            frames, clip = torch.maximum(frames, frames.flip(0)), torch.maximum(clip, clip.flip(0))
            mask, length = mask | mask.flip(0), torch.maximum(length, length.flip(0))
        fe = dataclasses.replace(self.fe, crop="head")
        fbank = waveform_to_input(wave.to(device), fe, lengths=length.to(device))
        return ({"fbank": fbank, "frames": frames.to(device), "frame_mask": mask.to(device), "clip": clip.to(device),
                 "batch_seed": seed}, {"clips": float(wave.shape[0])})


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def file_scores(model: nn.Module, labels: StrongLabels, fe: FrontendConfig, hop: float, device: torch.device,
                batch_size: int = 8) -> dict[str, np.ndarray]:
    """Frame probabilities ``(N, C)`` of every file of ``labels`` (whole files, windowed and stitched)."""
    was = model.training
    model.eval()
    patch, stride = _time_patch(model)
    col_hop, c0 = geometry(model, fe)
    window = (fe.target_length - patch) // stride + 1
    pad = float(normalize(torch.tensor(0.0), fe.norm_mean, fe.norm_std))
    out = {}
    for name in labels.files:
        src = AudioSource(labels.paths[name], fe)
        cols = stream_column_logits(src, lambda x: model(x)[0], fe, patch, stride, window, max(1, window // 8), pad,
                                    batch_size, device=device)
        n = num_output_frames(src.duration, hop)
        out[name] = torch.sigmoid(interpolate_columns(cols, n, hop, col_hop, c0)).numpy()
    model.train(was)
    return out


def evaluate(model: nn.Module, labels: StrongLabels, fe: FrontendConfig, hop: float, device: torch.device,
             median_s: float = 0.0, thresholds: float | dict = 0.5) -> dict[str, float]:
    scores = file_scores(model, labels, fe, hop, device)
    c = len(labels.class_names)
    scores = {f: median_filter(s, filter_frames(median_s, hop, c)) for f, s in scores.items()}
    return sed_metrics(scores, labels.ground_truth(), labels.durations, hop, labels.class_names, thresholds)


SELECTION_KEYS = ("psds1", "psds2", "segment_f1")


class SEDTracker:
    """The trainer's ``eval_fn``: validation PSDS1; the best model is kept (exported for encoder models)."""

    def __init__(self, val: StrongLabels, cfg: SEDFinetuneConfig, fe: FrontendConfig, env: DistEnv, out: Path):
        self.val, self.cfg, self.fe, self.env, self.out = val, cfg, fe, env, out
        self.best: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.best_state: dict[str, Tensor] | None = None

    def __call__(self, module: SEDTrainModel, step: int) -> dict[str, float]:
        m = evaluate(module.model, self.val, self.fe, self.cfg.model.sed.hop, self.env.device)
        row = {"step": step, **m}
        self.history.append(row)
        key = tuple(m[k] for k in SELECTION_KEYS)  # PSDS1, ties (e.g. all 0 early on) broken by PSDS2, segment F1
        if not self.best or (all(map(math.isfinite, key)) and key > tuple(self.best[k] for k in SELECTION_KEYS)):
            self.best = row
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in module.model.state_dict().items()})
            if self.env.is_main and isinstance(module.model, SEDModel):
                export_detector(module.model, self.out / "best", self.fe, self.val.class_names, row)
        return {**m, "best_psds1": self.best["psds1"]}


def export_detector(model: SEDModel, out: Path, fe: FrontendConfig, class_names: list[str], meta: dict) -> Path:
    head = {**sed_head_spec(model.cfg), "class_names": list(class_names)}
    return save_export(out, model.encoder.cfg, model.state_dict(), fe, head=head,
                       meta={"source": "finetune:sed", **{k: v for k, v in meta.items() if k == "step"}})


def choose_postprocess(model: nn.Module, val: StrongLabels, fe: FrontendConfig, cfg: SEDFinetuneConfig,
                       device: torch.device) -> dict[str, Any]:
    """The median filter (of ``post.median_filters``) with the best validation PSDS1, then per-class
    thresholds with the best validation collar F1 (``sed_scores_eval.collar_based.best_fscore``)."""
    hop, c = cfg.model.sed.hop, len(val.class_names)
    raw = file_scores(model, val, fe, hop, device)
    best = None
    for s in cfg.post.median_filters:
        scores = {f: median_filter(x, filter_frames(s, hop, c)) for f, x in raw.items()}
        m = sed_metrics(scores, val.ground_truth(), val.durations, hop, val.class_names, psds2=False)
        if best is None or m["psds1"] > best[1]:
            best = (s, m["psds1"], scores)
    s, psds1, scores = best
    thresholds = best_thresholds(scores, val.ground_truth(), hop, val.class_names)
    return {"median_filter": s, "thresholds": thresholds, "val_psds1": psds1}


# ---------------------------------------------------------------------------------------------- a run


def load_tables(cfg: SEDFinetuneConfig) -> tuple[StrongLabels, StrongLabels, dict[str, list[str]]]:
    d = cfg.data
    for key in ("train", "train_audio", "valid", "valid_audio"):
        if not getattr(d, key):
            raise ConfigError(f"data.{key} is not set (the sed task needs strong tables and their audio folders)")
    classes = read_class_list(d.classes) if d.classes else None
    train = read_strong_tsv(d.train, classes, d.train_audio, d.on_bad)
    test = read_strong_tsv(d.valid, train.class_names, d.valid_audio, d.on_bad)
    weak: dict[str, list[str]] = {}
    if d.weak:
        weak, skipped = read_weak_tsv(d.weak, train.class_names, d.on_bad)
        train.skipped += skipped
    return train, test, weak


def run_sed(cfg: SEDFinetuneConfig, env: DistEnv, log=print) -> dict[str, Any]:
    """Train, select on validation PSDS1, choose post-processing, score the evaluation table once."""
    out = Path(cfg.train.out_dir)
    train_all, test, weak = load_tables(cfg)
    for t, name in ((train_all, "train"), (test, "valid")):
        if t.skipped and env.is_main:
            log(f"note: {len(t.skipped)} bad row(s) of data.{name} skipped (first: {t.skipped[0]})")
    fit, val = split_files(train_all, cfg.data, cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model, fe = build_model(cfg, len(train_all.class_names))
    ds0 = WindowDataset([], train_all.class_names, fe, cfg.model.sed.hop)
    hop_s = cfg.data.window_hop or ds0.seconds / 2
    clips = training_clips(fit, ds0.seconds, hop_s)
    if weak:
        root = Path(cfg.data.weak_audio or cfg.data.train_audio)
        clips += [Clip(root / f, 0.0, None, labels) for f, labels in weak.items()]
    ds = WindowDataset(clips, train_all.class_names, fe, cfg.model.sed.hop)
    sampler = ResumableDistributedSampler(len(ds), env.world_size, env.rank, shuffle=True, seed=cfg.train.seed)
    if sampler.per_rank < cfg.data.batch_size:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} is larger than the {sampler.per_rank} training "
                          "windows per rank")
    loader = build_loader(ds, sampler, cfg.data.batch_size, cfg.data.num_workers, train=True, max_bad_fraction=0.0)
    train_model = SEDTrainModel(model, cfg, fe, ds.frames, cfg.train.seed + env.rank)
    tracker = SEDTracker(val, cfg, fe, env, out)
    train_cfg = dataclasses.replace(cfg.train, eval_every=max(1, cfg.eval_every_epochs) * len(loader))
    depth = len(model.encoder.blocks) if isinstance(model, SEDModel) else 1
    ld = cfg.layer_decay
    groups = functools.partial(finetune_param_groups, weight_decay=cfg.optim.weight_decay,
                               layer_decay=ld.decay if isinstance(model, SEDModel) else 1.0, depth=depth,
                               form=ld.form, decay_all=cfg.optim.decay_all, head_scale=ld.head_scale)
    prep = SEDBatchPrep(fe, cfg.augment, cfg.train.seed + env.rank)
    trainer = Trainer(train_model, loader, train_cfg, cfg.optim, env, groups, prepare=prep, eval_fn=tracker,
                      config=to_dict(cfg))
    n_params = sum(p.numel() for p in model.parameters())
    trainer.logger.console(f"sed ({cfg.model.kind}): {n_params / 1e6:.2f} M params, {len(train_all.class_names)} "
                           f"classes, {len(clips)} training windows from {len(fit.files)} files, validation "
                           f"{len(val.files)} files, {len(loader)} batches/epoch")
    result = trainer.fit()
    summary: dict[str, Any] = {"status": result.status, "best": tracker.best, "history": tracker.history}
    if result.status != "done":
        return summary
    model.load_state_dict(tracker.best_state)
    post = choose_postprocess(model, val, fe, cfg, env.device)
    test_m = evaluate(model, test, fe, cfg.model.sed.hop, env.device, post["median_filter"],
                      dict(zip(test.class_names, post["thresholds"], strict=True)))
    summary.update(post=post, test=test_m)
    if env.is_main:
        (out / "postprocess.json").write_text(json.dumps({k: post[k] for k in ("median_filter", "thresholds")},
                                                         indent=1) + "\n")
        (out / "test_metrics.json").write_text(json.dumps({"step": tracker.best["step"], **test_m}, indent=1) + "\n")
        (out / "sed_summary.json").write_text(json.dumps({**summary, "config": to_dict(cfg)}, indent=1) + "\n")
    return summary
