"""AdamW with parameter groups, and the linear-warmup + cosine learning-rate schedule.

The schedule is a pure function of the update index, so resuming needs only the step count; its settings
are still saved with every checkpoint for the record.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from eat.config import ConfigError


@dataclass
class OptimConfig:
    """AdamW and schedule settings (defaults: the official EAT-base pretraining recipe)."""

    lr: float = 5e-4
    min_lr: float = 0.0
    # how a group with lr_scale s (layer decay) treats min_lr: "scaled" = s x the whole schedule, floor
    # included; "absolute" = fairseq's per-group cosine (official EAT fine-tuning): peak s x lr, warm-up
    # from and decay to the unscaled min_lr, and a constant s x lr for groups whose peak is below min_lr
    min_lr_mode: Literal["scaled", "absolute"] = "scaled"
    warmup_steps: int = 53333
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05
    # true: decay every parameter, as the official EAT/fairseq run does (its no-decay override is dead
    # code); false: no decay for 1-D parameters, biases and the model's no_weight_decay() names.
    decay_all: bool = True
    clip_grad: float = 4.0  # global L2 norm; 0 disables clipping
    # AdamW kernel: auto = fused on CUDA, foreach on CPU; fused/foreach force one; forloop = one parameter
    # at a time (least memory, slowest; what the official fairseq code runs)
    implementation: Literal["auto", "fused", "foreach", "forloop"] = "auto"

    def __post_init__(self) -> None:
        """Refuse values that would train silently wrong (e.g. a negative lr ascends the loss)."""
        def bad(key: str, want: str) -> ConfigError:
            return ConfigError(f"optim.{key}: must be {want}, got {getattr(self, key)!r}")

        if not (math.isfinite(self.lr) and self.lr >= 0):  # 0 is allowed: a run that must not move (tests, probes)
            raise bad("lr", "a number >= 0")
        if not (math.isfinite(self.min_lr) and self.min_lr >= 0):
            raise bad("min_lr", ">= 0")
        if self.warmup_steps < 0:
            raise bad("warmup_steps", ">= 0")
        if len(self.betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in self.betas):
            raise bad("betas", "two numbers in [0, 1)")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise bad("eps", "a positive number")
        for key in ("weight_decay", "clip_grad"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                raise bad(key, "a number >= 0")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    decay_all: bool = False,
    no_decay: Iterable[str] = (),
    lr_scale: Callable[[str], float] | None = None,
) -> list[dict]:
    """Split the trainable parameters of ``model`` into AdamW groups.

    A parameter gets no weight decay (unless ``decay_all``) when it is 1-D (biases, norm gains), its name
    ends in ``.bias``, or it matches an entry of ``no_decay`` (a full name, or a name ending in
    ``.<entry>``; e.g. ``cls_token``). ``lr_scale(name)`` gives a per-parameter LR factor (layer decay);
    parameters with equal (decay, scale) share a group. Each group carries ``lr_scale`` and ``weight_decay``.
    """
    skip = set(no_decay)

    def decayed(name: str, p: nn.Parameter) -> bool:
        if decay_all:
            return True
        if p.ndim <= 1 or name.endswith(".bias"):
            return False
        return not any(name == s or name.endswith("." + s) for s in skip)

    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = weight_decay if decayed(name, p) else 0.0
        scale = float(lr_scale(name)) if lr_scale is not None else 1.0
        group = groups.setdefault((wd, scale), {"params": [], "names": [], "weight_decay": wd, "lr_scale": scale})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(groups: list[dict], cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``groups`` (``names`` entries are dropped; ``lr_scale`` stays for :func:`set_lr`)."""
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    fused = cfg.implementation == "fused" or (cfg.implementation == "auto" and device.type == "cuda")
    return torch.optim.AdamW(
        clean, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
        fused=fused or None, foreach=None if fused else cfg.implementation != "forloop",
    )


def lr_at(step: int, peak: float, warmup: int, total: int, floor: float = 0.0) -> float:
    """LR for update number ``step`` (1-based: the first update is step 1).

    Linear warmup from 0 reaching ``peak`` at ``step == warmup``, then a half cosine from ``peak`` down to
    ``floor`` at ``step == total``; constant ``floor`` afterwards.
    """
    if warmup > 0 and step <= warmup:
        return peak * step / warmup
    if step >= total:
        return floor
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR to ``lr`` times its ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def group_lr_at(step: int, scale: float, cfg: OptimConfig, total: int) -> float:
    """LR at update ``step`` of a group with ``lr_scale`` ``scale``, following ``cfg.min_lr_mode``."""
    if cfg.min_lr_mode == "scaled":
        return scale * lr_at(step, cfg.lr, cfg.warmup_steps, total, cfg.min_lr)
    if cfg.min_lr_mode != "absolute":
        raise ValueError(f"optim.min_lr_mode: {cfg.min_lr_mode!r} is not 'scaled' or 'absolute'")
    peak = scale * cfg.lr
    floor = min(cfg.min_lr, peak)  # fairseq lowers min_lr to a group's peak when the peak is below it
    return floor + lr_at(step, peak - floor, cfg.warmup_steps, total)


def set_lr_at(optimizer: torch.optim.Optimizer, step: int, cfg: OptimConfig, total: int) -> None:
    """Set every group's LR for update ``step`` of a ``total``-update schedule (see :func:`group_lr_at`)."""
    if cfg.min_lr_mode == "scaled":
        set_lr(optimizer, lr_at(step, cfg.lr, cfg.warmup_steps, total, cfg.min_lr))
        return
    for group in optimizer.param_groups:
        group["lr"] = group_lr_at(step, group.get("lr_scale", 1.0), cfg, total)
