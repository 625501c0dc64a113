"""EAT self-supervised pretraining as a library: config, model (optionally from pretrained weights), loader,
batch preparation and the run, as :mod:`eat.train.finetune` is for fine-tuning.

``recipes/pretrain_as2m.py`` is the command line over :func:`run`; a Python user does the same with::

    from eat.config import load_config
    from eat.train.pretrain import PretrainConfig, run
    run(load_config(PretrainConfig, "recipes/configs/tiny.yaml", ["data.train_manifest=train.tsv"]))

The pieces, in the order :func:`run` uses them:

* :func:`resolve_model` - ``model.preset`` plus any :class:`~eat.model.eat.EATConfig` field; ``model.init``
  names pretrained weights and switches the EMA defaults to :data:`CONTINUED_EMA`.
* :func:`build_model` - the :class:`~eat.model.eat.EATModel`, with :func:`load_init` / :func:`apply_init`
  for continued pretraining (official fairseq or Hugging Face checkpoints, our checkpoints, exports).
* :func:`build_loader` - :class:`~eat.data.PretrainDataset` (clips + masks made in the workers) behind the
  resumable sampler and the bad-file policy; with ``data.format=shards`` the same over tar shards
  (:mod:`eat.data.shards`).
* :class:`PretrainBatchPrep` - the trainer's ``prepare``: :func:`eat.data.batch.model_input` (copy, or the
  batched fbank on the device) plus the mask, which stays on the host.
* :func:`run` - the :class:`~eat.train.trainer.Trainer` loop, under ``torchrun`` or in one process.

:func:`prepare_own_data` turns a folder of audio into what a run needs (manifest, normalisation statistics,
``target_length``); ``make pretrain DATA=/folder`` and ``recipes/pretrain_as2m.py --data-dir`` call it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import soundfile
import torch
from safetensors import SafetensorError
from torch import Tensor

from eat.audio.fbank import FrontendConfig
from eat.audio.io import AudioError
from eat.config import ConfigError, from_dict, load_config, to_dict
from eat.data import BadDataError, ManifestError, MaskConfig, PretrainDataset, ResumableDistributedSampler
from eat.data import build_loader as build_data_loader
from eat.data.batch import Batch, model_input
from eat.data.loaders import SkippingLoader, check_loader_config, resolve_workers
from eat.data.manifest import read_manifest, scan_audio, write_manifest
from eat.data.norm_stats import compute_stats
from eat.data.shards import ShardPretrainDataset, ShardSampler, ShardSet
from eat.export import ExportError, is_export_dir, read_export
from eat.model.convert import ConversionError, load_official, read_tensor_file
from eat.model.eat import EATConfig, EATModel, eat_config
from eat.model.vit import EncoderConfig
from eat.train.checkpoint import MODEL_FILE, CheckpointError, find_checkpoint
from eat.train.dist import DistEnv, init_distributed, shutdown
from eat.train.flops import pretrain_flops_per_clip
from eat.train.optim import OptimConfig, param_groups
from eat.train.trainer import PREEMPTED_EXIT, TrainConfig, Trainer, check_train_config

log = logging.getLogger("eat.train")

# The exceptions that mean "bad input or settings" (not a bug): a command line prints them as one line
# ``error: <message>`` and exits non-zero.
USER_ERRORS = (ConfigError, ManifestError, CheckpointError, BadDataError, AudioError, FloatingPointError)

# EMA schedule of a run that starts from pretrained weights (``model.init``), unless the config sets the
# ``model.ema_*`` keys itself. The official schedule (0.9998 rising to 0.99999 over 100k updates) is made
# for a teacher that starts random; continued from a trained teacher, an end decay of 0.99999 (a time
# constant of 100k updates) would leave the teacher where it started for any run of realistic length.
# A constant 0.9999 lets it follow the adapting student with a time constant of 10k updates (half-life
# ~6.9k): it has moved ~63 % of the way after 10k updates and ~95 % after 30k. For runs much shorter
# than ~20k updates set e.g. model.ema_decay=0.999 model.ema_end_decay=0.999 (time constant 1k).
CONTINUED_EMA = {"ema_decay": 0.9999, "ema_end_decay": 0.9999, "ema_anneal_end_step": 0}


@dataclass
class DataConfig:
    """Unlabelled clips and the front-end; the clip length is the model's ``encoder.target_length``."""

    format: Literal["files", "shards"] = "files"  # files: read train_manifest; shards: read train_shards
    train_manifest: str = ""  # fairseq-style tsv (root line, then "relpath<TAB>num_samples")
    train_shards: str = ""  # shard folder (or its index.json) from tools/make_shards.py, for format=shards
    shard_window: int = 4096  # shuffle window (clips) of the shard order (format=shards; docs/design.md)
    batch_size: int = 12  # clips per device per micro-batch
    # loader worker processes per device (they decode audio and make the masks); auto: one per core this
    # process may use, at most 8 (eat.data.loaders.resolve_workers); a number is kept as set
    num_workers: int | Literal["auto"] = "auto"
    prefetch_factor: int = 4  # batches each worker prepares ahead
    fbank_on_device: bool = False  # workers return waveforms; the fbank runs batched on the device
    norm: Literal["audioset", "esc50", "spc2"] = "audioset"  # normalisation statistics (a recipe's preset)
    # statistics of your own data (tools/compute_norm_stats.py, or prepare_own_data); both or neither,
    # they replace the preset's mean/std
    norm_mean: float | None = None
    norm_std: float | None = None
    crop: Literal["head", "random"] = "head"  # which window of a longer clip: the start, or a random one
    max_bad_fraction: float = 0.01  # stop when more of an epoch's clips (per rank) are unreadable than this
    max_bad_clips: int = 10  # ... and than this many (below half the epoch): one bad file never stops a small set


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs; saved resolved as ``config.yaml`` with the run.

    ``model`` is ``preset`` (base/large/tiny) plus any :class:`~eat.model.eat.EATConfig` field on top,
    and ``init``: pretrained weights to start from (see :func:`load_init`).
    """

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "base"})  # preset + init + EATConfig fields
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------- config


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def init_path(section: dict[str, Any]) -> str:
    """``model.init`` of a model section ("" when the run starts from random weights)."""
    init = section.get("init") or ""
    if not isinstance(init, str):
        raise ConfigError(f"model.init: expected a path, got {init!r}")
    return init


def resolve_model(section: dict[str, Any]) -> EATConfig:
    """``model.preset`` (base/large/tiny) with any ``EATConfig`` field of the section on top, checked strictly.

    With ``model.init`` set, the EMA fields the section does not set come from :data:`CONTINUED_EMA`.
    """
    section = dict(section)
    preset = section.pop("preset", "base")
    init = init_path(section)
    section.pop("init", None)
    if not isinstance(preset, str):
        raise ConfigError(f"model.preset: expected a string, got {preset!r}")
    if init:
        section = {**CONTINUED_EMA, **section}
    return from_dict(EATConfig, _merge(to_dict(eat_config(preset)), section), "model")


def accumulation_aware(cfg: EATConfig, grad_accum: int) -> EATConfig:
    """The official utterance loss is a *sum* over a device's clones. The trainer averages the losses of
    ``grad_accum`` micro-batches, which would shrink that sum by ``grad_accum``; scaling the CLS weight by
    ``grad_accum`` keeps the update equal to one micro-batch of ``grad_accum x`` the clips (as fairseq's
    update_freq does)."""
    if grad_accum > 1 and cfg.utterance_reduction == "official":
        return dataclasses.replace(cfg, cls_loss_weight=cfg.cls_loss_weight * grad_accum)
    return cfg


def frontend_for(data: DataConfig, model: EATConfig | EncoderConfig) -> FrontendConfig:
    """The front-end of a run: ``data.norm``'s preset (or ``data.norm_mean`` / ``norm_std``) at the
    encoder's ``target_length`` and mel bins (also what an export of the run records)."""
    enc = model.encoder if isinstance(model, EATConfig) else model
    own = {}
    if (data.norm_mean is None) != (data.norm_std is None):
        raise ConfigError("data.norm_mean and data.norm_std: set both (your data's statistics) or neither")
    if data.norm_mean is not None:
        own = {"norm_mean": data.norm_mean, "norm_std": data.norm_std}
    return FrontendConfig.from_preset(data.norm, target_length=enc.target_length, num_mel_bins=enc.num_mel_bins,
                                      crop=data.crop, **own)


