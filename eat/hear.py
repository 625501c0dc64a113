"""HEAR 2021 API (hearbenchmark.com/hear-api.html) for an exported encoder.

    import eat.hear as module
    model = module.load_model("path/to/export")            # heareval: load_model(path, **model_options)
    scene = module.get_scene_embeddings(audio, model)       # (n_sounds, scene_embedding_size)
    emb, ts = module.get_timestamp_embeddings(audio, model) # (n_sounds, n_times, D), (n_sounds, n_times) ms

``audio`` is float ``(n_sounds, n_samples)`` in [-1, 1] at ``model.sample_rate``. Any length works: the
extractor pads to whole patch columns and windows long audio. Scene embeddings are
:meth:`~eat.features.FeatureExtractor.clip_embeddings`: the blocks of a layer spec, each pooled, concatenated, with
the names and the default of the registry :mod:`eat.model.pooling` (every block, band mean+std; for
example ``pooling="cls", layers=-1`` for the last block's CLS token, which was this module's default
before the registry). Timestamp embeddings are one vector per time column (160 ms apart for EAT; the
HEAR validator only warns about hops over 50 ms) stamped with the column's centre, from the last block,
or from the blocks of ``layers`` (concatenated along the feature axis) when it is given.
``utterance=`` is the old name of ``pooling=`` and still accepted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor, nn

from eat.audio.io import validate_audio
from eat.export import load_encoder
from eat.features import FeatureExtractor
from eat.model.pooling import DEFAULT_LAYERS, DEFAULT_POOLING, check_poolings, parse_layers
from eat.utils.device import resolve_device


class HearModel(nn.Module):
    """An exported encoder with the attributes the HEAR API requires."""

    def __init__(self, extractor: FeatureExtractor, utterance: str | None = None,
                 layers: str | int | Sequence[int] | None = None, batch_size: int = 16, pooling: str | None = None):
        super().__init__()
        if utterance is not None and pooling is not None and utterance != pooling:
            raise ValueError(f"utterance={utterance!r} and pooling={pooling!r}: give one (utterance is the old name)")
        key, name = ("utterance", utterance) if utterance is not None else ("pooling", pooling or DEFAULT_POOLING)
        try:
            (self.pooling,) = check_poolings(name)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
        self.extractor = extractor
        # a bad spec or block index fails at load time, naming it
        if layers is None or isinstance(layers, str):
            self.layers = parse_layers(DEFAULT_LAYERS if layers is None else layers, extractor.num_layers)
        else:
            self.layers = extractor.layer_indices(layers)
        self.frame_layers = [extractor.num_layers - 1] if layers is None else self.layers
        if self.pooling == "cls" and extractor.encoder.cfg.num_extra_tokens == 0:
            raise ValueError("this encoder has no CLS token; choose another pooling")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.sample_rate: int = extractor.sample_rate
        self.scene_embedding_size: int = extractor.clip_embedding_dim(self.layers, self.pooling)
        self.timestamp_embedding_size: int = extractor.embed_dim * len(self.frame_layers)

    @property
    def utterance(self) -> str:
        """The old name of :attr:`pooling`."""
        return self.pooling

    def embed(self, audio: Tensor, granularity: str):
        """The embeddings of ``granularity`` (``utterance`` or ``frame``) and, for frames, the features."""
        return self.frames(audio) if granularity == "frame" else (self.scene(audio), None)

    def scene(self, audio: Tensor) -> Tensor:
        """Scene embeddings ``(n_sounds, scene_embedding_size)``."""
        emb = self.extractor.clip_embeddings(_check_audio(audio), layers=self.layers, pooling=self.pooling,
                                             batch_size=self.batch_size)
        return emb.float().contiguous()

    def frames(self, audio: Tensor):
        """Timestamp embeddings ``(n_sounds, n_times, timestamp_embedding_size)`` and the features."""
        feats = self.extractor.extract_features(_check_audio(audio), granularity="frame", layers=self.frame_layers,
                                                batch_size=self.batch_size)
        emb = feats.embeddings.permute(0, 2, 1, 3).flatten(2)  # (B, L, T, D): the layers along the features
        return emb.float().contiguous(), feats


def load_model(model_file_path: str = "", device: str | None = None, utterance: str | None = None,
               layers: str | int | Sequence[int] | None = None, batch_size: int = 16,
               pooling: str | None = None) -> HearModel:
    """Load an exported encoder directory; extra keyword options come from heareval's ``--model-options``
    (``pooling``, ``layers``, ``batch_size``; see the module docstring)."""
    if not model_file_path:
        raise ValueError("model_file_path must name an exported encoder directory (tools/export_encoder.py)")
    return HearModel(load_encoder(model_file_path, resolve_device(device, "device")), utterance, layers, batch_size,
                     pooling)


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """``(n_sounds, n_samples)`` audio -> float32 ``(n_sounds, scene_embedding_size)``."""
    return model.scene(audio)


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """``(n_sounds, n_samples)`` audio -> float32 embeddings ``(n_sounds, n_times, D)`` and their centre
    times in milliseconds ``(n_sounds, n_times)``; all sounds share one length, so there is no padding.

    The times are float64: float32 milliseconds cannot keep the validator's regularity rule (every step
    within 1e-3 ms of the mean) past about 2 minutes of audio, float64 keeps it to 1e-6 ms on hours."""
    emb, feats = model.frames(audio)
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
