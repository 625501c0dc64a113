"""Patch masks for masked-prediction pretraining, vectorised over rows (no Python loop per row).

All masks are bool ``(rows, T' * F')`` with **True = masked**, patches time-major (``n = t * F' + f``).
Every row of one call has the same number of masked patches, so the visible tokens of a batch can be
gathered into a dense tensor (:func:`mask_to_keep_ids`).

:func:`inverse_block_mask` is EAT's (and data2vec 2.0's) ``compute_block_mask_2d`` with
``inverse_mask=True, require_same_masks=True`` and nothing else switched on:

1. ``keep = 1 - mask_ratio`` (a Python float: ``1 - 0.8 = 0.19999999999999996``),
   ``int(L * ((keep + adjust) / block**2))`` block centres per row, drawn uniformly with replacement;
2. each centre marks a ``block x block`` square (offsets ``-block//2 .. block - 1 - block//2``) as
   *visible*, indices clamped to the grid, so border blocks are truncated and duplicates collapse;
3. rows are brought to exactly ``int(L * keep)`` visible patches: a surplus is removed uniformly at random
   among the visible patches, a deficit filled uniformly at random among the others (single patches);
4. the visible set is inverted into the mask.

Step 3 is done for all rows at once: every patch gets ``visible + U[0, 1)`` and the top ``int(L * keep)``
scores stay visible. Visible patches always outrank the others, so a row with a surplus keeps a uniform
random subset of its blocks and a row with a deficit keeps all of them plus a uniform random subset of
the rest, which is the same distribution as the official per-row ``multinomial`` draws.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rng_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def _exact_count(on: Tensor, target: int, generator: torch.Generator | None) -> Tensor:
    """Bring every row of bool ``on`` to exactly ``target`` True values by uniform random removal/addition."""
    score = on.float() + torch.rand(on.shape, generator=generator, device=on.device)
    keep = score.topk(target, dim=1, sorted=False).indices
    return torch.zeros_like(on).scatter_(1, keep, True)


def _block_pattern(
    rows: int,
    grid: tuple[int, int],
    ratio: float,
    block: int,
    adjust: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """Bool (rows, T*F): clamped square blocks around random centres, then exactly int(L * ratio) True."""
    t_len, f_len = grid
    length = t_len * f_len
    num_centres = int(length * ((ratio + adjust) / block**2))
    on = torch.zeros(rows, length, dtype=torch.bool, device=device)
    if num_centres > 0:
        centres = torch.randint(0, length, (rows, num_centres), generator=generator, device=device)
        offsets = torch.arange(block, device=device) - block // 2
        t = (centres.div(f_len, rounding_mode="floor")[..., None] + offsets).clamp_(0, t_len - 1)
        f = (centres.remainder(f_len)[..., None] + offsets).clamp_(0, f_len - 1)
        cells = t[..., :, None] * f_len + f[..., None, :]  # (rows, centres, block, block)
        on.scatter_(1, cells.flatten(1), True)
    return _exact_count(on, int(length * ratio), generator)


def inverse_block_mask(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float = 0.8,
    block: int = 5,
    adjust: float = 0.07,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """EAT's inverse block mask: square blocks mark the *visible* patches; True = masked.

    Every row has exactly ``T'*F' - int(T'*F' * (1 - mask_ratio))`` masked patches (EAT-base 64x8 grid:
    410 masked, 102 visible).
    """
    return ~block_mask(batch, grid, 1 - mask_ratio, block, adjust, generator, device)  # blocks = visible


def block_mask(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float = 0.8,
    block: int = 5,
    adjust: float = 0.07,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Plain block mask: square blocks mark the *masked* patches; exactly ``int(T'*F' * mask_ratio)`` per row."""
    device = _rng_device(generator, device)
    return _block_pattern(batch, tuple(grid), mask_ratio, block, adjust, generator, device)


def random_mask(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float = 0.8,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniformly random patches (MAE-style); exactly ``int(T'*F' * mask_ratio)`` masked per row."""
    device = _rng_device(generator, device)
    length = grid[0] * grid[1]
    empty = torch.zeros(batch, length, dtype=torch.bool, device=device)
    return _exact_count(empty, int(length * mask_ratio), generator)


def visible_count(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per row of the masks above for ``mask_ratio`` (EAT-base: 102 of 512 at 0.8).

    Known from the config alone, so a step can fix its shapes without reading a mask on the device.
    """
    return int(num_patches * (1 - mask_ratio))


def mask_to_ids(mask: Tensor, num_visible: int | None = None) -> tuple[Tensor, Tensor]:
    """Grid indices of the visible and of the masked patches of every row, each ascending.

    ``mask`` (rows, N) bool, True = masked, with the same number of visible patches in every row. Returns
    ``keep_ids`` (rows, V) and ``masked_ids`` (rows, N - V), both int64.

    ``num_visible=None`` reads V from the mask, which is one device-to-host copy when the mask lives on
    an accelerator. A caller that knows V may pass it: on CPU the counts are then still checked exactly
    (ValueError); on an accelerator the check is an asynchronous device assert, so a wrong mask stops
    the run at the next synchronisation instead of silently mixing tokens.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a 2-D bool tensor (rows, patches), got {tuple(mask.shape)} {mask.dtype}")
    counts = (~mask).sum(dim=1)
    if num_visible is None or mask.device.type == "cpu":
        num_visible = int(counts[0]) if num_visible is None else num_visible
        if not bool((counts == num_visible).all()):
            raise ValueError(
                "every mask row must have the same number of visible patches; got counts "
                f"{sorted(set(counts.tolist()))} (expected {num_visible})"
            )
    else:
        message = f"every mask row must have {num_visible} visible patches"
        torch._assert_async((counts == num_visible).all(), message)
    order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
    return order[:, :num_visible], order[:, num_visible:]


def mask_to_keep_ids(mask: Tensor, num_visible: int | None = None) -> Tensor:
    """Ascending grid indices (rows, V) of the visible patches; see :func:`mask_to_ids`."""
    return mask_to_ids(mask, num_visible)[0]
