"""ImageNet (timm/DeiT) -> AST / PaSST encoder adaptation: strict loading, kernel sum, position resizing."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from eat.config import ConfigError
from eat.model.classifier import Classifier, ast_encoder, classifier_config, passt_encoder
from eat.model.imagenet_init import from_imagenet_vit
from eat.model.vit import Encoder


def deit_state_dict(dim: int = 768, depth: int = 12, side: int = 24, random_blocks: bool = False) -> dict:
    """A DeiT-B/16-384-shaped (distilled) state dict. Position channel 0 holds the grid row (image
    height = frequency for AST/PaSST), channel 1 the column (time); the rest is noise."""
    g = torch.Generator().manual_seed(0)
    make = (lambda *s: torch.randn(*s, generator=g)) if random_blocks else torch.zeros
    pos = torch.randn(1, 2 + side * side, dim, generator=g)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pos[0, 2:, 0], pos[0, 2:, 1] = rows.flatten().float(), cols.flatten().float()
    sd = {
        "cls_token": torch.randn(1, 1, dim, generator=g),
        "dist_token": torch.randn(1, 1, dim, generator=g),
        "pos_embed": pos,
        "patch_embed.proj.weight": torch.randn(dim, 3, 16, 16, generator=g),
        "patch_embed.proj.bias": torch.randn(dim, generator=g),
        "norm.weight": torch.ones(dim), "norm.bias": torch.zeros(dim),
        "head.weight": torch.zeros(1000, dim), "head.bias": torch.zeros(1000),
        "head_dist.weight": torch.zeros(1000, dim), "head_dist.bias": torch.zeros(1000),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        for name, shape in [("norm1", (dim,)), ("norm2", (dim,))]:
            sd[p + name + ".weight"], sd[p + name + ".bias"] = torch.ones(shape), torch.zeros(shape)
        for name, (o, n) in [("attn.qkv", (3 * dim, dim)), ("attn.proj", (dim, dim)),
                             ("mlp.fc1", (4 * dim, dim)), ("mlp.fc2", (dim, 4 * dim))]:
            sd[p + name + ".weight"], sd[p + name + ".bias"] = make(o, n), make(o)
    return sd


@pytest.mark.parametrize("preset", ["ast_base", "passt_s"])
def test_deit_loads_strictly_into_presets(preset):
    sd = deit_state_dict()
    cfg = classifier_config(preset, 527)
    model = Classifier(cfg)
    model.encoder.load_state_dict(from_imagenet_vit(sd, cfg.encoder), strict=True)
    assert torch.equal(model.encoder.extra_tokens, torch.cat([sd["cls_token"], sd["dist_token"]], 1))
    assert torch.equal(model.encoder.token_pos, sd["pos_embed"][:, :2])


def test_summed_kernel_on_mono_equals_rgb_kernel_on_replicated_input():
    sd = {k: v.double() for k, v in deit_state_dict(dim=16, depth=1).items()}
    cfg = dataclasses.replace(ast_encoder(target_length=96), embed_dim=16, depth=1, num_heads=2)
    enc = Encoder(cfg).double()
    enc.load_state_dict(from_imagenet_vit(sd, cfg), strict=True)
    x = torch.randn(2, 96, 128, dtype=torch.float64)  # ours: (B, time, freq)
    image = x.transpose(1, 2).unsqueeze(1).repeat(1, 3, 1, 1)  # AST/PaSST image: (B, 3, freq, time)
    ref = F.conv2d(image, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=10)
    ours = enc.patch_embed(x.unsqueeze(1))  # (B, D, time', freq')
    torch.testing.assert_close(ours, ref.transpose(-1, -2))


def test_ast_positions_interpolate_time_and_crop_frequency():
    cfg = dataclasses.replace(ast_encoder(1024), embed_dim=16, depth=1, num_heads=2)
    out = from_imagenet_vit(deit_state_dict(dim=16, depth=1), cfg)
    pos = out["pos_embed"][0]  # rows t * 12 + f
    t, f = torch.arange(101).repeat_interleave(12), torch.arange(12).repeat(101)
    torch.testing.assert_close(pos[:, 0], (6 + f).float())  # rows 6..17 of 24 (centre crop)
    src = ((t + 0.5) * 24 / 101 - 0.5).clamp(0, 23)  # bilinear, align_corners=False
    torch.testing.assert_close(pos[:, 1], src.float())


def test_ast_positions_crop_both_axes_for_short_inputs():
    cfg = dataclasses.replace(ast_encoder(128), embed_dim=16, depth=1, num_heads=2)  # grid 12 x 12
    pos = from_imagenet_vit(deit_state_dict(dim=16, depth=1), cfg)["pos_embed"][0]
    t, f = torch.arange(12).repeat_interleave(12), torch.arange(12).repeat(12)
    assert torch.equal(pos[:, 0], (6 + f).float()) and torch.equal(pos[:, 1], (6 + t).float())


def test_passt_positions_split_into_frequency_and_time_tables():
    cfg = dataclasses.replace(passt_encoder(998), embed_dim=16, depth=1, num_heads=2)
    out = from_imagenet_vit(deit_state_dict(dim=16, depth=1), cfg)
    freq, time = out["freq_pos"][0], out["time_pos"][0]
    assert freq.shape == (12, 16) and time.shape == (99, 16)
    # channel 0 varies only along image rows (= frequency): the time table holds its mean
    assert torch.all(freq[1:, 0] > freq[:-1, 0])
    torch.testing.assert_close(time[:, 0], freq[:, 0].mean().expand(99))
    assert torch.all(time[1:, 1] >= time[:-1, 1]) and time[-1, 1] - time[0, 1] > 20
    torch.testing.assert_close(freq[:, 1], time[:, 1].mean().expand(12))


def test_mismatches_name_the_key():
    cfg = dataclasses.replace(ast_encoder(128), embed_dim=16, depth=3, num_heads=2)
    with pytest.raises(ConfigError, match="blocks.2"):
        from_imagenet_vit(deit_state_dict(dim=16, depth=1), cfg)
    with pytest.raises(ConfigError, match="embed_dim"):
        from_imagenet_vit(deit_state_dict(dim=32, depth=1), dataclasses.replace(cfg, depth=1))
    with pytest.raises(ConfigError, match="pre-LN"):
        from_imagenet_vit(deit_state_dict(dim=16, depth=1), classifier_config("tiny", 2).encoder)