# ---------------------------------------------------------------------------------------- init weights


@dataclass
class InitWeights:
    """Pretrained weights in :class:`EATModel` names (without the ``student.``/``teacher.``/``decoder.``
    prefixes); ``teacher`` / ``decoder`` are None when the source has none."""

    source: str  # what was read, for messages
    student: dict[str, Tensor]
    teacher: dict[str, Tensor] | None = None
    decoder: dict[str, Tensor] | None = None


def load_init(path: str | Path, shapes_only: bool = False) -> InitWeights:
    """Read pretrained weights for ``model.init``; any problem is a one-line :class:`ConfigError`.
    ``shapes_only``: meta tensors from the files' headers (what ``--check`` compares with the model).

    Accepted: an official EAT pretraining checkpoint (fairseq ``.pt`` with the nested ``_ema`` teacher and
    the decoder, or a Hugging Face snapshot / ``.safetensors`` with its ``config.json``: encoder only); one
    of our pretraining runs or ``step_*`` checkpoints (student, teacher and decoder); an exported encoder
    directory (``config.json`` + ``model.safetensors``, encoder only). An official fine-tuned checkpoint
    gives its encoder (the head is dropped).
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"model.init: {p}: no such file or directory")
    try:
        if is_export_dir(p):
            _, tensors = read_export(p, shapes_only)
            student = {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}
            return InitWeights(f"exported encoder {p}", student)
        step = find_checkpoint(p)
        if step is not None:
            state = read_tensor_file(step / MODEL_FILE, shapes_only)
            parts = {name: {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(f"{name}.")}
                     for name in ("student", "teacher", "decoder")}
            if not parts["student"]:
                raise ConfigError(f"model.init: {step}: not a pretraining checkpoint (no student.* weights); "
                                  "for a fine-tuned model export it and pass the export directory")
            return InitWeights(f"checkpoint {step}", parts["student"], parts["teacher"] or None,
                               parts["decoder"] or None)
        conv = load_official(p, shapes_only)
    except (ConversionError, ExportError, CheckpointError) as e:
        raise ConfigError(f"model.init: {e}") from None
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"model.init: {p}: unreadable ({str(e).splitlines()[0]})") from None
    if conv.head is not None and not shapes_only:
        log.warning("model.init: %s is a fine-tuned checkpoint; starting from its encoder (head dropped)", p)
    return InitWeights(f"{conv.source_format} checkpoint {p}", conv.encoder, conv.teacher, conv.decoder)


def fit_positions(tensors: dict[str, Tensor], expected: dict[str, Tensor], freq_patches: int) -> dict[str, Tensor]:
    """Slice positional tables that cover more time than the model's: ``pos_embed`` (time-major rows of
    ``freq_patches``) and ``time_pos``. A shorter ``model.encoder.target_length`` (or ``max_time_patches``)
    than the checkpoint's thus keeps the first time positions, which is what the longer model used for
    the start of every clip."""
    out = dict(tensors)
    for key, per_row in (("pos_embed", freq_patches), ("time_pos", 1)):
        have, want = out.get(key), expected.get(key)
        if have is None or want is None or have.shape == want.shape or have.dim() != 3:
            continue
        rows = want.shape[1]
        if have.shape[0] == want.shape[0] and have.shape[2] == want.shape[2] and have.shape[1] > rows \
                and rows % per_row == 0:
            out[key] = have[:, :rows]
    return out


def _mismatches(part: str, tensors: dict[str, Tensor], expected: dict[str, Tensor]) -> list[str]:
    problems = [f"{part}.{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
                for k, v in tensors.items() if k in expected and v.shape != expected[k].shape]
    problems += [f"{part}.{k} missing" for k in expected if k not in tensors]
    problems += [f"{part}.{k} unexpected" for k in tensors if k not in expected]
    return problems


def fit_init(model: EATModel, weights: InitWeights, preset: str = "") -> dict[str, dict[str, Tensor]]:
    """The tensors of ``weights`` for each part of ``model`` (positional tables sliced, :func:`fit_positions`),
    checked against its shapes: a mismatch is one :class:`ConfigError` line listing the first mismatching
    keys (file vs model). Works on meta tensors and a model built on the meta device (``--check``)."""
    freq = model.student.num_freq_patches
    parts = {"student": (model.student, weights.student),
             "teacher": (model.teacher, weights.teacher if weights.teacher is not None else weights.student)}
    if weights.decoder is not None:
        parts["decoder"] = (model.decoder, weights.decoder)
    fitted, problems = {}, []
    for name, (module, tensors) in parts.items():
        expected = module.state_dict()
        fitted[name] = fit_positions(tensors, expected, freq)
        problems += _mismatches(name, fitted[name], expected)
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... {len(problems) - 4} more" if len(problems) > 4 else "")
        arch = f"model.preset={preset} and " if preset else ""
        raise ConfigError(f"model.init: {weights.source} does not fit the model ({shown}; shapes are file vs "
                          f"model): set {arch}model.encoder.* to the checkpoint's architecture")
    return fitted


def check_init(cfg: PretrainConfig) -> None:
    """Refuse ``model.init`` weights that do not fit the configured model, reading only their shapes (file
    headers / a memory map, and the model built on the meta device): what ``--check`` runs before torchrun
    starts ranks, so a mismatch is one line there instead of a rank's error plus torchrun's traceback."""
    init = init_path(cfg.model)
    if not init:
        return
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        model = EATModel(accumulation_aware(resolve_model(cfg.model), cfg.train.grad_accum))
    fit_init(model, load_init(init, shapes_only=True), str(cfg.model.get("preset", "base")))


def apply_init(model: EATModel, weights: InitWeights, preset: str = "") -> None:
    """Load ``weights`` into ``model``: the student; the teacher from the EMA weights when there are
    some, else a copy of the student; the decoder when there is one, else it keeps its fresh random
    weights (with a warning). Positional tables are sliced to the model (:func:`fit_positions`).

    Every tensor is checked before anything is loaded (:func:`fit_init`).
    """
    fitted = fit_init(model, weights, preset)
    with torch.no_grad():
        for name, tensors in fitted.items():
            getattr(model, name).load_state_dict(tensors)
    if weights.decoder is None:
        log.warning("model.init: %s has no decoder; the decoder starts from random weights", weights.source)
    if weights.teacher is None:
        log.warning("model.init: %s has no EMA teacher; the teacher starts as a copy of the student",
                    weights.source)


def build_model(cfg: PretrainConfig) -> tuple[EATModel, EATConfig]:
    """The model of a run (seeded with ``train.seed``, so every rank builds the same one) and its config
    (before :func:`accumulation_aware`); with ``model.init`` the pretrained weights are loaded."""
    model_cfg = resolve_model(cfg.model)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank (FSDP2 needs it)
    model = EATModel(accumulation_aware(model_cfg, cfg.train.grad_accum))
    init = init_path(cfg.model)
    if init:
        apply_init(model, load_init(init), str(cfg.model.get("preset", "base")))
    return model, model_cfg


# ---------------------------------------------------------------------------------------- data


def build_loader(cfg: PretrainConfig, model_cfg: EATConfig, model: EATModel,
                 env: DistEnv) -> tuple[SkippingLoader, FrontendConfig]:
    """The training loader (clips and masks from the workers) and the run's front-end."""
    data = cfg.data
    frontend = frontend_for(data, model_cfg)
    mask_cfg = MaskConfig(clones=model_cfg.clone_batch, mask_ratio=model_cfg.mask_ratio, block=model_cfg.mask_block,
                          adjust=model_cfg.mask_adjust, grid=model.student.grid(frontend.target_length),
                          mix_clean_rows=model.mix_clean_rows(frontend.target_length) if model_cfg.mix else 0)
    shards = data.format == "shards"
    source = data.train_shards if shards else data.train_manifest
    dataset = (ShardPretrainDataset if shards else PretrainDataset)(
        source, frontend, mask_cfg, return_waveform=data.fbank_on_device, seed=cfg.train.seed,
        max_bad_fraction=data.max_bad_fraction)
    if len(dataset) < data.batch_size * env.world_size:
        raise ConfigError(f"{source}: {len(dataset)} clips, fewer than one batch "
                          f"(data.batch_size={data.batch_size} x {env.world_size} ranks)")
    if shards:  # shard-local, window-shuffled order (eat.data.shards)
        sampler = ShardSampler(dataset.shards, env.world_size, env.rank, shuffle=True, seed=cfg.train.seed,
                               window=data.shard_window)
    else:
        sampler = ResumableDistributedSampler(len(dataset), env.world_size, env.rank, shuffle=True,
                                              seed=cfg.train.seed)
    loader = build_data_loader(dataset, sampler, data.batch_size, num_workers=data.num_workers,
                               pin_memory=env.device.type == "cuda",
                               prefetch_factor=data.prefetch_factor,
                               max_bad_clips=data.max_bad_clips)
    return loader, frontend


