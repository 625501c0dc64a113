"""Frame-level sound event detection on the encoder's patch grid.

The encoder turns a (T, F) fbank into a (T', F') grid of patch tokens; each time column covers
``patch_stride`` fbank frames (160 ms for EAT). :class:`SEDModel` predicts per column, then per output
frame of a hop the user sets:

1. the patch tokens of the blocks in ``layers`` (a layer spec, :func:`eat.model.pooling.parse_layers`) are
   reshaped to (B, T', F', D); the frequency rows of each column are averaged (``freq_pooling: mean``, D
   features) or concatenated (``concat``, F'*D features); several blocks are concatenated;
2. ``head.norm`` (LayerNorm), an optional bidirectional GRU (``gru_hidden`` > 0, the light temporal layer of
   the DCASE baselines), dropout, ``head.frame`` (Linear) -> column logits (B, T', C);
3. the clip (weak) logits: ``head.clip`` (Linear) on the mean of the same per-column features over the valid
   columns -> (B, C);
4. :func:`interpolate_columns` maps column logits to output frames ``[j*hop, (j+1)*hop)`` by linear
   interpolation between column centres (the centre of the samples a column's frames span), clamped at the
   ends; the column geometry comes from the front-end (:func:`column_geometry`).

Every head tensor lives under ``head.`` so layer decay (``eat.train.layer_decay``) treats it as the head and
an export stores it next to ``encoder.*`` (``eat.export``, head field ``sed``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from eat.config import ConfigError
from eat.model.pooling import parse_layers
from eat.model.vit import Encoder, EncoderConfig

FREQ_POOLINGS = ("mean", "concat")


@dataclass
class SEDConfig:
    """The detection head. ``hop``: output frame hop in seconds (e.g. 0.04; any positive value);
    ``freq_pooling``: ``mean`` or ``concat`` of a column's frequency rows; ``layers``: encoder blocks
    whose tokens are used (``-1`` last, ``all``, ``0+3``); ``gru_hidden``: hidden size per direction of
    the BiGRU (0 = no temporal layer); ``gru_layers``: stacked GRU layers; ``dropout``: before the linear
    layers (training only)."""

    num_classes: int = 10
    hop: float = 0.04
    freq_pooling: str = "mean"
    layers: str = "-1"
    gru_hidden: int = 0
    gru_layers: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"sed.num_classes must be positive, got {self.num_classes}")
        if not self.hop > 0:
            raise ConfigError(f"sed.hop must be a positive number of seconds, got {self.hop}")
        if self.freq_pooling not in FREQ_POOLINGS:
            raise ConfigError(f"sed.freq_pooling: {self.freq_pooling!r} is not one of {', '.join(FREQ_POOLINGS)}")
        if self.gru_hidden < 0 or self.gru_layers < 1:
            raise ConfigError(f"sed.gru_hidden must be >= 0 and sed.gru_layers >= 1, got {self.gru_hidden}, "
                              f"{self.gru_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"sed.dropout must lie in [0, 1), got {self.dropout}")


def column_geometry(encoder: EncoderConfig, sample_rate: int, frame_shift_ms: float,
                    frame_length_ms: float) -> tuple[float, float]:
    """``(column hop, centre of column 0)`` in seconds: a column spans ``patch_size`` fbank frames and
    moves by ``patch_stride``; its centre is the middle of the samples those frames read (as
    :meth:`eat.features.FeatureExtractor.column_times`)."""
    hop = int(sample_rate * frame_shift_ms / 1000)
    win = int(sample_rate * frame_length_ms / 1000)
    st, p = encoder.patch_stride[0], encoder.patch_size
    return st * hop / sample_rate, ((p - 1) * hop + win) / (2 * sample_rate)


def interpolation_weights(num_columns: int, num_frames: int, hop: float, col_hop: float, first_centre: float,
                          start_column: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(i0, i1, w)`` such that output frame ``j`` = ``(1 - w) * col[i0] + w * col[i1]``.

    Frame ``j``'s centre ``(j + 0.5) * hop`` is placed on the column axis (column ``t``'s centre is
    ``first_centre + (t + start_column) * col_hop``), clamped to the first/last column. Positions are computed
    in float64 from integer frame indices, so there is no drift over long files."""
    j = torch.arange(num_frames, dtype=torch.float64)
    pos = ((j + 0.5) * hop - first_centre) / col_hop - start_column
    pos = pos.clamp(0, num_columns - 1)
    i0 = pos.floor().long().clamp(max=num_columns - 1)
    i1 = (i0 + 1).clamp(max=num_columns - 1)
    return i0, i1, (pos - i0.to(torch.float64)).to(torch.float32)


