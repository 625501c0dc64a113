"""Audio classifier: an :class:`~eat.model.vit.Encoder` plus a pooling head, with PaSST patchout.

Heads (``prediction_mode``):

* ``cls`` (EAT): output token 0 -> ``fc_norm`` (LayerNorm) -> ``head`` (Linear).
* ``mean``: mean of the patch-token outputs (padding tokens excluded) -> ``fc_norm`` -> ``head``.
* ``cls_dist`` (AST / PaSST): mean of the CLS and distillation outputs -> ``fc_norm`` -> ``head``.
* ``pooled``: the frozen-feature probe's embedding made trainable: the patch tokens of the blocks named by
  ``layers`` (a layer spec, :func:`eat.model.pooling.parse_layers`) are each pooled by ``pooling`` (one of
  :data:`eat.model.pooling.TOKEN_POOLINGS`, padding excluded) and concatenated -> ``fc_norm`` (a
  :class:`Standardize` with fixed per-dimension mean and std, identity until set) -> ``head``. With the
  statistics and weights of a fitted :class:`eat.eval.probe.LinearModel` loaded (LP-FT, see
  :mod:`eat.train.finetune`) the classifier computes exactly that probe's logits.

The names ``encoder.*``, ``fc_norm.*`` and ``head.*`` are those of the official EAT fine-tuned checkpoint
after key conversion, so ``Classifier.load_state_dict`` takes it as is. AST's ``mlp_head.0/1`` and
PaSST's ``head.0/1`` are the same LayerNorm + Linear pair under other names.

Patchout (training only) drops patch tokens after the positional encoding was added and before the
first block, so the kept tokens carry their true (time, frequency) positions and every block runs on a
shorter sequence. Structured patchout removes ``s_t`` whole time columns and ``s_f`` whole frequency
rows of the (T', F') grid, unstructured patchout then removes ``u`` single tokens; the kept indices are
sorted (ascending time-major order). PaSST draws one index set per forward call for the whole batch
(default); ``patchout_per_example`` draws one per example.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from eat.config import ConfigError
from eat.model.eat import eat_config  # the pretraining presets define the encoder shapes
from eat.model.pooling import TOKEN_POOLINGS, check_pooling, parse_layers, pool_tokens, pooled_dim
from eat.model.vit import Encoder, EncoderConfig

PredictionMode = Literal["cls", "mean", "cls_dist", "pooled"]


@dataclass
class PatchoutConfig:
    """Numbers of patches *removed* in training: time columns, frequency rows, single tokens."""

    s_t: int = 0
    s_f: int = 0
    u: int = 0
    per_example: bool = False

    @property
    def active(self) -> bool:
        return self.s_t > 0 or self.s_f > 0 or self.u > 0


@dataclass
class ClassifierConfig:
    """Encoder shape, head and training-time options of a :class:`Classifier`.

    ``drop_path`` replaces the encoder's own rate (linear from 0 at the first block to this value at the
    last; EAT fine-tuning uses 0.1). ``head_norm_eps``: EAT 1e-6; AST/PaSST use PyTorch's default 1e-5.
    ``layers`` / ``pooling``: the blocks and the token pooling of the ``pooled`` head (ignored by the others).
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    num_classes: int = 527
    prediction_mode: PredictionMode = "cls"
    head_norm_eps: float = 1e-6
    drop_path: float = 0.0
    patchout: PatchoutConfig = field(default_factory=PatchoutConfig)
    layers: str = "-1"
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be positive, got {self.num_classes}")
        if self.prediction_mode not in ("cls", "mean", "cls_dist", "pooled"):
            raise ConfigError(f"unknown prediction_mode {self.prediction_mode!r}; choose cls, mean, cls_dist or pooled")
        if self.prediction_mode == "pooled":
            try:
                check_pooling(self.pooling)
                parse_layers(self.layers, self.encoder.depth)
            except ValueError as e:
                raise ConfigError(f"{'pooling' if self.pooling not in TOKEN_POOLINGS else 'layers'}: {e}") from None
            if self.pooling.startswith("band-") and (self.patchout.s_f > 0 or self.patchout.u > 0):
                raise ConfigError(f"pooling {self.pooling!r} pools per frequency band of the whole patch grid; "
                                  "patchout may only remove time columns (s_t), set s_f and u to 0")
        need = {"cls": 1, "cls_dist": 2, "mean": 0, "pooled": 0}[self.prediction_mode]
        if self.encoder.num_extra_tokens < need:
            raise ConfigError(
                f"prediction_mode {self.prediction_mode!r} needs {need} extra token(s), the encoder has "
                f"num_extra_tokens={self.encoder.num_extra_tokens}"
            )
        for key in ("s_t", "s_f", "u"):
            if getattr(self.patchout, key) < 0:
                raise ConfigError(f"patchout.{key} must be >= 0, got {getattr(self.patchout, key)}")


