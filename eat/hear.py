"""HEAR 2021 API (hearbenchmark.com/hear-api.html) for an exported encoder.

    import eat.hear as module
    model = module.load_model("path/to/export")            # heareval: load_model(path, **model_options)
    scene = module.get_scene_embeddings(audio, model)       # (n_sounds, scene_embedding_size)
    emb, ts = module.get_timestamp_embeddings(audio, model) # (n_sounds, n_times, D), (n_sounds, n_times) ms

``audio`` is float ``(n_sounds, n_samples)`` in [-1, 1] at ``model.sample_rate``. Any length works: the
extractor pads to whole patch columns and windows long audio. Scene embeddings are the utterance
embedding (CLS token by default, ``utterance="mean"`` for the mean of the patch tokens); timestamp
embeddings are one vector per time column (160 ms apart for EAT; the HEAR validator only warns about
hops over 50 ms) stamped with the column's centre. ``layers`` (an int or a list, concatenated along
the feature axis) picks block outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor, nn

from eat.audio.io import validate_audio
from eat.export import load_encoder
from eat.features import FeatureExtractor
from eat.utils.device import resolve_device


class HearModel(nn.Module):
    """An exported encoder with the attributes the HEAR API requires."""

    def __init__(self, extractor: FeatureExtractor, utterance: str = "cls", layers: int | Sequence[int] = -1,
                 batch_size: int = 16):
        super().__init__()
        if utterance not in ("cls", "mean"):
            raise ValueError(f"utterance must be 'cls' or 'mean', got {utterance!r}")
        self.extractor = extractor
        self.utterance = utterance
        self.layers = [layers] if isinstance(layers, int) else list(layers)
        extractor.layer_indices(self.layers)  # a bad layer index fails at load time, naming the layer
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.sample_rate: int = extractor.sample_rate
        self.scene_embedding_size: int = extractor.embed_dim * len(self.layers)
        self.timestamp_embedding_size: int = extractor.embed_dim * len(self.layers)

    def embed(self, audio: Tensor, granularity: str):
        feats = self.extractor.extract_features(
            _check_audio(audio), granularity=granularity, utterance=self.utterance, layers=self.layers,
            batch_size=self.batch_size,
        )
        emb = feats.embeddings  # (B, L, D) or (B, L, T, D): concatenate the layers along the features
        emb = emb.flatten(1) if granularity == "utterance" else emb.permute(0, 2, 1, 3).flatten(2)
        return emb.float().contiguous(), feats


def load_model(model_file_path: str = "", device: str | None = None, utterance: str = "cls",
               layers: int | Sequence[int] = -1, batch_size: int = 16) -> HearModel:
    """Load an exported encoder directory; extra keyword options come from heareval's ``--model-options``."""
    if not model_file_path:
        raise ValueError("model_file_path must name an exported encoder directory (tools/export_encoder.py)")
    return HearModel(load_encoder(model_file_path, resolve_device(device, "device")), utterance, layers, batch_size)


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """``(n_sounds, n_samples)`` audio -> float32 ``(n_sounds, scene_embedding_size)``."""
    emb, _ = model.embed(audio, "utterance")
    return emb


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """``(n_sounds, n_samples)`` audio -> float32 embeddings ``(n_sounds, n_times, D)`` and their centre
    times in milliseconds ``(n_sounds, n_times)``; all sounds share one length, so there is no padding.

    The times are float64: float32 milliseconds cannot keep the validator's regularity rule (every step
    within 1e-3 ms of the mean) past about 2 minutes of audio, float64 keeps it to 1e-6 ms on hours."""
    emb, feats = model.embed(audio, "frame")
    times_ms = feats.timestamps * 1000.0
    # The last time column is usually part padding and its centre can lie past the end of the sound, which the
    # HEAR validator refuses (no timestamp after the audio ends). All sounds share one length, so dropping the
    # columns centred past the end keeps every row regular; the last kept one is within one hop of the end.
    duration_ms = 1000.0 * np.shape(audio)[1] / model.sample_rate
    keep = max(1, int((times_ms[0] <= duration_ms).sum()))
    return emb[:, :keep].contiguous(), times_ms[:, :keep].contiguous()


def _check_audio(audio: Tensor) -> Tensor:
    """The one audio check (:func:`eat.audio.io.validate_audio`: numpy or torch, integer PCM scaled,
    NaN/inf refused) plus the HEAR shape: a non-empty ``(n_sounds, n_samples)`` batch."""
    shape = tuple(np.shape(audio))
    if len(shape) != 2:
        raise ValueError(f"HEAR audio must be (n_sounds, n_samples), got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"HEAR audio holds no sound: shape {shape}")
    return validate_audio(audio, "HEAR audio")