class PretrainBatchPrep:
    """The trainer's ``prepare`` for pretraining: batch -> (model kwargs, counts).

    The input goes through :func:`eat.data.batch.model_input`; the mask stays on the host and is copied
    by the model asynchronously, as are the ``mix_rows`` of mixture pretraining (on a GPU the model takes
    its visible count from the config, so nothing in the step reads a tensor on the host).
    """

    def __init__(self, frontend: FrontendConfig):
        self.frontend = frontend

    def __call__(self, batch: Batch, device: torch.device) -> tuple[dict[str, Any], dict[str, float]]:
        source = model_input(batch, self.frontend, device)
        kwargs = {"source": source, "mask": batch["mask"]}
        if "mix_rows" in batch:  # mixture pretraining: the model mixes on the device (eat.model.mixing)
            kwargs["mix_rows"] = batch["mix_rows"]
        return kwargs, {"clips": source.shape[0], "bad_clips": batch["num_skipped"]}


def configure_logging(env: DistEnv) -> None:
    """Rank 0 prints progress; other ranks print only warnings (e.g. the bad files they met), tagged."""
    if env.is_main:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                            stream=sys.stdout)
    else:
        logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {env.rank}] %(message)s",
                            datefmt="%H:%M:%S", stream=sys.stdout)


