"""EAT pretraining model: student encoder, CNN decoder, EMA teacher and the utterance-frame objective.

One training forward (``EATModel.forward(source, mask)``), for B clips and C masked clones per clip:

1. Teacher (EMA copy of the whole student encoder, fp32 weights, eval mode, no grad) runs once per clip on
   the unmasked input. Targets: for each of the top-K blocks take its FFN output (pre-residual, pre-LN2),
   drop the extra tokens, instance-normalise every channel over the tokens (eps 1e-5, fp32), average the
   K layers, then a parameter-free LayerNorm over channels (eps 1e-5) -> ``y`` (B, N, D). The utterance
   target is ``y`` averaged over tokens.
2. Student: patch embedding + positions once per clip, then only the visible tokens of each clone
   (ascending grid order) go through the blocks with the CLS token prepended: (B*C, 1+V, D).
3. Decoder input (B*C, N, D) on the full grid: student outputs (CLS dropped) at their grid positions,
   N(0, ``mask_noise_std``) noise at the masked ones; the decoder predicts ``y`` at the masked positions.
4. Losses, both scaled by ``loss_scale`` (default 1/sqrt(D)), computed in fp32:
   ``frame_loss`` = mean over masked tokens of sum over channels of (pred - y)^2 * scale;
   per-clone CLS error = sum over channels of (student CLS output - utterance target)^2 * scale.

Reductions (``utterance_reduction``):

* ``"official"`` reproduces fairseq's EAT exactly: its criterion sums the frame-error tensor and the
  CLS-error tensor multiplied by ``cls_loss * sample_size`` and divides everything by
  ``sample_size`` = number of masked tokens, so
  ``loss = frame_loss_weight * frame_loss + cls_loss_weight * SUM over the clones of the CLS error``.
  The CLS term therefore grows with the per-device batch (192 clones per GPU in the official setup).
  With data-parallel gradient averaging over equal-sized ranks this is also the official multi-GPU loss.
* ``"mean"`` averages the CLS error over the clones instead, so the loss does not depend on the batch size.

``utterance_loss`` in the output is the reduced CLS term (sum or mean) before ``cls_loss_weight``.

Mixture pretraining (SSLAM stage 2, ``mix=True``; :mod:`eat.model.mixing`, docs/design.md): the B clips are
followed by B partial mixtures (clip b with clip b-1 over all but two clean windows, rows given by
``mix_rows``), each using its own clip's masks, so 2B inputs of ``clone_batch`` clones each. The teacher runs
on all 2B inputs (the frame and CLS targets of each input, as in EAT) and once more on every partner's mixed
tokens alone; the ``retention_loss`` (weight ``retention_loss_weight``) is the frame loss of the mixtures'
clones against :func:`~eat.model.mixing.retention_target`, averaged over their masked tokens.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eat.config import ConfigError, from_dict
from eat.model.decoder import CNNDecoder
from eat.model.masking import inverse_block_mask, mask_to_ids, visible_count
from eat.model.mixing import (
    OFFICIAL_CLEAN_FRACTION,
    clean_rows,
    draw_mix_rows_batch,
    mix_spectrograms,
    mixed_tokens,
    partner,
    retention_loss,
)
from eat.model.vit import Encoder, EncoderConfig


@dataclass
class EATConfig:
    """EAT pretraining settings; field names follow the official config where one exists.

    ``instance_norm_target_layer`` / ``layer_norm_targets`` are the two target normalisations the official
    recipe switches on (per-layer instance norm over tokens, final LayerNorm over channels).
    EMA decay anneals linearly from ``ema_decay`` to ``ema_end_decay`` over ``ema_anneal_end_step`` updates.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder_dim: int = 768
    decoder_groups: int = 16
    decoder_kernel: int = 3
    decoder_layers: int = 6
    clone_batch: int = 16
    mask_ratio: float = 0.8
    mask_block: int = 5
    mask_adjust: float = 0.07
    mask_noise_std: float = 0.01
    average_top_k_layers: int = 12
    instance_norm_target_layer: bool = True
    layer_norm_targets: bool = True
    cls_loss_weight: float = 1.0
    frame_loss_weight: float = 1.0
    utterance_reduction: Literal["official", "mean"] = "official"
    ema_decay: float = 0.9998
    ema_end_decay: float = 0.99999
    ema_anneal_end_step: int = 100000
    loss_scale: float | None = None
    # top blocks averaged for the utterance (CLS) target; 0 = average_top_k_layers (EAT). SSLAM's code: 1
    utterance_top_k_layers: int = 0
    # mixture pretraining (SSLAM stage 2): every batch adds partial mixtures of neighbouring clips and the
    # source retention loss (module docstring, docs/design.md "Mixture pretraining")
    mix: bool = False
    mix_clean_fraction: float = OFFICIAL_CLEAN_FRACTION  # each of the two windows without the partner
    retention_loss_weight: float = 1.0  # weight of the source retention loss (mean over masked tokens)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = from_dict(EncoderConfig, self.encoder, "encoder")
        if not 1 <= self.average_top_k_layers <= self.encoder.depth:
            raise ConfigError(
                f"average_top_k_layers must be in [1, encoder.depth={self.encoder.depth}], "
                f"got {self.average_top_k_layers}"
            )
        if self.encoder.num_extra_tokens < 1:
            raise ConfigError("EAT needs a CLS token: encoder.num_extra_tokens must be >= 1")
        if self.utterance_reduction not in ("official", "mean"):
            raise ConfigError(f"utterance_reduction: {self.utterance_reduction!r} is not one of official, mean")
        if self.clone_batch < 1 or not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError("clone_batch must be >= 1 and mask_ratio in (0, 1)")
        for key in ("decoder_dim", "decoder_groups", "decoder_kernel", "decoder_layers", "mask_block"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.decoder_dim % self.decoder_groups:
            raise ConfigError(f"decoder_dim {self.decoder_dim} is not divisible by decoder_groups {self.decoder_groups}")
        for key in ("ema_decay", "ema_end_decay"):
            if not 0.0 <= getattr(self, key) <= 1.0:  # also refuses NaN
                raise ConfigError(f"{key}: must lie in [0, 1], got {getattr(self, key)}")
        for key in ("mask_adjust", "mask_noise_std", "cls_loss_weight", "frame_loss_weight"):
            if not 0.0 <= getattr(self, key) < math.inf:
                raise ConfigError(f"{key}: must be a finite number >= 0, got {getattr(self, key)}")
        if self.ema_anneal_end_step < 0:
            raise ConfigError(f"ema_anneal_end_step: must be >= 0, got {self.ema_anneal_end_step}")
        if self.loss_scale is not None and not 0.0 < self.loss_scale < math.inf:
            raise ConfigError(f"loss_scale: must be a finite number > 0 or null, got {self.loss_scale}")
        if not 0 <= self.utterance_top_k_layers <= self.encoder.depth:
            raise ConfigError(f"utterance_top_k_layers must be in [0, encoder.depth={self.encoder.depth}], "
                              f"got {self.utterance_top_k_layers}")
        if self.mix:
            try:
                clean_rows(self.encoder.target_length // self.encoder.patch_stride[0], self.mix_clean_fraction)
            except ValueError as e:
                raise ConfigError(f"model.mix_clean_fraction: {e}") from None


PRESETS: dict[str, EATConfig] = {
    # EAT-base: 768/12/12, decoder 768 g16 k3 x6, 1024 frames x 128 mels, 16 clones, 87,840,000 params.
    "base": EATConfig(),
    # EAT-large: 1024/24/16, decoder 1024 g16 k5 x3, mask 0.75 (+0.1), all 24 layers averaged, 150k anneal.
    "large": EATConfig(
        encoder=EncoderConfig(embed_dim=1024, depth=24, num_heads=16),
        decoder_dim=1024,
        decoder_kernel=5,
        decoder_layers=3,
        mask_ratio=0.75,
        mask_adjust=0.1,
        average_top_k_layers=24,
        ema_anneal_end_step=150000,
    ),
    # CPU-sized model for tests and the demo; the shape of the official parity fixture.
    "tiny": EATConfig(
        encoder=EncoderConfig(embed_dim=96, depth=3, num_heads=4, target_length=256),
        decoder_dim=96,
        decoder_layers=2,
        clone_batch=4,
        average_top_k_layers=3,
    ),
}


def eat_config(name: str) -> EATConfig:
    """A fresh copy of a preset (``base``, ``large``, ``tiny``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown EAT preset '{name}'; known: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[name]
    return replace(preset, encoder=replace(preset.encoder))


def _spread(x: Tensor) -> Tensor:
    """Mean over channels of the per-channel std over tokens (the official pred_var / target_var)."""
    return torch.sqrt(x.reshape(-1, x.shape[-1]).float().var(dim=0) + 1e-6).mean()


class EATModel(nn.Module):
    """Student encoder + CNN decoder + EMA teacher; ``forward`` returns the loss dict (see module docstring).

    The trainer calls ``after_optimizer_step(step)`` after every optimizer update (``step`` = number of
    updates done, 1 after the first), which moves the teacher one EMA step towards the student.
    """

    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoder
        self.student = Encoder(enc)
        self.decoder = CNNDecoder(
            enc.embed_dim, cfg.decoder_dim, enc.embed_dim, cfg.decoder_groups, cfg.decoder_kernel, cfg.decoder_layers
        )
        self.teacher = copy.deepcopy(self.student).float().requires_grad_(False).eval()
        self.loss_scale = 1.0 / math.sqrt(enc.embed_dim) if cfg.loss_scale is None else cfg.loss_scale

    def train(self, mode: bool = True) -> EATModel:
        """Like ``nn.Module.train`` but the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        """Trainable parameter names usually exempt from weight decay (1-D tensors, CLS, position tables).

        The official recipe decays everything (its exemption is dead code); the engine decides.
        """
        names = {f"student.{n}" for n in self.student.no_weight_decay()}
        names |= {f"decoder.{n}" for n, p in self.decoder.named_parameters() if p.dim() <= 1}
        return {n for n, p in self.named_parameters() if n in names and p.requires_grad}

    # ---------------------------------------------------------------- masks and targets
    def make_masks(
        self, batch: int, num_frames: int, generator: torch.Generator | None = None, device=None
    ) -> Tensor:
        """Inverse block masks (batch * clone_batch, T'*F') with this config's settings (True = masked)."""
        cfg = self.cfg
        return inverse_block_mask(
            batch * cfg.clone_batch,
            self.student.grid(num_frames),
            cfg.mask_ratio,
            cfg.mask_block,
            cfg.mask_adjust,
            generator=generator,
            device=device,
        )

    def mix_clean_rows(self, num_frames: int) -> int:
        """Rows of each clean window of a mixture of ``num_frames``-frame clips (see :mod:`eat.model.mixing`)."""
        return clean_rows(self.student.grid(num_frames)[0], self.cfg.mix_clean_fraction)

    def make_mix_rows(self, batch: int, num_frames: int, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> Tensor:
        """(batch, T') bool mixed rows, one draw per clip, made on ``device`` without a host sync (in training
        the loader workers usually make them, :func:`draw_mix_rows`)."""
        time_patches, clean = self.student.grid(num_frames)[0], self.mix_clean_rows(num_frames)
        return draw_mix_rows_batch(batch, time_patches, clean, generator, device)

    @torch.no_grad()
    def targets(self, source: Tensor) -> Tensor:
        """Teacher targets ``y`` (B, N, D) in fp32 for the unmasked ``source``."""
        _, ffn = self.teacher(source, return_ffn=True)
        return self.layer_targets(ffn, self.cfg.average_top_k_layers)

    @torch.no_grad()
    def layer_targets(self, ffn: list[Tensor], top_k: int) -> Tensor:
        """Targets from the teacher's FFN outputs (each (B, E + N, D)): the top ``top_k`` blocks, extra
        tokens dropped, instance-normalised over the tokens present, averaged, layer-normalised."""
        extra = self.cfg.encoder.num_extra_tokens
        layers = ffn[-top_k:]
        y = None
        for t in layers:
            t = t[:, extra:].float()
            if self.cfg.instance_norm_target_layer:
                t = F.instance_norm(t.transpose(1, 2), eps=1e-5).transpose(1, 2)
            y = t if y is None else y + t
        y = y / len(layers)
        if self.cfg.layer_norm_targets:
            y = F.layer_norm(y, y.shape[-1:], eps=1e-5)
        return y

    # ---------------------------------------------------------------- training forward
    def forward(self, source: Tensor, mask: Tensor | None = None, noise: Tensor | None = None,
                num_visible: int | None = None, mix_rows: Tensor | None = None) -> dict[str, Tensor]:
        """One pretraining forward.

        ``source`` (B, T, F) or (B, 1, T, F); ``mask`` (B*C, N) bool, True = masked, rows ``b*C + c``
        (made with :meth:`make_masks` when None). ``noise`` (masked tokens, D) replaces the decoder's
        Gaussian noise at the masked positions, in row-major order of the mask (tests use it).

        With ``cfg.mix``, ``mix_rows`` (B, T') bool are the mixed patch rows of every mixture (drawn here with
        the global generator when None); ``mask`` and ``noise`` then cover the 2B inputs' rows (the mask of
        the B clips, reused by their mixtures; the noise of all 2B * C rows).

        Returns fp32 tensors: ``loss``, ``frame_loss``, ``utterance_loss``, (with ``mix``) ``retention_loss``,
        ``sample_size`` (masked tokens), ``pred_var`` and ``target_var`` (logging). No host synchronisation:
        the visible count V is ``num_visible`` when given; else, for a model on an accelerator, the config's
        (:func:`visible_count`: the loader's masks are made with the same settings), and the rows are
        checked by an asynchronous device assert; only on CPU is it read from the mask (free there). So
        nothing in the step reads a tensor's values on the host (``eat.apps.gpu_dryrun`` checks this).
        """
        cfg = self.cfg
        batch, num_frames = source.shape[0], source.shape[-2]
        device = source.device
        if mask is None:
            mask = self.make_masks(batch, num_frames, device=device)
        grid = self.student.grid(num_frames)
        rows, num_patches = mask.shape
        if rows % batch or num_patches != grid[0] * grid[1]:
            raise ValueError(
                f"mask {tuple(mask.shape)} does not fit {batch} clips of {num_frames} frames "
                f"(needs (B*clones, {grid[0] * grid[1]}))"
            )
        # V fixes every shape of the step. On an accelerator it comes from the config, also for the
        # loader's (pinned) host mask, which is copied asynchronously: nothing reads tensor values on the
        # host, so nothing waits on the GPU. On CPU the mask is counted (free; exact check in mask_to_ids).
        if num_visible is None:
            if mask.device.type == "cpu" and device.type == "cpu":
                num_visible = int((~mask[0]).sum())
            else:
                num_visible = visible_count(num_patches, cfg.mask_ratio)
        keep_ids, masked_ids = mask_to_ids(mask.to(device, non_blocking=True), num_visible)
        clones = rows // batch
        dim = cfg.encoder.embed_dim
        extra = cfg.encoder.num_extra_tokens

        if cfg.mix:  # B clips, then their B mixtures with the same masks: 2B inputs, 2 * rows mask rows
            own = source
            if mix_rows is None:
                mix_rows = self.make_mix_rows(batch, num_frames, device=device)
            mix_rows = mix_rows.to(device, non_blocking=True)
            source = torch.cat([own, mix_spectrograms(own, mix_rows, self.student.cfg.patch_stride[0])])
            keep_ids, masked_ids = torch.cat([keep_ids, keep_ids]), torch.cat([masked_ids, masked_ids])
            rows *= 2

        with torch.no_grad():
            _, ffn = self.teacher(source, return_ffn=True)
            y = self.layer_targets(ffn, cfg.average_top_k_layers)
            utt_k = cfg.utterance_top_k_layers or cfg.average_top_k_layers
            y_utt = y if utt_k == cfg.average_top_k_layers else self.layer_targets(ffn, utt_k)
            del ffn
            if cfg.mix:  # the partner's targets from its mixed tokens alone
                time_patches, freq_patches = grid
                num_mixed = (time_patches - 2 * self.mix_clean_rows(num_frames)) * freq_patches
                _, mix_ids = mask_to_ids(mixed_tokens(mix_rows, freq_patches), num_patches - num_mixed)
                _, ffn_p = self.teacher(partner(own), keep_ids=mix_ids, return_ffn=True)
                y_partner = self.layer_targets(ffn_p, cfg.average_top_k_layers)
                del ffn_p

        x = self.student(source, keep_ids=keep_ids)
        cls_out, patches = x[:, 0], x[:, extra:]

        num_masked = masked_ids.shape[1]
        if noise is None:
            noise = torch.randn(rows, num_masked, dim, device=device, dtype=patches.dtype) * cfg.mask_noise_std
        elif noise.shape != (rows * num_masked, dim):
            raise ValueError(f"noise must be ({rows * num_masked}, {dim}) (masked tokens, D), got {tuple(noise.shape)}")
        else:
            noise = noise.reshape(rows, num_masked, dim).to(device=device, dtype=patches.dtype)
        order = torch.cat([keep_ids, masked_ids], dim=1)[..., None].expand(-1, -1, dim)
        dec_in = torch.empty(rows, num_patches, dim, device=device, dtype=patches.dtype)
        dec_in = dec_in.scatter(1, order, torch.cat([patches, noise], dim=1))
        pred = self.decoder(dec_in, grid, positions=masked_ids).float()  # (R, M, D)

        item = torch.arange(rows, device=device) // clones
        target = y[item[:, None], masked_ids]  # (R, M, D)
        frame_err = (pred - target).square().sum(dim=-1) * self.loss_scale  # (R, M)
        frame_loss = frame_err.mean()
        cls_err = (cls_out.float() - y_utt.mean(dim=1)[item]).square().sum(dim=-1) * self.loss_scale  # (R,)
        utterance_loss = cls_err.sum() if cfg.utterance_reduction == "official" else cls_err.mean()
        loss = cfg.frame_loss_weight * frame_loss + cfg.cls_loss_weight * utterance_loss
        extra_out = {}
        if cfg.mix:  # the mixtures' clones are the second half of the rows
            half = rows // 2
            ret = retention_loss(pred[half:], y[:batch], y_partner, mix_ids, masked_ids[half:], self.loss_scale)
            loss = loss + cfg.retention_loss_weight * ret
            extra_out["retention_loss"] = ret
        with torch.no_grad():
            stats = {
                "pred_var": _spread(pred),
                "target_var": _spread(target),
                "sample_size": torch.full((), rows * num_masked, device=device, dtype=torch.long),
            }
        return {"loss": loss, "frame_loss": frame_loss, "utterance_loss": utterance_loss, **extra_out, **stats}

    # ---------------------------------------------------------------- EMA teacher
    def ema_decay_at(self, step: int) -> float:
        """Teacher decay after ``step`` updates: linear from ema_decay to ema_end_decay, then constant."""
        start, end, steps = self.cfg.ema_decay, self.cfg.ema_end_decay, self.cfg.ema_anneal_end_step
        if steps <= 0 or step >= steps:
            return end
        return end - (end - start) * (1 - step / steps)

    @torch.no_grad()
    def update_teacher(self, decay: float) -> None:
        """``teacher = decay * teacher + (1 - decay) * student`` for trainable tensors (fp32, foreach);
        frozen tensors (the sin-cos table) and buffers are copied.

        Works on plain tensors and on DTensors, provided student and teacher are sharded the same way
        (the pairs are matched by position in ``parameters()``, so both must keep the same structure).
        FSDP2 leaves a root module's parameters unsharded after a forward without backward (the teacher's);
        every FSDP module is therefore resharded first (``reshard()``, a no-op when already sharded).
        """
        for module in (*self.student.modules(), *self.teacher.modules()):
            if callable(getattr(module, "reshard", None)):  # FSDP2 FSDPModule
                module.reshard()
        weight = 1.0 - decay
        ema_t, ema_s = [], []
        for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
            if s.requires_grad:
                ema_t.append(t)
                ema_s.append(s if s.dtype == t.dtype else s.to(t.dtype))
            else:
                t.copy_(s)
        if ema_t:
            torch._foreach_mul_(ema_t, 1.0 - weight)
            torch._foreach_add_(ema_t, ema_s, alpha=weight)
        for t, s in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
            t.copy_(s)

    def after_optimizer_step(self, step: int) -> None:
        """Trainer hook: one EMA step with the decay for ``step`` completed updates."""
        self.update_teacher(self.ema_decay_at(step))
