"""Layer-wise LR decay: the scale of every parameter of a tiny classifier in both conventions."""

import pytest
import torch

from eat.model.classifier import Classifier, ClassifierConfig
from eat.model.vit import EncoderConfig
from eat.train.layer_decay import finetune_param_groups, layer_decay_scale
from eat.train.optim import set_lr


def tiny_classifier(**enc) -> Classifier:
    cfg = EncoderConfig(embed_dim=16, depth=3, num_heads=2, target_length=32, num_mel_bins=32, max_time_patches=2,
                        **enc)
    return Classifier(ClassifierConfig(encoder=cfg, num_classes=4))


def expected_scale(name: str, form: str, d: float, depth: int = 3) -> float:
    """Written out per parameter family, independently of the regexes in the module."""
    parts = name.split(".")
    if parts[1] == "blocks":
        return d ** (depth - int(parts[2]))
    before_blocks = {"patch_embed", "pos_embed", "time_pos", "freq_pos", "token_pos", "extra_tokens", "pre_norm"}
    if form == "beit" and parts[0] == "encoder" and parts[1] in before_blocks:
        return d ** (depth + 1)
    return 1.0


@pytest.mark.parametrize("form", ["eat", "beit"])
@pytest.mark.parametrize("enc", [{}, {"pos_embed": "learned_separate", "extra_token_pos": True,
                                      "layer_norm_first": True, "pre_norm": False, "final_norm": True}])
def test_scale_of_every_parameter(form, enc):
    model = tiny_classifier(**enc)
    scale = layer_decay_scale(0.65, 3, form)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name in names:
        assert scale(name) == pytest.approx(expected_scale(name, form, 0.65)), name
    # spot checks with the numbers spelled out
    assert scale("encoder.blocks.0.attn.qkv.weight") == pytest.approx(0.65**3)
    assert scale("encoder.blocks.2.mlp.fc2.bias") == pytest.approx(0.65)
    assert scale("head.weight") == 1.0 and scale("fc_norm.bias") == 1.0
    assert scale("encoder.patch_embed.weight") == pytest.approx(1.0 if form == "eat" else 0.65**4)


def test_groups_carry_scales_and_weight_decay():
    model = tiny_classifier()
    groups = finetune_param_groups(model, 0.05, 0.5, depth=3, form="eat", decay_all=False)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["encoder.blocks.1.attn.proj.weight"]["lr_scale"] == pytest.approx(0.25)
    assert by_name["encoder.blocks.1.attn.proj.weight"]["weight_decay"] == 0.05
    assert by_name["encoder.blocks.1.attn.proj.bias"]["weight_decay"] == 0.0
    assert by_name["encoder.extra_tokens"]["weight_decay"] == 0.0
    assert "encoder.pos_embed" not in by_name  # fixed sin-cos table is not trained
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == sum(1 for p in model.parameters() if p.requires_grad)
    all_decay = finetune_param_groups(model, 0.05, 1.0, depth=3, decay_all=True)
    assert {(g["weight_decay"], g["lr_scale"]) for g in all_decay} == {(0.05, 1.0)}
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=1.0)
    set_lr(opt, 2e-4)
    assert sorted({round(g["lr"], 12) for g in opt.param_groups}) == sorted(
        {round(2e-4 * s, 12) for s in (0.125, 0.25, 0.5, 1.0)})


def test_head_scale_sets_only_the_heads_lr():
    model = tiny_classifier()
    for decay in (0.5, 1.0):
        groups = finetune_param_groups(model, 0.05, decay, depth=3, form="eat", head_scale=10.0)
        by_name = {n: g["lr_scale"] for g in groups for n in g["names"]}
        for name in by_name:
            want = 10.0 if name.startswith(("head.", "fc_norm.")) else expected_scale(name, "eat", decay)
            assert by_name[name] == pytest.approx(want), name
        assert by_name["head.weight"] == 10.0 and by_name["fc_norm.weight"] == 10.0