# ---------------------------------------------------------------------------------------- the run


def resolved_config(cfg: PretrainConfig, model_cfg: EATConfig) -> dict[str, Any]:
    """The run's config as saved with it: the model section fully resolved (preset, init, every field)."""
    resolved = to_dict(cfg)
    model = {"preset": cfg.model.get("preset", "base")}
    if init_path(cfg.model):
        model["init"] = init_path(cfg.model)
    resolved["model"] = {**model, **to_dict(model_cfg)}
    return resolved


def check_config(cfg: PretrainConfig, deep: bool = False) -> None:
    """Every value a run would refuse later, refused now (``--check`` runs this before torchrun starts ranks);
    ``deep`` (``--check``): also read the manifest (or the shard index) and whether ``model.init``'s tensors
    fit the model (:func:`check_init`, shapes only), which a run does on every rank anyway."""
    model_cfg = resolve_model(cfg.model)
    frontend_for(cfg.data, model_cfg)
    if model_cfg.mix and cfg.data.batch_size < 2:
        raise ConfigError(f"data.batch_size: mixture pretraining (model.mix=true) mixes each clip with its "
                          f"neighbour in the batch, so it needs at least 2 clips per rank, got {cfg.data.batch_size}")
    check_train_config(cfg.train)
    check_loader_config(cfg.data.batch_size, cfg.data.num_workers, cfg.data.prefetch_factor,
                        cfg.data.max_bad_fraction, max_bad_clips=cfg.data.max_bad_clips)
    if cfg.data.shard_window < 1:
        raise ConfigError(f"data.shard_window must be >= 1, got {cfg.data.shard_window}")
    if cfg.data.format == "shards":
        if not cfg.data.train_shards:
            raise ConfigError("data.train_shards is not set (pass data.train_shards=/path/to/shards with "
                              "data.format=shards)")
        if not Path(cfg.data.train_shards).exists():
            raise ManifestError(f"data.train_shards: {cfg.data.train_shards}: no such folder")
    elif not cfg.data.train_manifest:
        raise ConfigError("data.train_manifest is not set (pass data.train_manifest=/path/to/train.tsv)")
    elif not Path(cfg.data.train_manifest).is_file():
        what = "is a folder, not a manifest" if Path(cfg.data.train_manifest).is_dir() else "no such file"
        raise ManifestError(f"data.train_manifest: {cfg.data.train_manifest}: {what}")
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda, but CUDA is not available here (use train.device=cpu or auto)")
    if deep:
        source = cfg.data.train_shards if cfg.data.format == "shards" else cfg.data.train_manifest
        clips = len(ShardSet(source) if cfg.data.format == "shards" else read_manifest(source))
        if clips == 0:
            raise ManifestError(f"{source}: lists no clips")
        check_init(cfg)


