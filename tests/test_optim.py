"""AdamW parameter groups, the warmup + cosine schedule and the optimiser's update rule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from eat.train.optim import OptimConfig, build_optimizer, group_lr_at, lr_at, param_groups, set_lr, set_lr_at


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.frozen = nn.Linear(4, 4).requires_grad_(False)


def names_by_decay(groups):
    return {g["weight_decay"]: sorted(g["names"]) for g in groups}


def test_no_decay_for_1d_bias_and_named_tokens():
    groups = param_groups(Net(), 0.05, no_decay=["cls_token"])
    assert names_by_decay(groups) == {
        0.05: ["blocks.0.weight", "blocks.1.weight", "proj.weight"],
        0.0: ["blocks.0.bias", "blocks.1.bias", "cls_token", "norm.bias", "norm.weight", "proj.bias"],
    }


def test_decay_all_is_the_official_behaviour_and_frozen_params_are_left_out():
    groups = param_groups(Net(), 0.05, decay_all=True, no_decay=["cls_token"])
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.05
    assert len(groups[0]["names"]) == 9 and not any(n.startswith("frozen") for n in groups[0]["names"])


def test_lr_scales_group_parameters_and_set_lr_applies_them():
    scale = lambda name: 0.5 ** (2 - int(name.split(".")[1])) if name.startswith("blocks") else 1.0  # noqa: E731
    groups = param_groups(Net(), 0.05, lr_scale=scale)
    got = {(g["weight_decay"], g["lr_scale"]): sorted(g["names"]) for g in groups}
    assert got[(0.05, 0.25)] == ["blocks.0.weight"] and got[(0.0, 0.5)] == ["blocks.1.bias"]
    opt = build_optimizer(groups, OptimConfig(), torch.device("cpu"))
    set_lr(opt, 1e-3)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])


def test_schedule_warmup_cosine_and_floor():
    peak, warm, total, floor = 5e-4, 10, 110, 1e-6
    assert [lr_at(s, peak, warm, total, floor) for s in (1, 5, 10)] == pytest.approx([5e-5, 2.5e-4, 5e-4])
    assert lr_at(60, peak, warm, total, floor) == pytest.approx((peak + floor) / 2)  # half-way down the cosine
    assert lr_at(35, peak, warm, total, floor) == pytest.approx(floor + (peak - floor) * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(total, peak, warm, total, floor) == floor
    assert lr_at(total + 50, peak, warm, total, floor) == floor
    after = [lr_at(s, peak, warm, total, floor) for s in range(warm, total + 1)]
    assert all(a > b for a, b in zip(after, after[1:], strict=False))
    assert lr_at(1, peak, 0, total) == pytest.approx(peak * (1 + math.cos(math.pi / total)) / 2)


def test_official_eat_schedule_numbers():
    cfg = OptimConfig()  # defaults are the EAT-base recipe
    assert (cfg.lr, cfg.warmup_steps, cfg.betas, cfg.weight_decay, cfg.clip_grad) == (5e-4, 53333, (0.9, 0.95), 0.05, 4.0)
    assert lr_at(53333, cfg.lr, cfg.warmup_steps, 400000) == pytest.approx(5e-4)
    assert lr_at(400000, cfg.lr, cfg.warmup_steps, 400000) == 0.0


@pytest.mark.parametrize("fused", ["foreach", "fused", "forloop"])
def test_update_rule_is_decoupled_adamw(fused):
    """Two steps against a plain re-statement of AdamW (p -= lr*wd*p, bias-corrected moments)."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, 2))
    b = nn.Parameter(torch.randn(2))
    cfg = OptimConfig(lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, implementation=fused)
    model = nn.Module()
    model.w, model.b = w, b
    opt = build_optimizer(param_groups(model, cfg.weight_decay), cfg, torch.device("cpu"))
    assert bool(opt.defaults.get("fused")) == (fused == "fused")
    assert opt.defaults.get("foreach") == {"fused": None, "foreach": True, "forloop": False}[fused]
    ref = {"w": w.detach().clone(), "b": b.detach().clone()}
    m = {k: torch.zeros_like(v) for k, v in ref.items()}
    v = {k: torch.zeros_like(x) for k, x in ref.items()}
    wd = {"w": 0.05, "b": 0.0}
    for t in (1, 2):
        grads = {"w": torch.randn(3, 2), "b": torch.randn(2)}
        w.grad, b.grad = grads["w"].clone(), grads["b"].clone()
        opt.step()
        for k in ref:
            ref[k] = ref[k] * (1 - 0.1 * wd[k])
            m[k] = 0.9 * m[k] + 0.1 * grads[k]
            v[k] = 0.95 * v[k] + 0.05 * grads[k] ** 2
            mhat, vhat = m[k] / (1 - 0.9**t), v[k] / (1 - 0.95**t)
            ref[k] = ref[k] - 0.1 * mhat / (vhat.sqrt() + 1e-8)
    torch.testing.assert_close(w.detach(), ref["w"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.detach(), ref["b"], rtol=1e-5, atol=1e-6)


def fairseq_group_lr(step: int, peak: float, min_lr: float, warmup: int, total: int) -> float:
    """One group's LR in fairseq's cosine scheduler, written out: min_lr is lowered to the group's peak when
    the peak is below it, warm-up is linear from min_lr, then a half cosine from the peak to min_lr."""
    if peak < min_lr:
        min_lr = peak
    if step <= warmup:
        return min_lr + (peak - min_lr) * step / warmup
    t = min(step, total) - warmup
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * t / (total - warmup)))


