"""EAT self-supervised pretraining (AudioSet-2M recipe), single process or under torchrun.

    python recipes/pretrain_as2m.py --config recipes/configs/tiny.yaml data.train_manifest=train.tsv
    torchrun --nproc_per_node=4 recipes/pretrain_as2m.py --config recipes/configs/pretrain_as2m.yaml \\
        data.train_manifest=/data/as2m/train.tsv train.out_dir=runs/eat_base

Settings are ``section.key=value`` overrides on top of the YAML file (sections below). ``train.resume=auto``
(the default) continues from the newest good checkpoint in ``train.out_dir``. A run stopped by SIGTERM or
SIGUSR1 saves a checkpoint and exits with status 75; run the same command again to continue.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from eat.audio.fbank import FrontendConfig, waveform_to_input
from eat.cli import cli_main
from eat.config import ConfigError, from_dict, load_config, to_dict
from eat.data import ManifestError, MaskConfig, PretrainDataset, ResumableDistributedSampler
from eat.data import build_loader as build_data_loader
from eat.data.loaders import check_loader_config
from eat.model.eat import EATConfig, EATModel, eat_config
from eat.train.dist import DistEnv, init_distributed, install_preemption_handler, shutdown
from eat.train.flops import pretrain_flops_per_clip
from eat.train.optim import OptimConfig, param_groups
from eat.train.trainer import PREEMPTED_EXIT, TrainConfig, Trainer, check_train_config


@dataclass
class DataConfig:
    """Unlabelled clips and the front-end; the clip length is the model's ``encoder.target_length``."""

    train_manifest: str = ""  # fairseq-style tsv (root line, then "relpath<TAB>num_samples")
    batch_size: int = 12  # clips per device per micro-batch
    num_workers: int = 8  # loader worker processes per device; they decode audio and make the masks
    prefetch_factor: int = 4
    fbank_on_device: bool = False  # workers return waveforms; the fbank runs batched on the device
    norm: Literal["audioset", "esc50", "spc2"] = "audioset"  # normalisation statistics
    crop: Literal["head", "random"] = "head"
    max_bad_fraction: float = 0.01  # stop when more of an epoch's clips (per rank) are unreadable


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs; saved resolved as ``config.yaml`` with the run."""

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "base"})  # preset + EATConfig fields
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------- config


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_model(section: dict[str, Any]) -> EATConfig:
    """``model.preset`` (base/large/tiny) with any ``EATConfig`` field of the section on top, checked strictly."""
    section = dict(section)
    preset = section.pop("preset", "base")
    if not isinstance(preset, str):
        raise ConfigError(f"model.preset: expected a string, got {preset!r}")
    return from_dict(EATConfig, _merge(to_dict(eat_config(preset)), section), "model")


def accumulation_aware(cfg: EATConfig, grad_accum: int) -> EATConfig:
    """The official utterance loss is a *sum* over a device's clones. The trainer averages the losses of
    ``grad_accum`` micro-batches, which would shrink that sum by ``grad_accum``; scaling the CLS weight by
    ``grad_accum`` keeps the update equal to one micro-batch of ``grad_accum x`` the clips (as fairseq's
    update_freq does)."""
    if grad_accum > 1 and cfg.utterance_reduction == "official":
        return dataclasses.replace(cfg, cls_loss_weight=cfg.cls_loss_weight * grad_accum)
    return cfg


def frontend_for(data: DataConfig, model: EATConfig) -> FrontendConfig:
    enc = model.encoder
    return FrontendConfig.from_preset(data.norm, target_length=enc.target_length, num_mel_bins=enc.num_mel_bins,
                                      crop=data.crop)


# ---------------------------------------------------------------------------------------- pieces


def build_loader(cfg: PretrainConfig, model_cfg: EATConfig, model: EATModel, env: DistEnv):
    data = cfg.data
    frontend = frontend_for(data, model_cfg)
    mask_cfg = MaskConfig(clones=model_cfg.clone_batch, mask_ratio=model_cfg.mask_ratio, block=model_cfg.mask_block,
                          adjust=model_cfg.mask_adjust, grid=model.student.grid(frontend.target_length))
    dataset = PretrainDataset(data.train_manifest, frontend, mask_cfg, return_waveform=data.fbank_on_device,
                              seed=cfg.train.seed, max_bad_fraction=data.max_bad_fraction)
    if len(dataset) < data.batch_size * env.world_size:
        raise ConfigError(f"{data.train_manifest}: {len(dataset)} clips, fewer than one batch "
                          f"(data.batch_size={data.batch_size} x {env.world_size} ranks)")
    sampler = ResumableDistributedSampler(len(dataset), env.world_size, env.rank, shuffle=True, seed=cfg.train.seed)
    loader = build_data_loader(dataset, sampler, data.batch_size, num_workers=data.num_workers,
                               pin_memory=env.device.type == "cuda",
                               prefetch_factor=data.prefetch_factor if data.num_workers > 0 else None)
    return loader, frontend


def make_prepare(frontend: FrontendConfig):
    """Batch -> (model kwargs, counts). The mask stays on the CPU: the model reads its visible count there."""

    def prepare(batch: dict[str, Any], device: torch.device) -> tuple[dict[str, Any], dict[str, float]]:
        if "wave" in batch:
            waves = batch["wave"].to(device, non_blocking=True)
            source = waveform_to_input(waves, frontend, lengths=batch["length"].to(device, non_blocking=True))
        else:
            source = batch["source"].to(device, non_blocking=True)
        return {"source": source, "mask": batch["mask"]}, {"clips": source.shape[0],
                                                           "bad_clips": batch["num_skipped"]}

    return prepare


def configure_logging(env: DistEnv) -> None:
    """Rank 0 prints progress; other ranks print only warnings (e.g. the bad files they met), tagged."""
    if env.is_main:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                            stream=sys.stdout)
    else:
        logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {env.rank}] %(message)s",
                            datefmt="%H:%M:%S", stream=sys.stdout)


def run(cfg: PretrainConfig) -> int:
    """Build everything from a resolved config and train; returns the process exit status."""
    model_cfg = resolve_model(cfg.model)
    if not cfg.data.train_manifest:
        raise ConfigError("data.train_manifest is not set (pass data.train_manifest=/path/to/train.tsv)")
    if not Path(cfg.data.train_manifest).is_file():
        raise ManifestError(f"training manifest not found: {cfg.data.train_manifest}")
    env = init_distributed(cfg.train.device)
    try:
        configure_logging(env)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank (FSDP2 needs it)
        model = EATModel(accumulation_aware(model_cfg, cfg.train.grad_accum))
        loader, frontend = build_loader(cfg, model_cfg, model, env)
        resolved = to_dict(cfg)
        resolved["model"] = {"preset": cfg.model.get("preset", "base"), **to_dict(model_cfg)}
        no_decay = model.no_weight_decay()
        groups = lambda m: param_groups(m, cfg.optim.weight_decay, cfg.optim.decay_all, no_decay)  # noqa: E731
        trainer = Trainer(model, loader, cfg.train, cfg.optim, env, groups, prepare=make_prepare(frontend),
                          flops_per_clip=pretrain_flops_per_clip(model_cfg), config=resolved)
        n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("teacher."))
        trainer.logger.console(f"EAT {cfg.model.get('preset', 'base')}: {n_params / 1e6:.2f} M student+decoder "
                               f"params, {len(loader)} batches/epoch/rank of {cfg.data.batch_size} clips "
                               f"x {model_cfg.clone_batch} clones, out_dir {trainer.run_dir}")
        result = trainer.fit()
    finally:
        shutdown()
    return PREEMPTED_EXIT if result.status == "preempted" else 0


# ---------------------------------------------------------------------------------------- CLI


def _sections_help() -> str:
    lines = ["config sections (override any key as section.key=value):"]
    for f in dataclasses.fields(PretrainConfig):
        if f.name == "model":
            lines.append("  model: preset (base|large|tiny) plus any EATConfig field, e.g. model.clone_batch=8, "
                         "model.encoder.target_length=512")
            continue
        section = f.default_factory()
        keys = ", ".join(f"{k.name}={getattr(section, k.name)!r}" for k in dataclasses.fields(section))
        lines.append(f"  {f.name}: {keys}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=_sections_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", type=Path, help="YAML file (e.g. recipes/configs/pretrain_as2m.yaml)")
    ap.add_argument("--resume", metavar="PATH", help="continue from this run or step_* directory "
                    "(same as train.resume=PATH; default: train.resume=auto)")
    ap.add_argument("--check", action="store_true", help="only validate the config and the manifest path, then "
                    "exit (make pretrain runs this before torchrun)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return ap.parse_intermixed_args(argv)


@cli_main
def main(argv: list[str] | None = None) -> None:
    preempt = install_preemption_handler()  # a SIGTERM from here on is remembered, not fatal
    try:
        args = parse_args(argv)
        overrides = list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume else [])
        cfg = load_config(PretrainConfig, args.config, overrides)
        check_pretrain_config(cfg)
        if args.check:
            print(f"config ok: {args.config or '(defaults)'} with {len(overrides)} override(s)")
            return
        status = run(cfg)
    finally:
        preempt.uninstall()
    sys.exit(status)


def check_pretrain_config(cfg: PretrainConfig) -> None:
    """Every value a run would refuse later, refused now (before torchrun starts ranks)."""
    resolve_model(cfg.model)
    check_train_config(cfg.train)
    check_loader_config(cfg.data.batch_size, cfg.data.num_workers, cfg.data.prefetch_factor,
                        cfg.data.max_bad_fraction)
    if not cfg.data.train_manifest:
        raise ConfigError("data.train_manifest is not set (pass data.train_manifest=/path/to/train.tsv)")
    if not Path(cfg.data.train_manifest).is_file():
        raise ManifestError(f"training manifest not found: {cfg.data.train_manifest}")
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda, but CUDA is not available here (use train.device=cpu or auto)")


if __name__ == "__main__":
    main()