def run(cfg: PretrainConfig) -> int:
    """Build everything from a resolved config and train; returns the process exit status (0, or
    :data:`~eat.train.trainer.PREEMPTED_EXIT` after a preemption signal)."""
    check_config(cfg)  # config errors before any process group or file is touched
    env = init_distributed(cfg.train.device)
    try:
        configure_logging(env)
        model, model_cfg = build_model(cfg)
        loader, frontend = build_loader(cfg, model_cfg, model, env)
        no_decay = model.no_weight_decay()
        groups = lambda m: param_groups(m, cfg.optim.weight_decay, cfg.optim.decay_all, no_decay)  # noqa: E731
        trainer = Trainer(model, loader, cfg.train, cfg.optim, env, groups, prepare=PretrainBatchPrep(frontend),
                          flops_per_clip=pretrain_flops_per_clip(model_cfg), config=resolved_config(cfg, model_cfg))
        n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("teacher."))
        init = init_path(cfg.model)
        start = f", from {init} (EMA {model_cfg.ema_decay} -> {model_cfg.ema_end_decay})" if init else ""
        mix = " (+ each clip's mixture with its neighbour, SSLAM stage 2)" if model_cfg.mix else ""
        trainer.logger.console(f"EAT {cfg.model.get('preset', 'base')}: {n_params / 1e6:.2f} M student+decoder "
                               f"params{start}, {len(loader)} batches/epoch/rank of {cfg.data.batch_size} clips "
                               f"x {model_cfg.clone_batch} clones{mix}, out_dir {trainer.run_dir}")
        result = trainer.fit()
        shutdown(synchronize=True)
    finally:
        shutdown()
    return PREEMPTED_EXIT if result.status == "preempted" else 0


