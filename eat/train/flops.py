"""Model FLOPs per clip for pretraining and fine-tuning steps, from the config alone (for MFU).

Counting rules (as in the usual MFU literature and ``torch.utils.flop_counter``): only matrix products
and convolutions count, 1 multiply-add = 2 FLOP; a backward pass costs twice its forward (gradients of
the input and of the weights), except where the input needs no gradient (the patch embedding sees the
spectrogram: forward + weight gradient = 2x). Attention is ``QK^T`` and ``PV``: ``4 N^2 D`` per layer
forward. Norms, activations, softmax, losses and the EMA update are not counted (< 1 % here).

EAT-base pretraining step, per clip (16 clones, 102 + 1 visible tokens, 513 teacher tokens):
teacher 97.0 GFLOP (forward only), student 859.0 GFLOP (16 clones, forward + backward), decoder
121.1 GFLOP (convs on all 512 grid positions of each clone, the final Linear only on the 410 masked
ones, as :class:`eat.model.decoder.CNNDecoder` runs it), about **1.077 TFLOP** in all. The anchors'
arithmetic (1.083 TFLOP) runs the decoder projection on all 512 positions.
"""

from __future__ import annotations

from eat.model.classifier import ClassifierConfig, PatchoutConfig
from eat.model.eat import EATConfig
from eat.model.masking import visible_count
from eat.model.mixing import clean_rows
from eat.model.vit import EncoderConfig


def grid(enc: EncoderConfig, num_frames: int | None = None) -> tuple[int, int]:
    """Patch grid (T', F') of ``num_frames`` frames (default ``enc.target_length``)."""
    frames = enc.target_length if num_frames is None else num_frames
    (st, sf), p = enc.patch_stride, enc.patch_size
    return (frames - p) // st + 1, (enc.num_mel_bins - p) // sf + 1


def blocks_forward(enc: EncoderConfig, tokens: int) -> float:
    """Forward FLOPs of the transformer blocks on one sequence of ``tokens`` tokens (extra tokens included)."""
    d = enc.embed_dim
    hidden = int(d * enc.mlp_ratio)
    linear = 2 * tokens * (3 * d * d + d * d + 2 * d * hidden)  # qkv, output projection, MLP
    attention = 4 * tokens * tokens * d
    return float(enc.depth * (linear + attention))


def patch_embed_forward(enc: EncoderConfig, num_patches: int) -> float:
    """Forward FLOPs of the patch convolution for one clip."""
    return float(2 * num_patches * enc.embed_dim * enc.in_chans * enc.patch_size**2)


def decoder_forward(cfg: EATConfig, num_positions: int, num_projected: int) -> float:
    """Forward FLOPs of the CNN decoder for one clone: convs on ``num_positions`` grid cells, the final
    Linear on ``num_projected`` of them."""
    d_in, dim, k, g = cfg.encoder.embed_dim, cfg.decoder_dim, cfg.decoder_kernel, cfg.decoder_groups
    conv_macs = sum((d_in if i == 0 else dim) * (dim // g) * k * k for i in range(cfg.decoder_layers))
    return float(2 * num_positions * conv_macs + 2 * num_projected * dim * cfg.encoder.embed_dim)


def pretrain_flops(cfg: EATConfig, num_frames: int | None = None) -> dict[str, float]:
    """FLOPs of one EAT pretraining step per clip: ``teacher``, ``student``, ``decoder`` and ``total``.

    Teacher: patch embedding + blocks on all ``E + N`` tokens, forward only. Student: patch embedding
    once per clip (forward + weight gradient), blocks on ``E + V`` tokens for each of the ``C`` clones,
    forward + backward. Decoder: per clone, forward + backward.

    Mixture pretraining (``cfg.mix``) counts per *loader* clip: its mixture is a second input (teacher,
    student and decoder again), and the teacher also runs on the partner's mixed tokens.
    """
    enc = cfg.encoder
    t, f = grid(enc, num_frames)
    n = t * f
    v = visible_count(n, cfg.mask_ratio)
    e, c = enc.num_extra_tokens, cfg.clone_batch
    embed = patch_embed_forward(enc, n)
    teacher = embed + blocks_forward(enc, n + e)
    student = 2 * embed + 3 * c * blocks_forward(enc, v + e)
    decoder = 3 * c * decoder_forward(cfg, n, n - v)
    if cfg.mix:
        mixed = (t - 2 * clean_rows(t, cfg.mix_clean_fraction)) * f
        teacher, student, decoder = 2 * teacher + embed + blocks_forward(enc, mixed + e), 2 * student, 2 * decoder
    return {"teacher": teacher, "student": student, "decoder": decoder, "total": teacher + student + decoder}


def pretrain_flops_per_clip(cfg: EATConfig, num_frames: int | None = None) -> float:
    """Total training FLOPs per clip of one pretraining step (see :func:`pretrain_flops`)."""
    return pretrain_flops(cfg, num_frames)["total"]


def kept_patches(grid_tf: tuple[int, int], patchout: PatchoutConfig | None) -> int:
    """Patch tokens left after PaSST patchout (same clamping as :func:`eat.model.classifier.patchout_ids`)."""
    tp, fp = grid_tf
    if patchout is None or not patchout.active:
        return tp * fp
    kept = (tp - min(patchout.s_t, tp - 1)) * (fp - min(patchout.s_f, fp - 1))
    return kept - min(patchout.u, kept - 1)


def classifier_flops_per_clip(
    cfg: ClassifierConfig, num_frames: int | None = None, training: bool = False
) -> float:
    """FLOPs per clip of a classifier forward (``training=False``) or training step (forward + backward).

    In training the patch tokens are those left by ``cfg.patchout``; the patch embedding always runs on
    the whole grid. The head is one Linear on the pooled token.
    """
    enc = cfg.encoder
    tf = grid(enc, num_frames)
    tokens = enc.num_extra_tokens + (kept_patches(tf, cfg.patchout) if training else tf[0] * tf[1])
    embed = patch_embed_forward(enc, tf[0] * tf[1])
    body = blocks_forward(enc, tokens) + 2.0 * enc.embed_dim * cfg.num_classes
    return 2 * embed + 3 * body if training else embed + body