@pytest.mark.parametrize("mode", ["scaled", "absolute"])
def test_per_group_floor_modes_against_plain_formulas(mode):
    """EAT AS-20K: peak 5e-5, min_lr 1e-6, layer decay 0.65 over 12 blocks (blocks 0-2 peak below 1e-6)."""
    cfg = OptimConfig(lr=5e-5, min_lr=1e-6, warmup_steps=40, min_lr_mode=mode)
    total = 400
    scales = [0.65 ** (12 - i) for i in range(12)] + [1.0]
    assert [s * cfg.lr < cfg.min_lr for s in scales[:4]] == [True, True, True, False]
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr_scale": s} for s in scales]
    opt = build_optimizer(groups, cfg, torch.device("cpu"))
    for step in (1, 20, 40, 41, 150, 399, 400, 450):
        set_lr_at(opt, step, cfg, total)
        for s, group in zip(scales, opt.param_groups, strict=True):
            if mode == "scaled":
                base = (5e-5 * step / 40 if step <= 40 else
                        1e-6 + 0.5 * (5e-5 - 1e-6) * (1 + math.cos(math.pi * (min(step, total) - 40) / 360)))
                expect = s * base
            else:
                expect = fairseq_group_lr(step, s * 5e-5, 1e-6, 40, total)
            assert group["lr"] == pytest.approx(expect, rel=1e-9, abs=1e-18), (step, s)
            assert group_lr_at(step, s, cfg, total) == group["lr"]
    if mode == "absolute":  # a group whose peak is below min_lr runs at its peak throughout
        set_lr_at(opt, 1, cfg, total)
        assert opt.param_groups[0]["lr"] == pytest.approx(scales[0] * 5e-5)
        set_lr_at(opt, total, cfg, total)
        assert opt.param_groups[0]["lr"] == pytest.approx(scales[0] * 5e-5)
        assert opt.param_groups[-1]["lr"] == pytest.approx(1e-6)  # unscaled floor for the others
    else:  # the floor shrinks with the scale
        set_lr_at(opt, total, cfg, total)
        assert opt.param_groups[0]["lr"] == pytest.approx(scales[0] * 1e-6)


def test_fine_tuning_configs_use_the_official_floor():
    from pathlib import Path

    from eat.config import load_config
    from eat.train.finetune import FinetuneConfig

    folder = Path(__file__).resolve().parents[1] / "recipes" / "configs"
    # the five recipes that follow an official one (finetune_small.yaml, our small-data preset, and the sound
    # event detection recipes finetune_sed*.yaml have no official counterpart)
    names = ("as20k", "as2m", "esc50", "generic", "spc2")
    official = [folder / f"finetune_{n}.yaml" for n in names]
    assert all(p.is_file() for p in official)
    for path in official:
        cfg = load_config(FinetuneConfig, path)
        assert (cfg.optim.min_lr, cfg.optim.min_lr_mode) == (1e-6, "absolute"), path.name
