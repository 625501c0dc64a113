"""Audio input: file decoding/resampling (:mod:`eat.audio.io`) and the log-mel front-end
(:mod:`eat.audio.fbank`)."""

from eat.audio.fbank import (
    NORM_PRESETS,
    PRESET_TARGET_LENGTH,
    FrontendConfig,
    denormalize,
    fbank,
    mel_banks,
    normalize,
    num_frames,
    pad_or_crop,
    waveform_to_input,
)
from eat.audio.io import AudioError, load_audio, load_audio_with_rate, remove_dc, resample

__all__ = [
    "NORM_PRESETS",
    "PRESET_TARGET_LENGTH",
    "AudioError",
    "FrontendConfig",
    "denormalize",
    "fbank",
    "load_audio",
    "load_audio_with_rate",
    "mel_banks",
    "normalize",
    "num_frames",
    "pad_or_crop",
    "remove_dc",
    "resample",
    "waveform_to_input",
]