# ---------------------------------------------------------------------------------------- own data

PREPARED_FILE = "prepared.json"


@dataclass
class OwnData:
    """What :func:`prepare_own_data` found and chose; ``overrides()`` are the config settings for a run."""

    audio_dir: str
    manifest: str
    clips: int
    skipped: int  # unreadable files left out of the manifest
    norm_mean: float
    norm_std: float
    target_length: int
    explanation: str  # how target_length was chosen, in one line

    def overrides(self) -> list[str]:
        return [f"data.train_manifest={self.manifest}", f"data.norm_mean={self.norm_mean!r}",
                f"data.norm_std={self.norm_std!r}", f"model.encoder.target_length={self.target_length}"]


def clip_frames(num_samples: int, frontend: FrontendConfig) -> int:
    """Fbank frames of a clip of ``num_samples`` (at ``frontend.sample_rate``)."""
    win = int(frontend.sample_rate * frontend.frame_length_ms / 1000)
    hop = int(frontend.sample_rate * frontend.frame_shift_ms / 1000)
    return 0 if num_samples < win else (num_samples - win) // hop + 1


def choose_target_length(frames: list[int], max_length: int, patch: int = 16, requested: int | None = None,
                         frame_shift_ms: float = 10.0) -> tuple[int, str]:
    """``target_length`` for clips of ``frames`` fbank frames, and a one-line explanation.

    Without ``requested``: the 90th percentile of the clip lengths rounded up to a whole patch
    (``patch`` frames), at least one patch and at most ``max_length`` (the config's length, e.g. EAT's
    1024 = 10.24 s): 90 % of the clips then fit whole, the short ones are padded, longer ones cropped.
    """
    if not frames:
        raise ConfigError("no clip lengths to choose data.target_length from")
    ordered = sorted(frames)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    if requested is not None:
        length, why = requested, "as requested (model.encoder.target_length)"
    else:
        length = min(max_length, max(patch, math.ceil(p90 / patch) * patch))
        why = (f"the 90th percentile clip length rounded up to a multiple of {patch} frames"
               + (f", capped at the config's {max_length}" if length == max_length and p90 > max_length else ""))
    longer = sum(f > length for f in ordered)
    shorter = sum(f < length for f in ordered)
    sec = lambda n: f"{n * frame_shift_ms / 1000:.2f} s"  # noqa: E731
    text = (f"target_length {length} frames ({sec(length)}): {why}; clips are {sec(ordered[0])} to "
            f"{sec(ordered[-1])} (median {sec(ordered[len(ordered) // 2])}), {shorter} of {len(ordered)} "
            f"are padded, {longer} cropped")
    return length, text


