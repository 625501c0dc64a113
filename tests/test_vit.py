"""Encoder: positional tables, token order, blocks against plain references, padding, drop path, cropping."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eat.config import ConfigError, from_dict, to_dict
from eat.model.vit import Block, Encoder, EncoderConfig, drop_path, gather_tokens, sincos_2d

FIXTURES = Path(__file__).parent / "fixtures"


def tiny(**kw) -> EncoderConfig:
    base = dict(embed_dim=32, depth=2, num_heads=4, target_length=64, max_time_patches=8)
    return EncoderConfig(**{**base, **kw})


def test_sincos_table_matches_plain_formula():
    dim, t_len, f_len = 16, 5, 3
    table = sincos_2d(dim, t_len, f_len)
    q = dim // 4
    for t in range(t_len):
        for f in range(f_len):
            row = table[t * f_len + f]
            for k in range(q):
                w = 10000 ** (-k / q)
                expect = [math.sin(f * w), math.cos(f * w), math.sin(t * w), math.cos(t * w)]
                got = [row[k], row[q + k], row[2 * q + k], row[3 * q + k]]
                assert torch.allclose(torch.stack(got), torch.tensor(expect), atol=1e-6), (t, f, k)


def test_sincos_table_matches_official_table():
    official = torch.load(FIXTURES / "eat_tiny_parity.pt", weights_only=True)["state_dict"][
        "modality_encoders.IMAGE.fixed_positional_encoder.positions"
    ]
    enc = Encoder(EncoderConfig(embed_dim=96, depth=1, num_heads=4, target_length=256, max_time_patches=20))
    assert enc.pos_embed.shape == official.shape == (1, 160, 96)
    assert not enc.pos_embed.requires_grad and "pos_embed" in enc.state_dict()
    assert (enc.pos_embed - official).abs().max() < 1e-6  # official table is float32 numpy (README: 5.5e-7)


def test_positions_are_a_prefix_of_the_table_and_offsets_slide():
    enc = Encoder(tiny())
    fp = enc.num_freq_patches
    assert torch.equal(enc.pos_encoding(3), enc.pos_embed[:, : 3 * fp])
    assert torch.equal(enc.pos_encoding(3, time_offset=2), enc.pos_embed[:, 2 * fp : 5 * fp])
    with pytest.raises(ValueError, match="covers only 8"):
        enc.pos_encoding(9)


def test_tokens_are_time_major_and_grid_formula():
    enc = Encoder(tiny(pos_embed="learned_joint"))
    with torch.no_grad():
        enc.patch_embed.weight.zero_()
        enc.patch_embed.weight[0].fill_(1.0 / 256)  # channel 0 = patch mean
        enc.patch_embed.bias.zero_()
        enc.pos_embed.zero_()
    t_idx = torch.arange(64).div(16, rounding_mode="floor")[:, None].float()
    f_idx = torch.arange(128).div(16, rounding_mode="floor")[None, :].float()
    x = (100 * t_idx + f_idx)[None]  # patch (t, f) has the constant value 100 t + f
    tokens = enc.embed(x)[0, :, 0]
    expect = torch.tensor([100.0 * t + f for t in range(4) for f in range(8)])
    assert torch.allclose(tokens, expect)
    assert enc.grid(1024) == (64, 8) and enc.grid(998) == (62, 8)
    ast = Encoder(tiny(patch_stride=(10, 10), target_length=1024, depth=0, pos_embed="learned_joint"))
    assert ast.grid(1024) == (101, 12) and ast.pos_embed.shape[1] == 1212
    with pytest.raises(ValueError, match="fewer than the patch size"):
        enc.grid(10)


def test_channel_axis_optional_and_bad_shapes():
    enc = Encoder(tiny()).eval()
    x = torch.randn(2, 64, 128)
    assert torch.equal(enc(x), enc(x[:, None]))
    assert enc(x).shape == (2, 1 + 4 * 8, 32)
    with pytest.raises(ValueError, match="expected input"):
        enc(torch.randn(2, 64, 100))


def _ref_attention(attn, x, keep=None):
    b, n, d = x.shape
    h = attn.num_heads
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    scores = (q / math.sqrt(d // h)) @ k.transpose(-1, -2)
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return out @ attn.proj.weight.T + attn.proj.bias


def _ref_ln(ln, x):
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _ref_mlp(mlp, x):
    h = x @ mlp.fc1.weight.T + mlp.fc1.bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return h @ mlp.fc2.weight.T + mlp.fc2.bias


@pytest.mark.parametrize("pre_ln", [False, True])
def test_block_matches_plain_reference(pre_ln):
    torch.manual_seed(0)
    block = Block(tiny(layer_norm_first=pre_ln), 0.0).eval()
    for p in block.parameters():  # non-trivial LayerNorm gains/biases
        p.data += 0.1 * torch.randn_like(p)
    x = torch.randn(3, 7, 32)
    keep = torch.ones(3, 7, dtype=torch.bool)
    keep[1, 5:] = False
    out, ffn = block(x, keep[:, None, None, :])
    if pre_ln:
        y = x + _ref_attention(block.attn, _ref_ln(block.norm1, x), keep)
        m = _ref_mlp(block.mlp, _ref_ln(block.norm2, y))
        ref = y + m  # the standard residual, not the official branch's doubled MLP output
    else:
        h = _ref_ln(block.norm1, x + _ref_attention(block.attn, x, keep))
        m = _ref_mlp(block.mlp, h)
        ref = _ref_ln(block.norm2, h + m)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(ffn, m, atol=1e-5)


def test_padding_mask_leaves_real_tokens_unchanged():
    torch.manual_seed(1)
    enc = Encoder(tiny(depth=3)).eval()
    x = torch.randn(1, 48, 128)
    padded = torch.cat([x, torch.full((1, 16, 128), 0.467)], dim=1)
    n_real, n_all = 3 * 8, 4 * 8
    pad = torch.zeros(1, n_all, dtype=torch.bool)
    pad[:, n_real:] = True
    out = enc(padded, padding_mask=pad)[:, : 1 + n_real]
    assert torch.allclose(out, enc(x), atol=1e-5)
    assert not torch.allclose(enc(padded)[:, : 1 + n_real], enc(x), atol=1e-3)  # without the mask it differs
    full = F.pad(pad, (1, 0))  # (B, E+N) form is accepted too
    assert torch.equal(enc(padded, padding_mask=full), enc(padded, padding_mask=pad))
    with pytest.raises(ValueError, match="padding_mask"):
        enc(padded, padding_mask=pad[:, :5])


def test_drop_path_per_sample_and_off_in_eval():
    x = torch.ones(1000, 3, 4)
    y = drop_path(x, 0.25, training=True)
    per_sample = y[:, 0, 0]
    assert torch.all((per_sample == 0) | torch.isclose(per_sample, torch.tensor(1 / 0.75)))
    assert torch.all(y == y[:, :1, :1])  # whole samples
    assert abs((per_sample == 0).float().mean().item() - 0.25) < 0.06
    assert torch.equal(drop_path(x, 0.25, training=False), x)
    enc = Encoder(tiny(drop_path=0.5)).eval()
    ref = Encoder(tiny(drop_path=0.0)).eval()
    ref.load_state_dict(enc.state_dict())
    z = torch.randn(2, 64, 128)
    assert torch.equal(enc(z), ref(z)) and torch.equal(enc(z), enc(z))
    enc.train()
    torch.manual_seed(3)
    assert not torch.allclose(enc(z), ref(z))


def test_learned_separate_time_window():
    enc = Encoder(tiny(pos_embed="learned_separate", max_time_patches=6))
    assert enc.time_pos.shape == (1, 6, 32) and enc.freq_pos.shape == (1, 8, 32)
    t, fp = 4, 8

    def window(off):
        return (enc.time_pos[:, off : off + t, None] + enc.freq_pos[:, None]).reshape(1, t * fp, 32)

    enc.eval()
    assert torch.equal(enc.pos_encoding(t), window(0))
    enc.train()
    seen = set()
    for _ in range(60):
        pos = enc.pos_encoding(t)
        match = [o for o in range(3) if torch.equal(pos, window(o))]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {0, 1, 2}
    assert torch.equal(enc.pos_encoding(t, time_offset=1), window(1))
    with pytest.raises(ValueError, match="covers only 6"):
        enc.embed(torch.randn(1, 7 * 16, 128))


def test_extra_tokens_token_positions_and_ffn_outputs():
    enc = Encoder(tiny(num_extra_tokens=2, extra_token_pos=True, pos_embed="learned_joint", layer_norm_first=True,
                       pre_norm=False, final_norm=True)).eval()
    out, ffn = enc.forward_tokens(enc.embed(torch.randn(2, 64, 128)), return_ffn=True)
    assert out.shape == (2, 2 + 32, 32) and len(ffn) == 2 and ffn[0].shape == out.shape
    assert enc.token_pos.shape == (1, 2, 32) and enc.norm is not None and enc.pre_norm is None


def test_gather_tokens_equals_repeat_then_gather():
    tokens = torch.randn(3, 10, 4)
    ids = torch.stack([torch.randperm(10)[:4].sort().values for _ in range(6)])
    ref = tokens.repeat_interleave(2, 0).gather(1, ids[..., None].expand(-1, -1, 4))
    assert torch.equal(gather_tokens(tokens, ids), ref)
    with pytest.raises(ValueError, match="multiple"):
        gather_tokens(tokens, ids[:4])


def test_init_and_no_weight_decay():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(embed_dim=256, depth=2, num_heads=4))
    w = enc.blocks[0].mlp.fc1.weight
    assert abs(w.std().item() - 0.02) < 0.002 and torch.all(enc.blocks[0].mlp.fc1.bias == 0)
    assert abs(enc.extra_tokens.std().item() - 1.0) < 0.2  # EAT's N(0, 1) CLS
    bound = math.sqrt(6 / (256 + 256))  # xavier on the (D, 1*16*16) view
    pw = enc.patch_embed.weight
    assert pw.abs().max() <= bound and pw.abs().max() > 0.9 * bound
    nwd = enc.no_weight_decay()
    assert {"extra_tokens", "pos_embed", "pre_norm.weight", "blocks.0.attn.qkv.bias"} <= nwd
    assert "blocks.0.attn.qkv.weight" not in nwd and "patch_embed.weight" not in nwd


def test_config_validation_and_round_trip():
    cfg = EncoderConfig(patch_stride=[10, 12])
    assert cfg.patch_stride == (10, 12)
    assert from_dict(EncoderConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        EncoderConfig(embed_dim=100, num_heads=12)
    with pytest.raises(ConfigError, match="pos_embed"):
        from_dict(EncoderConfig, {"pos_embed": "rope"})