def _random_subset(rows: int, n: int, k: int, device: torch.device) -> Tensor:
    """``rows`` independent random k-subsets of range(n), each sorted ascending: (rows, k) long."""
    return torch.rand(rows, n, device=device).argsort(dim=1)[:, :k].sort(dim=1).values


def patchout_ids(
    grid: tuple[int, int], cfg: PatchoutConfig, batch: int, device: torch.device | str = "cpu"
) -> Tensor:
    """Indices of the kept patch tokens, ``(1, K)`` (shared by the batch) or ``(batch, K)`` (per example).

    Indices are time-major grid positions ``t * F' + f`` in ascending order. The removal counts are
    clamped so at least one column, one row and one token survive.
    """
    tp, fp = grid
    rows = batch if cfg.per_example else 1
    device = torch.device(device)
    s_t, s_f = min(cfg.s_t, tp - 1), min(cfg.s_f, fp - 1)
    keep_t = _random_subset(rows, tp, tp - s_t, device)  # time first, then frequency, as PaSST
    keep_f = _random_subset(rows, fp, fp - s_f, device)
    ids = (keep_t[:, :, None] * fp + keep_f[:, None, :]).flatten(1)
    u = min(cfg.u, ids.shape[1] - 1)
    if u > 0:
        ids = ids.gather(1, _random_subset(rows, ids.shape[1], ids.shape[1] - u, device))
    return ids


def take_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """Select tokens ``ids`` ((1, K) shared or (B, K)) from ``x`` (B, N, ...) -> (B, K, ...)."""
    if ids.shape[0] == 1:
        return x[:, ids[0]]
    index = ids.view(*ids.shape, *([1] * (x.dim() - 2))).expand(*ids.shape, *x.shape[2:])
    return x.gather(1, index)


