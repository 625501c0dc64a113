"""FLOPs per clip (eat/train/flops.py): the anchors' EAT-base arithmetic and torch's own FLOP counter."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from eat.model.classifier import Classifier, PatchoutConfig, classifier_config, patchout_ids
from eat.model.eat import EATModel, eat_config
from eat.model.masking import inverse_block_mask, visible_count
from eat.train.flops import classifier_flops_per_clip, kept_patches, pretrain_flops, pretrain_flops_per_clip


def _counted(fn, *, no_grad: bool = False) -> tuple[float, dict[str, float]]:
    """FLOPs torch's counter sees in ``fn()`` (math SDPA: its backward counts as 2x forward), per module."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        if no_grad:
            with torch.no_grad():
                fn()
        else:
            fn()
    per_module = {name: float(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return float(counter.get_total_flops()), per_module


def test_eat_base_matches_the_anchor_arithmetic():
    f = pretrain_flops(eat_config("base"))
    # anchors.md A2: teacher 96.8 + patch conv 0.2; student 858.6 + 2 x 0.2; decoder 126.8 with the final
    # Linear on all 512 positions, ours runs it on the 410 masked ones: 48 x 2 x 102 x 768^2 less.
    assert f["teacher"] / 1e9 == pytest.approx(96.8 + 0.2, abs=0.1)
    assert f["student"] / 1e9 == pytest.approx(858.6 + 0.4, abs=0.3)
    assert f["decoder"] / 1e9 == pytest.approx(126.8 - 48 * 2 * 102 * 768**2 / 1e9, abs=0.1)
    assert pretrain_flops_per_clip(eat_config("base")) / 1e12 == pytest.approx(1.083, rel=0.01)
    assert f["total"] == f["teacher"] + f["student"] + f["decoder"]
    assert f["student"] / f["total"] == pytest.approx(0.80, abs=0.01)  # the anchors' 79 % with our decoder


def test_fine_tuning_forward_matches_eat_reference():
    # eat.md section 9: about 97 GFLOP per 10 s clip forward (513 tokens through ViT-B)
    assert classifier_flops_per_clip(classifier_config("eat_base", 527)) / 1e9 == pytest.approx(97.0, abs=0.3)


@pytest.mark.parametrize("preset", ["tiny", "base", "large"])
def test_visible_count_is_what_the_masks_keep(preset):
    model_cfg = eat_config(preset)
    enc = model_cfg.encoder
    t, f = (enc.target_length - 16) // 16 + 1, enc.num_mel_bins // 16
    mask = inverse_block_mask(8, (t, f), model_cfg.mask_ratio, model_cfg.mask_block, model_cfg.mask_adjust,
                              generator=torch.Generator().manual_seed(0))
    assert ((~mask).sum(1) == visible_count(t * f, model_cfg.mask_ratio)).all()
    assert visible_count(512, 0.8) == 102


def test_pretraining_step_agrees_with_torch_flop_counter():
    torch.manual_seed(0)
    # one decoder group: torch's counter ignores groups in the conv weight gradient (it counts C_in x C_out
    # instead of C_in x C_out / groups), so the grouped decoder is checked on its forward below
    cfg = dataclasses.replace(eat_config("tiny"), decoder_groups=1)
    model = EATModel(cfg)
    source = torch.randn(2, 256, 128)
    mask = model.make_masks(2, 256, generator=torch.Generator().manual_seed(0))
    total, per_module = _counted(lambda: model(source, mask)["loss"].backward())
    want = pretrain_flops(cfg)
    assert total / 2 == pytest.approx(want["total"], rel=1e-6)
    for part in ("teacher", "student", "decoder"):
        assert per_module[f"EATModel.{part}"] / 2 == pytest.approx(want[part], rel=1e-6), part


def test_grouped_decoder_forward_agrees_with_torch_flop_counter():
    torch.manual_seed(0)
    cfg = eat_config("tiny")
    assert cfg.decoder_groups == 16
    model = EATModel(cfg)
    source = torch.randn(2, 256, 128)
    mask = model.make_masks(2, 256, generator=torch.Generator().manual_seed(0))
    _, per_module = _counted(lambda: model(source, mask), no_grad=True)
    assert per_module["EATModel.decoder"] / 2 == pytest.approx(pretrain_flops(cfg)["decoder"] / 3, rel=1e-6)


@pytest.mark.parametrize("patchout", [PatchoutConfig(), PatchoutConfig(s_t=5, s_f=2), PatchoutConfig(s_t=3, u=7)])
def test_classifier_agrees_with_torch_flop_counter(patchout):
    torch.manual_seed(0)
    cfg = classifier_config("tiny", 10, patchout=patchout)
    model = Classifier(cfg)
    x = torch.randn(3, 256, 128)
    model.train()
    trained, _ = _counted(lambda: model(x).sum().backward())
    assert trained / 3 == pytest.approx(classifier_flops_per_clip(cfg, training=True), rel=1e-6)
    model.eval()
    inferred, _ = _counted(lambda: model(x), no_grad=True)
    assert inferred / 3 == pytest.approx(classifier_flops_per_clip(cfg), rel=1e-6)


def test_kept_patches_matches_patchout_ids():
    for cfg in (PatchoutConfig(s_t=40, s_f=4), PatchoutConfig(s_t=200, s_f=50, u=3), PatchoutConfig(u=10**6)):
        ids = patchout_ids((99, 12), cfg, batch=2)
        assert ids.shape[1] == kept_patches((99, 12), cfg)
    assert kept_patches((99, 12), None) == 1188
    # patchout makes the training step cheaper, inference is unchanged
    passt = classifier_config("passt_s", 527, patchout=PatchoutConfig(s_t=40, s_f=4))
    full = classifier_config("passt_s", 527)
    assert classifier_flops_per_clip(passt, training=True) < 0.5 * classifier_flops_per_clip(full, training=True)
    assert classifier_flops_per_clip(passt) == classifier_flops_per_clip(full)