def prepare_own_data(audio_dir: str | Path, out_dir: str | Path, max_target_length: int = 1024,
                     target_length: int | None = None, exts: tuple[str, ...] = ("wav", "flac"),
                     stats_clips: int = 5000, workers: int = 4, seed: int = 0, num_mel_bins: int = 128,
                     progress: bool = True, reuse_only: bool = False) -> OwnData:
    """From a folder of audio to what a pretraining run needs, written under ``out_dir``:

    1. ``train.tsv``: a manifest of every readable ``exts`` file under ``audio_dir`` (unreadable ones are
       left out and counted; at least one must be readable);
    2. ``target_length``: :func:`choose_target_length` from the clip lengths (or ``target_length``);
    3. the normalisation statistics of that data at that length (:mod:`eat.data.norm_stats`, over up to
       ``stats_clips`` clips drawn with ``seed``), used instead of AudioSet's;
    4. ``prepared.json``: all of the above. A later call with the same folder and settings reuses it
       (a rerun or a resumed run does not recompute the statistics).

    ``reuse_only`` (the ranks of a multi-process launch): use an existing ``prepared.json`` or fail, so
    that several processes never write the same files.
    """
    src, out = Path(audio_dir).resolve(), Path(out_dir)
    if not src.is_dir():
        raise ConfigError(f"--data-dir {audio_dir}: {'a file, not a folder of audio' if Path(audio_dir).exists() else 'no such folder'}")
    settings = {"audio_dir": str(src), "max_target_length": max_target_length, "target_length": target_length,
                "exts": list(exts), "stats_clips": stats_clips, "seed": seed, "num_mel_bins": num_mel_bins}
    record = out / PREPARED_FILE
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
            if saved.get("settings") == settings and Path(saved["result"]["manifest"]).is_file():
                return OwnData(**saved["result"])
        except (ValueError, KeyError, TypeError):
            pass  # unreadable or from another version: prepare again
    if reuse_only:
        raise ConfigError(f"{out}: {audio_dir} is not prepared for these settings; with several processes run the "
                          "preparation once first (the same command with --prepare-only, in one process)")
    good, bad = scan_audio(src, list(exts), workers=max(1, workers), progress=progress)
    if not good:
        found = f"none of the {len(bad)} {'/'.join(exts)} files is readable" if bad else f"no {'/'.join(exts)} files"
        raise ConfigError(f"{audio_dir}: {found}")
    for rel, reason in bad[:5]:
        log.warning("left out %s: %s", src / rel, reason)
    if len(bad) > 5:
        log.warning("... and %d more unreadable files", len(bad) - 5)
    manifest = write_manifest(out / "train.tsv", src, good)

    frontend = FrontendConfig(num_mel_bins=num_mel_bins)
    picked = sorted(torch.randperm(len(good), generator=torch.Generator().manual_seed(seed))[:stats_clips].tolist())

    def seconds(i: int) -> float:
        return good[i][1] / soundfile.info(str(src / good[i][0])).samplerate

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        durations = list(pool.map(seconds, picked))
    frames = [clip_frames(round(d * frontend.sample_rate), frontend) for d in durations]
    length, explanation = choose_target_length(frames, max_target_length, requested=target_length,
                                               frame_shift_ms=frontend.frame_shift_ms)
    stats, skipped = compute_stats([src / good[i][0] for i in picked], frontend, length, workers=workers,
                                   workers_key="data.num_workers",
                                   seed=seed, progress=progress)
    if stats.count == 0:
        raise ConfigError(f"{audio_dir}: none of the clips could be decoded for the normalisation statistics "
                          f"({skipped[0] if skipped else 'no clips'})")
    result = OwnData(str(src), str(manifest.resolve()), len(good), len(bad), stats.mean, stats.std, length,
                     explanation)
    out.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "result": dataclasses.asdict(result)}, indent=1) + "\n")
    tmp.replace(record)
    return result


def own_data_overrides(config: str | Path | None, overrides: list[str], audio_dir: str | Path, world_size: int = 1,
                       progress: bool = True) -> tuple[list[str], OwnData]:
    """Prepare ``audio_dir`` (:func:`prepare_own_data`) for the run that ``config`` + ``overrides`` describe
    and return the overrides that point the run at it (the user's own overrides still win), plus the result.

    The files go to ``<train.out_dir>/data/``; the length is capped at the config's
    ``model.encoder.target_length``, or is exactly that when it is given as an override.
    """
    cfg = load_config(PretrainConfig, config, overrides)
    model_cfg = resolve_model(cfg.model)
    enc = model_cfg.encoder
    given = any(o.split("=", 1)[0].strip() == "model.encoder.target_length" for o in overrides)
    data = prepare_own_data(audio_dir, Path(cfg.train.out_dir) / "data", max_target_length=enc.target_length,
                            target_length=enc.target_length if given else None, seed=cfg.train.seed,
                            num_mel_bins=enc.num_mel_bins, workers=resolve_workers(cfg.data.num_workers),
                            progress=progress, reuse_only=world_size > 1)
    return data.overrides() + list(overrides), data
