"""Start an AST / PaSST encoder from an ImageNet ViT (timm / DeiT state dict).

What changes between an image ViT and an audio one:

* **Patch kernel.** The RGB kernel ``(D, 3, k, k)`` is summed over its colour axis, which equals feeding
  the mono spectrogram replicated into three channels (AST and PaSST do this; their papers say
  "average"). An image kernel is ``(row, column)``; AST/PaSST feed ``(freq, time)`` images, so rows are
  frequency and columns time. Our encoder reads ``(time, freq)`` inputs, hence the kernel is transposed
  in its last two axes. The stride is whatever the encoder config says (10 for AST/PaSST).
* **Positions.** DeiT's table is ``(1, E + G*G, D)``: E token rows (CLS, distillation) then a ``G x G``
  grid (24 x 24 for 384-px models), rows = frequency, columns = time. The token rows become our
  ``token_pos``; the grid is resized to our (F', T') patch grid either
  - the AST way (``learned_joint``): per axis, time first then frequency, centre-crop when the target is
    no larger than G, bilinear interpolation when it is larger; or
  - the PaSST way (``learned_separate``): bicubic resize of the whole grid to (F', T'), then the
    frequency table is the mean over time and the time table the mean over frequency.
  Both then flatten to our time-major order (token ``t * F' + f``).
* **Tokens, blocks, final norm** copy over by name; DeiT's classification heads are dropped.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from eat.config import ConfigError
from eat.model.vit import EncoderConfig


def _crop_or_resize(grid: Tensor, size: int, axis: int) -> Tensor:
    """AST rule along one axis of a (1, D, H, W) grid: centre crop to ``size`` or bilinear stretch."""
    length = grid.shape[axis]
    if size <= length:
        start = length // 2 - size // 2
        return grid.narrow(axis, start, size)
    target = list(grid.shape[2:])
    target[axis - 2] = size
    return F.interpolate(grid, size=tuple(target), mode="bilinear", align_corners=False)


def adapt_patch_kernel(weight: Tensor) -> Tensor:
    """``(D, C, rows=freq, cols=time)`` image kernel -> our ``(D, 1, time, freq)`` mono kernel."""
    return weight.sum(1, keepdim=True).transpose(-1, -2).contiguous()


def _image_grid(pos: Tensor, extra: int) -> tuple[Tensor, Tensor]:
    """Split DeiT's ``(1, E + G*G, D)`` table into token rows and a ``(1, D, G, G)`` grid."""
    n = pos.shape[1] - extra
    side = math.isqrt(n)
    if side * side != n:
        raise ConfigError(f"pos_embed: {n} grid rows after {extra} token rows is not a square grid")
    return pos[:, :extra], pos[:, extra:].reshape(1, side, side, -1).permute(0, 3, 1, 2)


def from_imagenet_vit(state_dict: dict[str, Tensor], cfg: EncoderConfig) -> dict[str, Tensor]:
    """Encoder state dict (our names) for ``cfg`` built from a timm/DeiT ViT ``state_dict``.

    The result loads strictly into ``Encoder(cfg)`` (e.g. ``classifier.encoder``); the head stays fresh.

    ``cfg`` must be a pre-LN ViT with learned positions (the AST / PaSST presets): ``learned_joint``
    uses the AST resize rule, ``learned_separate`` the PaSST rule (see the module docstring). Shapes
    that do not fit (embedding width, depth, token count) raise :class:`ConfigError` naming the key.
    """
    if cfg.pos_embed not in ("learned_joint", "learned_separate") or not cfg.layer_norm_first:
        raise ConfigError("from_imagenet_vit needs a pre-LN encoder with learned_joint or learned_separate positions")
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    token_names = [n for n in ("cls_token", "dist_token") if n in sd][: cfg.num_extra_tokens]
    if len(token_names) != cfg.num_extra_tokens:
        raise ConfigError(f"cls_token/dist_token: the checkpoint has {len(token_names)}, the encoder needs {cfg.num_extra_tokens}")
    image_tokens = sum(n in sd for n in ("cls_token", "dist_token"))
    grid_t, grid_f = _grid(cfg)

    out: dict[str, Tensor] = {
        "patch_embed.weight": adapt_patch_kernel(_get(sd, "patch_embed.proj.weight")),
        "patch_embed.bias": _get(sd, "patch_embed.proj.bias").clone(),
    }
    if token_names:
        out["extra_tokens"] = torch.cat([_get(sd, n) for n in token_names], dim=1).clone()
    tokens, grid = _image_grid(_get(sd, "pos_embed"), image_tokens)  # grid (1, D, rows=freq, cols=time)
    if cfg.extra_token_pos:
        out["token_pos"] = tokens[:, : cfg.num_extra_tokens].clone()
    if cfg.pos_embed == "learned_joint":
        grid = _crop_or_resize(grid, grid_t, axis=3)
        grid = _crop_or_resize(grid, grid_f, axis=2)
        out["pos_embed"] = grid.permute(0, 3, 2, 1).reshape(1, grid_t * grid_f, -1).contiguous()  # (t, f) rows
    else:
        grid = F.interpolate(grid, size=(grid_f, cfg.max_time_patches), mode="bicubic", align_corners=False)
        out["freq_pos"] = grid.mean(3).transpose(1, 2).contiguous()  # (1, F', D)
        out["time_pos"] = grid.mean(2).transpose(1, 2).contiguous()  # (1, T', D)
    _get(sd, f"blocks.{cfg.depth - 1}.norm1.weight")  # deep enough
    for key, value in sd.items():
        if key.startswith("blocks.") and int(key.split(".")[1]) < cfg.depth:
            out[key] = value.clone()
    if cfg.final_norm:
        out["norm.weight"], out["norm.bias"] = _get(sd, "norm.weight").clone(), _get(sd, "norm.bias").clone()
    _check_width(out, cfg)
    return out


def _grid(cfg: EncoderConfig) -> tuple[int, int]:
    p, (st, sf) = cfg.patch_size, cfg.patch_stride
    return (cfg.target_length - p) // st + 1, (cfg.num_mel_bins - p) // sf + 1


def _get(sd: dict[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise ConfigError(f"ImageNet checkpoint has no '{key}'")
    return sd[key]


def _check_width(out: dict[str, Tensor], cfg: EncoderConfig) -> None:
    width = out["patch_embed.weight"].shape[0]
    if width != cfg.embed_dim:
        raise ConfigError(f"patch_embed.proj.weight: checkpoint width {width} != encoder embed_dim {cfg.embed_dim}")
    if out["patch_embed.weight"].shape[-1] != cfg.patch_size:
        raise ConfigError(f"patch_embed.proj.weight: kernel {out['patch_embed.weight'].shape[-1]} != patch_size {cfg.patch_size}")
