"""CNN decoder against a plain reference, names of its parameters, masked-position projection."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eat.model.decoder import CNNDecoder


def _reference(dec: CNNDecoder, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    rows, n, d = x.shape
    y = x.transpose(1, 2).reshape(rows, d, *grid)
    for block in dec.blocks:
        conv = block[0]
        z = F.conv2d(y, conv.weight, conv.bias, padding=conv.kernel_size[0] // 2, groups=conv.groups)
        mu = z.mean(1, keepdim=True)
        var = z.var(1, unbiased=False, keepdim=True)
        z = (z - mu) / torch.sqrt(var + 1e-5)  # LayerNorm over channels, no affine
        z = 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
        y = z + y if z.shape == y.shape else z
    y = y.flatten(2).transpose(1, 2)
    return y @ dec.proj.weight.T + dec.proj.bias


@pytest.mark.parametrize("kernel, layers", [(3, 2), (5, 3)])
def test_decoder_matches_reference(kernel, layers):
    torch.manual_seed(0)
    dec = CNNDecoder(in_dim=32, dim=32, out_dim=24, groups=8, kernel=kernel, layers=layers)
    grid = (6, 4)
    x = torch.randn(3, 24, 32)
    out = dec(x, grid)
    assert out.shape == (3, 24, 24)
    assert torch.allclose(out, _reference(dec, x, grid), atol=1e-5)
    pos = torch.tensor([[0, 5, 23], [1, 2, 3], [22, 7, 9]])
    assert torch.allclose(dec(x, grid, positions=pos), out.gather(1, pos[..., None].expand(-1, -1, 24)), atol=1e-6)


def test_decoder_first_layer_without_residual_when_widths_differ():
    dec = CNNDecoder(in_dim=16, dim=32, out_dim=16, groups=8, kernel=3, layers=2)
    x = torch.randn(2, 12, 16)
    assert torch.allclose(dec(x, (3, 4)), _reference(dec, x, (3, 4)), atol=1e-5)


def test_parameter_names_match_official_decoder():
    dec = CNNDecoder(768, 768, 768, 16, 3, 6)
    names = {k: tuple(v.shape) for k, v in dec.state_dict().items()}
    expected = {f"blocks.{i}.0.weight": (768, 48, 3, 3) for i in range(6)}
    expected |= {f"blocks.{i}.0.bias": (768,) for i in range(6)}
    expected |= {"proj.weight": (768, 768), "proj.bias": (768,)}
    assert names == expected
    assert sum(p.numel() for p in dec.parameters()) == 2_585_856  # reference §9


def test_decoder_rejects_bad_input():
    dec = CNNDecoder(16, 16, 16, 4, 3, 1)
    with pytest.raises(ValueError, match="grid"):
        dec(torch.randn(1, 10, 16), (3, 4))
    with pytest.raises(ValueError, match="odd"):
        CNNDecoder(16, 16, 16, 4, 4, 1)
    with pytest.raises(ValueError, match="groups"):
        CNNDecoder(16, 18, 16, 4, 3, 1)
