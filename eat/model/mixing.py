"""Partial mixtures of clips and the source retention target: the pieces of SSLAM stage 2 (Alex et al.,
ICLR 2025) that :class:`eat.model.eat.EATModel` uses when ``mix=True``. Every choice and its source is in
``docs/design.md`` ("Mixture pretraining").

One micro-batch of B clips becomes 2B inputs: the B clips as they are, then B mixtures. Mixture ``b`` is clip
``b`` (its *own* clip) with clip ``b - 1`` (its *partner*, cyclically: clip 0's partner is clip B - 1) laid
over it in the normalised log-mel domain by an element-wise maximum, on every time row of patches except
two *clean* windows of ``clean`` rows each, where only the own clip is heard. Which rows carry the partner
is a (B, T') bool tensor, ``mix_rows``, drawn per clip in the loader workers (:func:`draw_mix_rows`, from
the item's seeded generator), so mixtures repeat exactly on resume.

Teacher targets of a mixture (:func:`retention_target`): on a mixed token the mean of the own clip's target
and the partner's target computed from the partner's mixed tokens alone; on a clean token the own clip's
target. The source retention loss compares the student's predictions for the mixture with these.
"""

from __future__ import annotations

import torch
from torch import Tensor

# SSLAM's clean windows: 240 of 1024 frames (15 of 64 patch rows) each
OFFICIAL_CLEAN_FRACTION = 240 / 1024


def clean_rows(time_patches: int, fraction: float) -> int:
    """Patch rows in each of the two clean windows: ``fraction`` of ``time_patches``, rounded, at least 1.

    Needs ``time_patches >= 2 * clean + 1`` (both windows and at least one mixed row); ValueError otherwise.
    """
    if not 0.0 < fraction < 0.5:
        raise ValueError(f"the clean-window fraction must lie in (0, 0.5), got {fraction}")
    clean = max(1, round(fraction * time_patches))
    if time_patches < 2 * clean + 1:
        raise ValueError(f"{time_patches} time patches are too few for two clean windows of {clean} rows "
                         "and a mixed one (lower the fraction or use longer clips)")
    return clean