class Classifier(nn.Module):
    """Encoder + pooling head; ``forward(x)`` returns logits ``(B, num_classes)``.

    Pass ``encoder`` to wrap an existing (e.g. pretrained, exported) encoder; its own config then replaces
    ``cfg.encoder`` and its blocks get ``cfg.drop_path``.
    """

    def __init__(self, cfg: ClassifierConfig, encoder: Encoder | None = None):
        super().__init__()
        if encoder is None:
            encoder = Encoder(dataclasses.replace(cfg.encoder, drop_path=cfg.drop_path))
        else:
            set_drop_path(encoder, cfg.drop_path)
        self.cfg = dataclasses.replace(cfg, encoder=encoder.cfg)
        self.encoder = encoder
        dim = encoder.cfg.embed_dim
        if cfg.prediction_mode == "pooled":
            self.blocks = parse_layers(cfg.layers, len(encoder.blocks))
            dim = len(self.blocks) * pooled_dim(cfg.pooling, dim, encoder.num_freq_patches)
            self.fc_norm: nn.Module = Standardize(dim)
        else:
            self.fc_norm = nn.LayerNorm(dim, eps=cfg.head_norm_eps)
        self.head = nn.Linear(dim, cfg.num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def features(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Pooled encoder output ``(B, D)`` (before ``fc_norm``); patchout applies in training mode.

        ``padding_mask`` ``(B, N)`` over the patch tokens, True = padding (see :meth:`padding_mask`)."""
        tokens = self.encoder.embed(x)
        patchout = self.cfg.patchout
        if padding_mask is not None:
            padding_mask = padding_mask[:, -tokens.shape[1]:]
        if self.training and patchout.active:
            ids = patchout_ids(self.encoder.grid(x.shape[-2]), patchout, tokens.shape[0], tokens.device)
            tokens = take_tokens(tokens, ids)
            if padding_mask is not None:
                padding_mask = take_tokens(padding_mask, ids)
        if self.cfg.prediction_mode == "pooled":
            extra, bands = self.encoder.cfg.num_extra_tokens, self.encoder.num_freq_patches
            outs = self.encoder.forward_tokens(tokens, padding_mask, blocks=self.blocks)
            return torch.cat([pool_tokens(o[:, extra:], padding_mask, self.cfg.pooling, bands) for o in outs], 1)
        out = self.encoder.forward_tokens(tokens, padding_mask)
        return self.pool(out, padding_mask)

    def padding_mask(self, frames: Tensor, total_frames: int) -> Tensor:
        """Patch-token padding mask ``(B, T'*F')`` (True = padding) of inputs of ``total_frames`` frames whose
        clips hold ``frames (B,)`` valid frames: the time columns past the clip's last (partly) valid one,
        as :class:`eat.features.FeatureExtractor` masks them."""
        t, f = self.encoder.grid(total_frames)
        cols = self.encoder.columns_for_frames(frames.clamp(1, total_frames))
        return (torch.arange(t, device=frames.device) >= cols[:, None]).repeat_interleave(f, dim=1)

    def pool(self, out: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Reduce encoder outputs ``(B, E + N, D)`` to ``(B, D)`` as ``prediction_mode`` says."""
        mode = self.cfg.prediction_mode
        if mode == "cls":
            return out[:, 0]
        if mode == "cls_dist":
            return (out[:, 0] + out[:, 1]) / 2
        patches = out[:, self.encoder.cfg.num_extra_tokens :]
        if padding_mask is None:
            return patches.mean(1)
        keep = (~padding_mask.bool()[:, -patches.shape[1] :]).to(patches.dtype).unsqueeze(-1)
        return (patches * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.head(self.fc_norm(self.features(x, padding_mask)))


def head_spec(cfg: ClassifierConfig) -> dict:
    """The head fields an export's ``config.json`` records (``eat.export``): what rebuilds the head."""
    head = {"num_classes": cfg.num_classes, "prediction_mode": cfg.prediction_mode, "head_norm_eps": cfg.head_norm_eps}
    if cfg.prediction_mode == "pooled":
        head.update(layers=cfg.layers, pooling=cfg.pooling)
    return head


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed per-dimension statistics (buffers, saved with the model; identity
    until set): the standardisation a linear probe fits on training features, kept as a layer."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def set_drop_path(encoder: Encoder, rate: float) -> None:
    """Give ``encoder``'s blocks the linear drop-path schedule 0 -> ``rate`` (first -> last block)."""
    depth = len(encoder.blocks)
    for i, block in enumerate(encoder.blocks):
        block.drop_path = rate * i / max(depth - 1, 1)
    encoder.cfg = dataclasses.replace(encoder.cfg, drop_path=rate)


# ------------------------------------------------------------------------------------------ presets
def ast_encoder(target_length: int = 1024, stride: int = 10) -> EncoderConfig:
    """AST-base: timm/DeiT-B pre-LN ViT, 16x16 patches with stride 10 in both axes, CLS + distillation
    tokens, one learned joint positional table (tokens' own rows kept in ``token_pos``), final LayerNorm.

    1024 frames -> a 101 x 12 (time x freq) grid = 1212 patches. AST flattens its (freq, time) map
    freq-major (``f * T' + t``) and its kernels are (freq, time); ours are time-major (``t * F' + f``)
    with (time, freq) kernels, so AST's table row ``2 + f * T' + t`` is our ``pos_embed`` row
    ``t * F' + f`` and its conv weight is ours transposed in the last two axes.
    """
    return EncoderConfig(
        embed_dim=768, depth=12, num_heads=12, patch_stride=(stride, stride), target_length=target_length,
        pos_embed="learned_joint", num_extra_tokens=2, extra_token_pos=True, extra_token_std=0.02,
        layer_norm_first=True, pre_norm=False, final_norm=True, norm_eps=1e-6,
    )


def passt_encoder(target_length: int = 998, stride: int = 10) -> EncoderConfig:
    """PaSST-S: the same ViT-B with disentangled tables: ``freq_pos`` (F' rows) + ``time_pos`` (T' rows),
    added before patchout; the CLS and distillation tokens have their own vectors (``token_pos``).

    998 or 1000 frames -> 99 x 12 (time x freq) = 1188 patches. Inputs shorter than the time table use
    a random window of it in training and its start in evaluation (the encoder's ``learned_separate``).
    """
    grid_t = (target_length - 16) // stride + 1
    return EncoderConfig(
        embed_dim=768, depth=12, num_heads=12, patch_stride=(stride, stride), target_length=target_length,
        pos_embed="learned_separate", max_time_patches=grid_t, num_extra_tokens=2, extra_token_pos=True,
        extra_token_std=0.02, layer_norm_first=True, pre_norm=False, final_norm=True, norm_eps=1e-6,
    )


def eat_encoder(size: str = "base", target_length: int | None = None) -> EncoderConfig:
    """The encoder of EAT pretraining preset ``size`` (``tiny``, ``base``, ``large``): post-LN blocks,
    sin-cos positions, one CLS token, pre-norm; ``target_length`` defaults to the preset's."""
    enc = eat_config(size).encoder
    return dataclasses.replace(enc, target_length=target_length or enc.target_length)


def classifier_config(
    preset: str, num_classes: int, target_length: int | None = None, **overrides
) -> ClassifierConfig:
    """A :class:`ClassifierConfig` for ``ast_base``, ``passt_s`` or ``eat_<size>`` (``eat_base``,
    ``eat_tiny``, ...; a bare size such as ``tiny`` means ``eat_tiny``)."""
    if preset == "ast_base":
        enc = ast_encoder(target_length or 1024)
        base = dict(prediction_mode="cls_dist", head_norm_eps=1e-5)
    elif preset == "passt_s":
        enc = passt_encoder(target_length or 998)
        base = dict(prediction_mode="cls_dist", head_norm_eps=1e-5)
    else:
        size = preset.removeprefix("eat_")
        try:
            enc = eat_encoder(size, target_length)
        except ConfigError:
            raise ConfigError(f"unknown classifier preset {preset!r}; choose ast_base, passt_s or eat_<size>") from None
        base = dict(prediction_mode="cls", head_norm_eps=1e-6, drop_path=0.1)
    return ClassifierConfig(encoder=enc, num_classes=num_classes, **{**base, **overrides})
