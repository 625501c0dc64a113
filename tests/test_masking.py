"""Masks: exact counts, ids, and the statistics of the official ``compute_block_mask_2d``.

``mask_stats.json`` was measured on masks made by the official code (2,000 rows per setting, plus a
20,000-row reference for the base grid). Our masks come from a different random stream, so they are
compared statistically: every statistic must lie within 3 combined standard errors (4 for the 64
per-time-row rates, which are 64 simultaneous comparisons); the combined error adds our own sampling
error, estimated from our rows, to the reference's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from eat.model.masking import (
    block_mask,
    inverse_block_mask,
    mask_to_ids,
    mask_to_keep_ids,
    random_mask,
)

STATS = json.loads((Path(__file__).parent / "fixtures" / "mask_stats.json").read_text())


def _row_stats(mask: torch.Tensor, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per-row statistics of the visible set (numpy arrays with one value per row)."""
    t, f = grid
    vis = (~mask).view(-1, t, f).numpy()
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]  # 4-connectivity inside a row, none across rows
    labels, _ = ndimage.label(vis, structure=structure)
    components, largest = [], []
    for row in labels:
        sizes = np.bincount(row.ravel())[1:]
        sizes = sizes[sizes > 0]
        components.append(len(sizes))
        largest.append(sizes.max())
    padded = np.pad(vis, ((0, 0), (1, 1), (1, 1)))
    neighbour = padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2] | padded[:, 1:-1, 2:]
    with_nb = (vis & neighbour).sum(axis=(1, 2))
    return {
        "components": np.array(components, dtype=float),
        "largest": np.array(largest, dtype=float),
        "isolated": (vis & ~neighbour).sum(axis=(1, 2)).astype(float),
        "frac_nb": with_nb / vis.sum(axis=(1, 2)),
        "per_col": vis.mean(axis=1),  # (rows, F) rate of each mel column within the row
        "per_row": vis.mean(axis=2),  # (rows, T)
    }


def _check(name: str, ours: np.ndarray, ref_mean, ref_se, k: float) -> None:
    mean = ours.mean(axis=0)
    se = ours.std(axis=0, ddof=1) / math.sqrt(ours.shape[0])
    z = np.abs(mean - np.asarray(ref_mean)) / np.sqrt(se**2 + np.asarray(ref_se) ** 2)
    assert np.all(z < k), f"{name}: ours {mean} vs official {ref_mean}, |z| = {z}"


@pytest.mark.parametrize(
    "key, grid, rows, seed",
    [("base_20000_rows_reference", (64, 8), 2000, 0), ("tiny_grid_16x8_2000_rows", (16, 8), 2000, 1)],
)
def test_inverse_block_mask_matches_official_statistics(key, grid, rows, seed):
    ref = STATS[key]
    ref_rows = ref["setting"]["rows"]
    gen = torch.Generator().manual_seed(seed)
    mask = inverse_block_mask(rows, grid, 0.8, 5, 0.07, generator=gen)
    assert mask.shape == (rows, grid[0] * grid[1]) and mask.dtype == torch.bool
    assert (mask.sum(1) == ref["masked_per_row"]["value"]).all()
    st = _row_stats(mask, grid)
    for ours, ref_key in [
        (st["components"], "visible_components_4conn"),
        (st["largest"], "largest_visible_component_size"),
        (st["isolated"], "isolated_visible_patches_per_row"),
        (st["frac_nb"], "frac_visible_with_visible_4neighbour"),
    ]:
        _check(ref_key, ours, ref[ref_key]["mean"], ref[ref_key]["se_of_mean"], 3.0)
    _check("per freq column", st["per_col"], ref["visible_rate_per_freq_col"], ref["visible_rate_per_freq_col_se"], 3.0)
    # The json has no standard errors per time row; scale ours to the reference's row count.
    row_se = st["per_row"].std(axis=0, ddof=1) / math.sqrt(ref_rows)
    _check("per time row", st["per_row"], ref["visible_rate_per_time_row"]["all"], row_se, 4.0)


def test_visible_counts_follow_official_float_expression():
    # 1 - 0.8 = 0.19999999999999996, so int(L * keep) is 102 / 25 / 51, not 102.4 -> 102, 25.6 -> 25 ...
    for grid, visible in [((64, 8), 102), ((16, 8), 25), ((32, 8), 51)]:
        mask = inverse_block_mask(64, grid, generator=torch.Generator().manual_seed(3))
        assert ((~mask).sum(1) == visible).all()
    large = inverse_block_mask(64, (64, 8), mask_ratio=0.75, adjust=0.1)
    assert ((~large).sum(1) == 128).all()


def test_block_shapes_are_clamped_squares():
    # With one centre and a target equal to the square's area, an interior centre yields exactly the 5x5
    # square and no random extras; all visible patches of such rows form one 5-wide, 5-high block.
    gen = torch.Generator().manual_seed(5)
    mask = inverse_block_mask(500, (16, 8), generator=gen)
    vis = (~mask).view(-1, 16, 8)
    rows_t = vis.any(2).sum(1)
    cols_f = vis.any(1).sum(1)
    square = (rows_t == 5) & (cols_f == 5)
    assert square.sum() > 100  # interior centres are common (rows 2..13 x cols 2..5)
    assert (vis[square].sum((1, 2)) == 25).all()


def test_other_masks_and_devices_and_reproducibility():
    m = block_mask(10, (64, 8), mask_ratio=0.6)
    assert (m.sum(1) == int(512 * 0.6)).all()
    r = random_mask(10, (64, 8), mask_ratio=0.75)
    assert (r.sum(1) == 384).all()
    a = inverse_block_mask(8, (64, 8), generator=torch.Generator().manual_seed(9))
    b = inverse_block_mask(8, (64, 8), generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    if torch.cuda.is_available():
        g = torch.Generator(device="cuda").manual_seed(0)
        assert inverse_block_mask(8, (64, 8), generator=g).device.type == "cuda"


def test_mask_to_ids_ascending_and_complementary():
    mask = inverse_block_mask(12, (64, 8), generator=torch.Generator().manual_seed(2))
    keep, masked = mask_to_ids(mask)
    assert keep.shape == (12, 102) and masked.shape == (12, 410)
    assert (keep.diff(dim=1) > 0).all() and (masked.diff(dim=1) > 0).all()
    assert not mask.gather(1, keep).any() and mask.gather(1, masked).all()
    assert torch.equal(mask_to_keep_ids(mask), keep)
    assert torch.equal(mask_to_keep_ids(mask, num_visible=102), keep)


def test_mask_to_ids_rejects_unequal_rows():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 0] = True
    with pytest.raises(ValueError, match="same number of visible"):
        mask_to_keep_ids(mask)
    with pytest.raises(ValueError, match="bool"):
        mask_to_keep_ids(mask.float())
    with pytest.raises(ValueError, match="expected 3"):
        mask_to_keep_ids(torch.zeros(2, 8, dtype=torch.bool), num_visible=3)
