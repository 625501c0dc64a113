"""Vision-Transformer encoder for (B, T, F) spectrograms.

One file holds the whole encoder: the conv patch embedding with its own time/frequency stride, three kinds
of positional encoding, the attention/MLP block in both LayerNorm placements, drop path and the
token-dropping entry point used by masked pretraining.

* ``layer_norm_first=False`` is EAT/data2vec 2.0: post-LN blocks ``h = LN1(x + attn(x))``,
  ``out = LN2(h + mlp(h))``, a LayerNorm on ``[CLS; patches]`` before the first block (``pre_norm``) and
  none after the last one.
* ``layer_norm_first=True`` is the timm/AST/PaSST block ``x = x + attn(LN1(x))``, ``x = x + mlp(LN2(x))``
  followed by a final LayerNorm (``final_norm``). The official EAT code's pre-LN branch adds the MLP output
  twice instead of adding the residual (a bug no released model exercises); it is not reproduced here.

Tokens are time-major: patch ``n = t * F' + f`` for a ``(T', F')`` patch grid. Extra tokens (CLS, then an
optional distillation token) come first. Every block also returns its FFN output (pre-residual, and for
post-LN blocks pre-LN2): EAT's teacher builds its targets from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eat.config import ConfigError

PosEmbedKind = Literal["sincos", "learned_joint", "learned_separate"]


@dataclass
class EncoderConfig:
    """Shape and options of an :class:`Encoder`; plain values only, so it round-trips through JSON.

    ``patch_stride`` is (time, freq). ``target_length`` is the number of frames the model is built for (it
    sizes the ``learned_joint`` table); ``max_time_patches`` is the time length of the ``sincos`` and
    ``learned_separate`` tables (EAT: 768 patches = 12,288 frames). ``extra_token_std`` is the init std
    of the extra tokens: 1.0 is EAT's N(0, 1) CLS; timm/DeiT use 0.02. ``drop_path`` is the rate of the
    last block, rising linearly from 0 at the first.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    patch_stride: tuple[int, int] = (16, 16)
    in_chans: int = 1
    num_mel_bins: int = 128
    target_length: int = 1024
    pos_embed: PosEmbedKind = "sincos"
    max_time_patches: int = 768
    num_extra_tokens: int = 1
    extra_token_pos: bool = False
    extra_token_std: float = 1.0
    layer_norm_first: bool = False
    pre_norm: bool = True
    final_norm: bool = False
    norm_eps: float = 1e-6
    qkv_bias: bool = True
    drop_path: float = 0.0
    attn_drop: float = 0.0
    proj_drop: float = 0.0

    def __post_init__(self) -> None:
        for key in ("embed_dim", "num_heads", "patch_size", "in_chans", "num_mel_bins", "target_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("mlp_ratio", "norm_eps"):
            if not getattr(self, key) > 0:  # also refuses NaN
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        for key in ("drop_path", "attn_drop", "proj_drop"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key}: must lie in [0, 1), got {getattr(self, key)}")
        self.patch_stride = tuple(int(s) for s in self.patch_stride)  # JSON gives a list
        if len(self.patch_stride) != 2 or min(self.patch_stride) < 1:
            raise ConfigError(f"patch_stride must be two positive ints (time, freq), got {self.patch_stride}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.pos_embed == "sincos" and self.embed_dim % 4:
            raise ConfigError(f"sincos positions need embed_dim divisible by 4, got {self.embed_dim}")
        if self.pos_embed not in ("sincos", "learned_joint", "learned_separate"):
            raise ConfigError(f"pos_embed: {self.pos_embed!r} is not one of sincos, learned_joint, learned_separate")
        if self.num_mel_bins < self.patch_size or self.target_length < self.patch_size:
            raise ConfigError(
                f"num_mel_bins ({self.num_mel_bins}) and target_length ({self.target_length}) must be at least "
                f"patch_size ({self.patch_size})"
            )
        if self.num_extra_tokens < 0 or self.max_time_patches < 1 or self.depth < 0:
            raise ConfigError("num_extra_tokens and depth must be >= 0 and max_time_patches >= 1")


def sincos_2d(embed_dim: int, time_patches: int, freq_patches: int) -> Tensor:
    """EAT's fixed 2-D sin-cos table, ``(time_patches * freq_patches, embed_dim)`` float32, time-major rows.

    Channels ``[0, D/2)`` encode the frequency index f and ``[D/2, D)`` the time index t (the official
    layout); each half is ``[sin(p w_k) for k < D/4] + [cos(p w_k) for k < D/4]`` with
    ``w_k = 10000^(-k / (D/4))``. Evaluated in float64 and rounded once.
    """
    quarter = embed_dim // 4
    omega = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)

    def half(pos: Tensor) -> Tensor:
        angles = pos[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    t = torch.arange(time_patches, dtype=torch.float64).repeat_interleave(freq_patches)
    f = torch.arange(freq_patches, dtype=torch.float64).repeat(time_patches)
    return torch.cat([half(f), half(t)], dim=1).float()


def gather_tokens(tokens: Tensor, keep_ids: Tensor) -> Tensor:
    """Visible tokens for every masked view: ``tokens`` (B, N, D), ``keep_ids`` (R, V) -> (R, V, D).

    Rows are sample-major (``r = b * C + c`` with ``C = R // B``), so this equals
    ``tokens.repeat_interleave(C, 0)`` followed by a gather, without building the (R, N, D) copy.
    """
    batch, rows = tokens.shape[0], keep_ids.shape[0]
    if rows % batch:
        raise ValueError(f"keep_ids has {rows} rows, not a multiple of the batch size {batch}")
    item = torch.arange(rows, device=tokens.device) // (rows // batch)
    return tokens[item[:, None], keep_ids]


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate`` (training only)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and PyTorch SDPA (scale 1/sqrt(head_dim))."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, d)))


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear."""

    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Transformer block; returns ``(output, ffn_output)`` where ffn_output is the MLP result before the
    residual add (and before LN2 in the post-LN form)."""

    def __init__(self, cfg: EncoderConfig, drop_path_rate: float):
        super().__init__()
        dim = cfg.embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.drop_path = drop_path_rate
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop, cfg.proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.proj_drop)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.layer_norm_first:
            x = x + drop_path(self.attn(self.norm1(x), attn_mask), self.drop_path, self.training)
            ffn = self.mlp(self.norm2(x))
            return x + drop_path(ffn, self.drop_path, self.training), ffn
        h = self.norm1(x + drop_path(self.attn(x, attn_mask), self.drop_path, self.training))
        ffn = self.mlp(h)
        return self.norm2(h + drop_path(ffn, self.drop_path, self.training)), ffn


class Encoder(nn.Module):
    """Patch embedding + positional encoding + extra tokens + transformer blocks.

    Parameter names: ``patch_embed`` (Conv2d), ``extra_tokens`` (1, E, D), ``pos_embed`` (sincos: fixed,
    ``requires_grad=False``, rows for ``max_time_patches x F'``; learned_joint: the built grid),
    ``time_pos`` (1, T'max, D) and ``freq_pos`` (1, F', D) for learned_separate, ``token_pos`` (1, E, D)
    when ``extra_token_pos``, ``pre_norm``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
    ``norm`` (final).

    Init: Linear N(0, 0.02) with zero bias (BERT-style, as the official ``init_bert_params``), patch conv
    weight xavier-uniform on its (D, in*k*k) view with PyTorch's default bias, extra tokens
    N(0, ``extra_token_std``) (EAT: N(0, 1)), learned tables truncated N(0, 0.02), LayerNorm 1/0.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = nn.Conv2d(
            cfg.in_chans, dim, kernel_size=cfg.patch_size, stride=cfg.patch_stride
        )
        self.num_freq_patches = self.grid(cfg.target_length)[1]
        self.extra_tokens = nn.Parameter(torch.zeros(1, cfg.num_extra_tokens, dim)) if cfg.num_extra_tokens else None
        self.token_pos = nn.Parameter(torch.zeros(1, cfg.num_extra_tokens, dim)) if cfg.extra_token_pos else None
        self.pos_embed = self.time_pos = self.freq_pos = None
        if cfg.pos_embed == "sincos":
            table = sincos_2d(dim, cfg.max_time_patches, self.num_freq_patches)
            self.pos_embed = nn.Parameter(table[None], requires_grad=False)
        elif cfg.pos_embed == "learned_joint":
            t, f = self.grid(cfg.target_length)
            self.pos_embed = nn.Parameter(torch.zeros(1, t * f, dim))
        else:
            self.time_pos = nn.Parameter(torch.zeros(1, cfg.max_time_patches, dim))
            self.freq_pos = nn.Parameter(torch.zeros(1, self.num_freq_patches, dim))
        self.pre_norm = nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.pre_norm else None
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.final_norm else None
        self.reset_parameters()

    # ---------------------------------------------------------------- init and bookkeeping
    def reset_parameters(self) -> None:
        """(Re-)initialise every trainable tensor as described in the class docstring."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        self.patch_embed.reset_parameters()
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        if self.extra_tokens is not None:
            nn.init.normal_(self.extra_tokens, std=self.cfg.extra_token_std)
        for table in (self.token_pos, self.time_pos, self.freq_pos):
            if table is not None:
                nn.init.trunc_normal_(table, std=0.02)
        if self.cfg.pos_embed == "learned_joint":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters usually exempt from weight decay: 1-D tensors, extra tokens, position tables."""
        tables = {"extra_tokens", "token_pos", "pos_embed", "time_pos", "freq_pos"}
        return {n for n, p in self.named_parameters() if p.dim() <= 1 or n in tables}

    def columns_for_frames(self, frames: Tensor) -> Tensor:
        """Time columns needed to cover ``frames`` frames (at least one): the last column may be part padding."""
        p, st = self.cfg.patch_size, self.cfg.patch_stride[0]
        return torch.div((frames - p).clamp_min(0) + st - 1, st, rounding_mode="floor") + 1

    def grid(self, num_frames: int) -> tuple[int, int]:
        """Patch grid (T', F') for ``num_frames`` frames, from the conv output-size formula."""
        p, (st, sf) = self.cfg.patch_size, self.cfg.patch_stride
        if num_frames < p:
            raise ValueError(f"input has {num_frames} frames, fewer than the patch size {p}")
        return (num_frames - p) // st + 1, (self.cfg.num_mel_bins - p) // sf + 1

    # ---------------------------------------------------------------- positions and embedding
    def pos_encoding(self, time_patches: int, time_offset: int | None = None) -> Tensor:
        """Positional encodings (1, time_patches * F', D) for a time window of the table.

        ``time_offset`` (in patches) picks the window start; ``None`` means 0, except for
        ``learned_separate`` in training mode, which draws a random start (PaSST's time-window training).
        """
        fp = self.num_freq_patches
        if self.cfg.pos_embed == "learned_separate":
            table_len = self.time_pos.shape[1]
        else:
            table_len = self.pos_embed.shape[1] // fp
        if time_patches > table_len:
            raise ValueError(
                f"input has {time_patches} time patches but the {self.cfg.pos_embed} positional table covers "
                f"only {table_len}; crop the input or build the encoder with a longer table"
            )
        if time_offset is None and self.cfg.pos_embed == "learned_separate" and self.training:
            # the window start is drawn and used on the table's device: no value is read on the host
            start = torch.randint(0, table_len - time_patches + 1, (), device=self.time_pos.device)
            rows = start + torch.arange(time_patches, device=self.time_pos.device)
            time = self.time_pos.index_select(1, rows)[:, :, None, :]
            return (time + self.freq_pos[:, None, :, :]).flatten(1, 2)
        time_offset = 0 if time_offset is None else time_offset
        if not 0 <= time_offset <= table_len - time_patches:
            raise ValueError(f"time_offset {time_offset} + {time_patches} patches exceeds the table ({table_len})")
        if self.cfg.pos_embed == "learned_separate":
            time = self.time_pos[:, time_offset : time_offset + time_patches, None, :]
            return (time + self.freq_pos[:, None, :, :]).flatten(1, 2)
        return self.pos_embed[:, time_offset * fp : (time_offset + time_patches) * fp]

    def embed(self, x: Tensor, time_offset: int | None = None) -> Tensor:
        """Spectrogram (B, T, F) or (B, 1, T, F) -> patch tokens (B, T'*F', D) with positions added."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != self.cfg.in_chans or x.shape[-1] != self.cfg.num_mel_bins:
            raise ValueError(
                f"expected input (B, T, {self.cfg.num_mel_bins}) or (B, {self.cfg.in_chans}, T, "
                f"{self.cfg.num_mel_bins}), got {tuple(x.shape)}"
            )
        if x.shape[2] < self.cfg.patch_size:
            raise ValueError(f"input has {x.shape[2]} frames, fewer than the patch size {self.cfg.patch_size}")
        x = self.patch_embed(x)  # (B, D, T', F')
        time_patches = x.shape[2]
        x = x.flatten(2).transpose(1, 2)  # (B, T'*F', D), time-major
        return x + self.pos_encoding(time_patches, time_offset).to(x.dtype)

    # ---------------------------------------------------------------- transformer
    def forward_tokens(
        self, tokens: Tensor, padding_mask: Tensor | None = None, return_ffn: bool = False,
        blocks: Sequence[int] | None = None,
    ) -> Tensor | list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Run already-embedded (and possibly already-gathered) patch tokens (B, N, D) through the stack.

        Prepends the extra tokens, applies the pre-norm, the blocks and the final norm. ``padding_mask``
        (B, N) or (B, E+N), True = padding, removes those tokens as attention keys. With ``return_ffn``
        also returns the list of every block's FFN output (B, E+N, D). ``blocks`` (non-negative block
        indices) returns instead the list of those blocks' outputs (B, E+N, D), in that order; the last
        block's output is taken after the final norm, so ``blocks=[depth - 1]`` is the usual output.
        """
        b = tokens.shape[0]
        if self.extra_tokens is not None:
            extra = self.extra_tokens.expand(b, -1, -1)
            if self.token_pos is not None:
                extra = extra + self.token_pos
            tokens = torch.cat([extra.to(tokens.dtype), tokens], dim=1)
        attn_mask = None if padding_mask is None else self._attention_mask(padding_mask, tokens.shape[1])
        x = self.pre_norm(tokens) if self.pre_norm is not None else tokens
        ffn_outputs = []
        captured: dict[int, Tensor] = {}
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x, ffn = block(x, attn_mask)
            if return_ffn:
                ffn_outputs.append(ffn)
            if blocks is not None and i != last:
                captured[i] = x
        if self.norm is not None:
            x = self.norm(x)
        if blocks is not None:
            captured[last] = x
            return [captured[i] for i in blocks]
        return (x, ffn_outputs) if return_ffn else x

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        time_offset: int | None = None,
        keep_ids: Tensor | None = None,
        return_ffn: bool = False,
        blocks: Sequence[int] | None = None,
    ) -> Tensor | list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Spectrogram -> output tokens (B, E + T'*F', D), extra tokens first.

        ``keep_ids`` (R, V), R a multiple of B (sample-major clones, e.g. from ``mask_to_keep_ids``):
        embed once, then run only those patch tokens of every row -> (R, E + V, D). ``padding_mask`` refers
        to the tokens that run; ``blocks`` as in :meth:`forward_tokens`. Wrappers such as FSDP2 gather parameters only around ``forward``, so code
        that may run sharded calls this rather than ``embed`` + ``forward_tokens``.
        """
        tokens = self.embed(x, time_offset)
        if keep_ids is not None:
            tokens = gather_tokens(tokens, keep_ids)
        return self.forward_tokens(tokens, padding_mask, return_ffn, blocks)

    def _attention_mask(self, padding_mask: Tensor, seq_len: int) -> Tensor:
        extra = self.cfg.num_extra_tokens
        if padding_mask.dim() != 2 or padding_mask.shape[1] not in (seq_len, seq_len - extra):
            raise ValueError(
                f"padding_mask must be (B, {seq_len - extra}) or (B, {seq_len}), got {tuple(padding_mask.shape)}"
            )
        keep = ~padding_mask.bool()
        if keep.shape[1] != seq_len:
            keep = F.pad(keep, (extra, 0), value=True)
        return keep[:, None, None, :]  # SDPA: True = may attend


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter values in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