def interpolate_columns(col: Tensor, num_frames: int, hop: float, col_hop: float, first_centre: float) -> Tensor:
    """Column values ``(B, T', C)`` (or ``(T', C)``) -> output frames ``(B, num_frames, C)``."""
    i0, i1, w = interpolation_weights(col.shape[-2], num_frames, hop, col_hop, first_centre)
    i0, i1, w = i0.to(col.device), i1.to(col.device), w.to(col.device, col.dtype)[:, None]
    return col[..., i0, :] * (1 - w) + col[..., i1, :] * w


class SEDHead(nn.Module):
    """Per-column features -> column logits and clip logits (see the module docstring)."""

    def __init__(self, in_dim: int, cfg: SEDConfig):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.gru = None
        dim = in_dim
        if cfg.gru_hidden > 0:
            self.gru = nn.GRU(in_dim, cfg.gru_hidden, num_layers=cfg.gru_layers, batch_first=True, bidirectional=True)
            dim = 2 * cfg.gru_hidden
        self.drop = nn.Dropout(cfg.dropout)
        self.frame = nn.Linear(dim, cfg.num_classes)
        self.clip = nn.Linear(dim, cfg.num_classes)
        for lin in (self.frame, self.clip):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, feats: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``feats (B, T', D)``, ``valid (B, T')`` (True = a real column) -> ``(B, T', C)``, ``(B, C)``."""
        h = self.norm(feats)
        if self.gru is not None:
            h = self.gru(h)[0]
        h = self.drop(h)
        if valid is None:
            pooled = h.mean(1)
        else:
            w = valid.to(h.dtype)[..., None]
            pooled = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
        return self.frame(h), self.clip(pooled)


class SEDModel(nn.Module):
    """Encoder + :class:`SEDHead`; ``forward(fbank, valid_columns=None) -> (column logits, clip logits)``."""

    def __init__(self, cfg: SEDConfig, encoder: Encoder | EncoderConfig):
        super().__init__()
        if isinstance(encoder, EncoderConfig):
            encoder = Encoder(encoder)
        self.cfg = cfg
        self.encoder = encoder
        try:
            self.blocks = parse_layers(cfg.layers, len(encoder.blocks))
        except ValueError as e:
            raise ConfigError(f"sed.layers: {e}") from None
        bands = encoder.num_freq_patches
        per_block = encoder.cfg.embed_dim * (bands if cfg.freq_pooling == "concat" else 1)
        self.head = SEDHead(per_block * len(self.blocks), cfg)

    def column_features(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """Fbank ``(B, T, F)`` -> per-column features ``(B, T', D')``; ``valid (B, T')`` masks padding columns
        out of attention."""
        tokens = self.encoder.embed(x)
        b = tokens.shape[0]
        t, f = self.encoder.grid(x.shape[-2])
        mask = None if valid is None else (~valid.bool()).repeat_interleave(f, dim=1)
        outs = self.encoder.forward_tokens(tokens, mask, blocks=self.blocks)
        extra = self.encoder.cfg.num_extra_tokens
        feats = []
        for o in outs:
            grid = o[:, extra:].reshape(b, t, f, -1)
            feats.append(grid.mean(2) if self.cfg.freq_pooling == "mean" else grid.flatten(2))
        return torch.cat(feats, -1) if len(feats) > 1 else feats[0]

    def forward(self, x: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.head(self.column_features(x, valid), valid)


def sed_head_spec(cfg: SEDConfig) -> dict:
    """The head record of an SED export's ``config.json`` (``eat.export``)."""
    return {"num_classes": cfg.num_classes, "prediction_mode": "sed",
            "sed": {k: getattr(cfg, k) for k in ("hop", "freq_pooling", "layers", "gru_hidden", "gru_layers",
                                                  "dropout")}}
