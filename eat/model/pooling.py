"""Pooling of an encoder's patch tokens into one vector per clip: the one definition that the probe protocol
(:mod:`eat.eval.protocol`) and the classifier heads share.

Patch tokens arrive time-major (row ``n = t * F' + f`` of a ``(T', F')`` grid, see :mod:`eat.model.vit`) with
an optional padding mask (True = padding; a whole time column is padded or not). Poolings:

* ``mean``: mean over every valid patch, ``(B, D)``;
* ``meanstd``: that mean and the per-dimension population std over the same patches, ``(B, 2D)``;
* ``band-mean``: the mean over time *within each frequency band* (grid row ``f``), the ``F'`` band vectors
  concatenated band after band, ``(B, F'*D)``. Pooling over frequency as well (``mean``) throws away where in
  the spectrum a pattern sits, which is what pooled log-mel statistics (a mean per mel bin) keep; with
  bands a linear probe sees the same spectral layout the encoder saw;
* ``band-meanstd``: per band, the mean and std over time: ``[mean of all bands, std of all bands]``,
  ``(B, 2*F'*D)``.

* ``cls``: the CLS token (not a pooling of the patch tokens; an encoder without extra tokens has none).

Which blocks' tokens are pooled is a layer spec (:func:`parse_layers`): ``"-1"``, ``"0+2"``, ``"all"``; a
multi-block embedding is the per-block pooled vectors concatenated in the spec's order.

This module is the registry of both: every tool and API that gives a user one vector per clip takes its
pooling names from :data:`POOLINGS`, its layer specs from :func:`parse_layers` and its defaults from
:data:`DEFAULT_LAYERS` / :data:`DEFAULT_POOLING` (``FeatureExtractor.clip_embeddings``, ``tools/extract_features.py``,
the HEAR scene embedding, ``tools/linear_probe.py``; the probe protocol and the pooled classifier head use
the same names and :func:`pool_tokens`).

**The default, every block with band mean+std** (``all`` / ``band-meanstd``), is the frozen embedding the probe
protocol chose on validation for the pretrained encoders of the real-audio benchmark, and the best fixed cell
there: hidden-speaker keywords 0.643 against 0.403 for ``all``/``mean`` (``recipes/configs/small_cpu.yaml``,
3 seeds; docs/benchmarks.md, "Result: small_cpu.yaml"). It is wide: ``2 * F' * D`` values per block (8 bands
for EAT's 128 mel bins), 147,456 for EAT-base's 12 blocks of 768; ``--layers=-1 --pooling mean`` (or ``cls``)
gives a ``D``-wide vector where that matters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

TOKEN_POOLINGS = ("mean", "meanstd", "band-mean", "band-meanstd")  # poolings of the patch tokens
POOLINGS = (*TOKEN_POOLINGS, "cls")  # every per-clip embedding a tool or API offers
DEFAULT_LAYERS = "all"  # the recommended embedding (see the module docstring): every block ...
DEFAULT_POOLING = "band-meanstd"  # ... each pooled to its per-band mean and std over time


def check_poolings(poolings: str | Sequence[str]) -> list[str]:
    """``poolings`` (one name or several) as a list; an unknown name raises ``ValueError``."""
    out = [poolings] if isinstance(poolings, str) else list(poolings)
    if not out:
        raise ValueError("name at least one pooling")
    for p in out:
        if p not in POOLINGS:
            raise ValueError(f"unknown pooling {p!r}; choose from {', '.join(POOLINGS)}")
    return out


def layer_spec(layers: str | int | Sequence[int]) -> str:
    """A layer spec string from an old-style ``int`` or list of block indices (``[0, -1]`` -> ``"0+-1"``)."""
    if isinstance(layers, str):
        return layers
    if isinstance(layers, int):
        return str(layers)
    return "+".join(str(int(i)) for i in layers)


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """Block indices (non-negative, in the given order) named by ``spec``: ``"-1"``, ``"1"``, ``"0+2"``, ``"all"``."""
    spec = spec.strip()
    if spec == "all":
        return list(range(num_layers))
    out = []
    for part in spec.split("+"):
        try:
            i = int(part)
        except ValueError:
            raise ValueError(f"layer spec {spec!r}: {part!r} is not a block index (use e.g. -1, 0+2 or all)") from None
        if not -num_layers <= i < num_layers:
            raise ValueError(f"layer spec {spec!r}: block {i} out of range for an encoder with {num_layers} blocks")
        out.append(i % num_layers)
    if len(set(out)) != len(out):
        raise ValueError(f"layer spec {spec!r} names a block twice")
    return out


def pooled_dim(pooling: str, embed_dim: int, num_bands: int) -> int:
    """Width of one block's embedding under ``pooling`` (:func:`pool_tokens`' output, or the CLS token) for
    ``embed_dim``-wide tokens on a grid of ``num_bands`` rows."""
    if pooling == "cls":
        return embed_dim
    check_pooling(pooling)
    per = embed_dim * (num_bands if pooling.startswith("band-") else 1)
    return 2 * per if pooling.endswith("meanstd") else per


def check_pooling(pooling: str) -> None:
    if pooling not in TOKEN_POOLINGS:
        raise ValueError(f"unknown token pooling {pooling!r}; choose from {', '.join(TOKEN_POOLINGS)}")


def pool_tokens(tokens: Tensor, mask: Tensor | None, pooling: str, num_bands: int = 1) -> Tensor:
    """Pool ``tokens (B, N, D)`` over the valid rows (``mask (B, N)``, True = padding) by ``pooling``.

    ``num_bands`` (``F'``, the grid's frequency rows) is needed by the ``band-*`` poolings; ``N`` must be a
    multiple of it. A clip with no valid token pools to zeros."""
    check_pooling(pooling)
    b, n, d = tokens.shape
    valid = torch.ones(b, n, dtype=torch.bool, device=tokens.device) if mask is None else ~mask
    if pooling.startswith("band-"):
        if num_bands < 1 or n % num_bands:
            raise ValueError(f"{n} patch tokens do not form a grid of {num_bands} frequency bands")
        x = tokens.reshape(b, n // num_bands, num_bands, d)  # (B, T', F', D): pool over T' per band
        w = valid.reshape(b, n // num_bands, num_bands).to(tokens.dtype)[..., None]
    else:
        x, w = tokens[:, :, None], valid.to(tokens.dtype)[:, :, None, None]  # one "band" holding every patch
    count = w.sum(1).clamp_min(1.0)
    mean = (x * w).sum(1) / count  # (B, bands, D)
    out = [mean.reshape(b, -1)]
    if pooling.endswith("meanstd"):
        var = ((x - mean[:, None]) ** 2 * w).sum(1) / count
        out.append(var.clamp_min(0).sqrt().reshape(b, -1))
    return torch.cat(out, dim=1) if len(out) > 1 else out[0]
