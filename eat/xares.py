"""X-ARES (github.com/jimbozhang/xares) encoder interface for an exported encoder.

    from eat.xares import EATEncoder
    encoder = EATEncoder("path/to/export")        # or EATEncoder(eat.load_encoder(...))
    frames = encoder(audio)                        # (B, T) float waveform at 16 kHz -> (B, T', D)

X-ARES trains its own probes (linear / MLP / kNN, clip and frame tasks such as DESED) on the frozen
outputs and needs: a class whose name ends in ``Encoder``, ``sampling_rate``, ``output_dim`` and
``hop_size_in_ms`` attributes, and ``forward(B, T) -> (B, T', D)``. The frames here are the encoder's
time columns (160 ms for EAT; X-ARES reads ``hop_size_in_ms`` to align its frame labels), each the mean of
its frequency patches, of the blocks in ``layers`` (concatenated along the feature axis); audio longer
than the training length is windowed by :meth:`eat.features.FeatureExtractor.extract_features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from eat.export import load_encoder
from eat.features import FeatureExtractor


class EATEncoder(nn.Module):
    """An exported EAT encoder with X-ARES's attributes (see the module docstring)."""

    def __init__(self, extractor: FeatureExtractor | str | Path, layers: int | Sequence[int] = -1,
                 batch_size: int = 16):
        super().__init__()
        if not isinstance(extractor, FeatureExtractor):
            extractor = load_encoder(extractor)
        self.extractor = extractor
        self.layers = [layers] if isinstance(layers, int) else list(layers)
        extractor.layer_indices(self.layers)  # a bad layer index fails here, naming it
        self.batch_size = batch_size
        enc, fe = extractor.encoder.cfg, extractor.frontend
        self.sampling_rate = fe.sample_rate
        self.output_dim = enc.embed_dim * len(self.layers)
        self.hop_size_in_ms = enc.patch_stride[0] * fe.frame_shift_ms

    def forward(self, audio: Tensor, audio_attention_mask: Tensor | None = None) -> Tensor:
        """``audio (B, T)`` at :attr:`sampling_rate` -> frame embeddings ``(B, T', output_dim)``.

        ``audio_attention_mask`` (X-ARES's optional argument, 1 = real sample) gives each clip's length."""
        lengths = None if audio_attention_mask is None else audio_attention_mask.long().sum(-1)
        feats = self.extractor.extract_features(audio, layers=self.layers, granularity="frame", lengths=lengths,
                                                batch_size=self.batch_size, is_fbank=False)
        emb = feats.embeddings  # (B, L, T', D)
        return emb.permute(0, 2, 1, 3).flatten(2) if emb.dim() == 4 else emb
