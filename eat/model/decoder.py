"""EAT / data2vec 2.0 light-weight 2-D convolutional decoder.

The decoder sees the student's outputs scattered back onto the full patch grid (noise at the masked
positions) and predicts the teacher's targets everywhere; only the masked positions are scored. Each
layer is a grouped ``k x k`` conv (padding ``k // 2``), a LayerNorm over channels without affine
(eps 1e-5) and an exact GELU, wrapped in a residual; a Linear maps ``dim -> out_dim`` at the end.

Parameter names equal the official ``decoder.blocks.{i}.0.{weight,bias}`` and ``decoder.proj.*``.
Init is PyTorch's default for the convs and the projection, as in the official model.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (N, C, H, W) map, no affine."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (self.channels,), eps=self.eps)
        return x.permute(0, 3, 1, 2)


class CNNDecoder(nn.Module):
    """``layers`` residual [grouped conv -> channel LN -> GELU] blocks on the (T', F') grid, then a Linear."""

    def __init__(self, in_dim: int, dim: int, out_dim: int, groups: int, kernel: int, layers: int):
        super().__init__()
        if in_dim % groups or dim % groups:
            raise ValueError(f"decoder groups {groups} must divide in_dim {in_dim} and dim {dim}")
        if kernel % 2 == 0:
            raise ValueError(f"decoder kernel must be odd to keep the grid size, got {kernel}")
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_dim if i == 0 else dim, dim, kernel, padding=kernel // 2, groups=groups),
                ChannelLayerNorm(dim),
                nn.GELU(),
            )
            for i in range(layers)
        )
        self.residual_first = in_dim == dim
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, grid: tuple[int, int], positions: Tensor | None = None) -> Tensor:
        """``x`` (R, T'*F', in_dim) in grid order -> (R, T'*F', out_dim).

        With ``positions`` (R, M) the final Linear runs only on those grid positions and the result is
        (R, M, out_dim): the loss needs the masked positions only.
        """
        rows, n, dim = x.shape
        if n != grid[0] * grid[1]:
            raise ValueError(f"decoder input has {n} tokens but the grid {grid} has {grid[0] * grid[1]}")
        y = x.transpose(1, 2).reshape(rows, dim, *grid)
        for i, block in enumerate(self.blocks):
            out = block(y)
            y = out + y if (i > 0 or self.residual_first) else out
        y = y.flatten(2).transpose(1, 2)  # (R, N, dim)
        if positions is not None:
            y = y.gather(1, positions[..., None].expand(-1, -1, y.shape[-1]))
        return self.proj(y)