def draw_mix_rows(time_patches: int, clean: int, generator: torch.Generator | None = None) -> Tensor:
    """(T',) bool, True on the rows where the partner clip is mixed in: all rows except two windows of
    ``clean`` rows. The first window starts uniformly in ``[0, min(T'/2 - 1, T' - 2 clean - 1)]``, the
    second uniformly in ``[start1 + clean, T' - clean - 1]`` (SSLAM, in patch rows: starts 0..31 and
    start1 + 15..48 of 64). Two draws from ``generator``; exactly ``T' - 2 clean`` rows are True.
    """
    if clean < 1 or time_patches < 2 * clean + 1:
        raise ValueError(f"{time_patches} time patches do not fit two clean windows of {clean} rows and a mixed one")
    last1 = min(time_patches // 2 - 1, time_patches - 2 * clean - 1)
    start1 = int(torch.randint(0, last1 + 1, (), generator=generator))
    low2, high2 = start1 + clean, time_patches - clean - 1
    start2 = int(torch.randint(low2, high2 + 1, (), generator=generator))
    rows = torch.ones(time_patches, dtype=torch.bool)
    rows[start1:start1 + clean] = False
    rows[start2:start2 + clean] = False
    return rows


def draw_mix_rows_batch(batch: int, time_patches: int, clean: int, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> Tensor:
    """(batch, T') bool: :func:`draw_mix_rows`'s distribution for a whole batch at once, made on ``device``
    without reading a value on the host (the model's own draw when the loader sent no ``mix_rows``, e.g. with
    masks made on the device). The second start is ``start1 + clean + floor(u * width)`` with ``u`` uniform
    in [0, 1) and ``width`` the number of allowed starts, i.e. uniform on the same integers."""
    if clean < 1 or time_patches < 2 * clean + 1:
        raise ValueError(f"{time_patches} time patches do not fit two clean windows of {clean} rows and a mixed one")
    last1 = min(time_patches // 2 - 1, time_patches - 2 * clean - 1)
    start1 = torch.randint(0, last1 + 1, (batch, 1), generator=generator, device=device)
    width = time_patches - 2 * clean - start1  # starts start1 + clean .. T' - clean - 1
    u = torch.rand(batch, 1, generator=generator, device=device)
    start2 = start1 + clean + (u * width).long().clamp_max(width - 1)
    t = torch.arange(time_patches, device=device)
    clean_rows_ = ((t >= start1) & (t < start1 + clean)) | ((t >= start2) & (t < start2 + clean))
    return ~clean_rows_


def partner(x: Tensor) -> Tensor:
    """The partner of every clip of a batch (dim 0): clip ``b - 1``, clip ``B - 1`` for clip 0."""
    return x.roll(1, dims=0)


def mix_spectrograms(source: Tensor, mix_rows: Tensor, row_stride: int) -> Tensor:
    """Mixtures of a batch: ``max(own, partner)`` on the frames of the mixed rows, ``own`` elsewhere.

    ``source`` (B, T, F) or (B, 1, T, F) normalised log-mel; ``mix_rows`` (B, T') bool; patch row ``t``
    covers frames ``t * row_stride .. (t + 1) * row_stride - 1`` (frames past the last row stay clean).
    The normalisation is a positive affine map, so the maximum of normalised spectrograms is the
    normalised maximum of the log-mel spectrograms. One batched op on whatever device ``source`` is on.
    """
    frames = source.shape[-2]
    per_frame = mix_rows.repeat_interleave(row_stride, dim=1)[:, :frames]
    if per_frame.shape[1] < frames:
        per_frame = torch.nn.functional.pad(per_frame, (0, frames - per_frame.shape[1]), value=False)
    per_frame = per_frame.reshape(source.shape[0], *([1] * (source.dim() - 3)), frames, 1)
    return torch.where(per_frame, torch.maximum(source, partner(source)), source)


def mixed_tokens(mix_rows: Tensor, freq_patches: int) -> Tensor:
    """(B, T' * F') bool: the patch tokens (time-major, ``t * F' + f``) of the mixed rows."""
    return mix_rows.repeat_interleave(freq_patches, dim=1)


def retention_target(own: Tensor, partner_at_mixed: Tensor, mix_ids: Tensor) -> Tensor:
    """Source retention targets of the mixtures, (B, N, D).

    ``own`` (B, N, D): teacher targets of every mixture's own clip (run alone). ``partner_at_mixed``
    (B, K, D): the targets of its partner, from a teacher run on the partner's tokens at ``mix_ids``
    (B, K) only. Result: ``(own + partner) / 2`` at ``mix_ids``, ``own`` elsewhere.
    """
    index = mix_ids[..., None].expand(-1, -1, own.shape[-1])
    placed = own.scatter(1, index, partner_at_mixed.to(own.dtype))
    return (own + placed) / 2


def retention_loss(pred: Tensor, own: Tensor, partner_at_mixed: Tensor, mix_ids: Tensor, masked_ids: Tensor,
                   scale: float) -> Tensor:
    """The source retention loss: mean over the mixtures' masked tokens of ``scale * ||pred - target||^2``.

    ``pred`` (B * C, M, D): the decoder's predictions for the C clones of each of the B mixtures (rows
    ``b * C + c``) at their masked grid positions ``masked_ids`` (B * C, M); ``own``, ``partner_at_mixed``,
    ``mix_ids`` as in :func:`retention_target`. fp32 result.
    """
    target = retention_target(own.float(), partner_at_mixed.float(), mix_ids)
    item = torch.arange(pred.shape[0], device=pred.device) // (pred.shape[0] // own.shape[0])
    return ((pred.float() - target[item[:, None], masked_ids]).square().sum(dim=-1) * scale).mean()
