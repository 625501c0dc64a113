"""The X-ARES adapter passes X-ARES's own check_audio_encoder (the installed xares package)."""

import pytest
import torch

from eat.audio.fbank import FrontendConfig
from eat.features import FeatureExtractor
from eat.model.vit import Encoder, EncoderConfig
from eat.xares import EATEncoder

checker = pytest.importorskip("xares.audio_encoder_checker")


def _extractor():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(embed_dim=32, depth=2, num_heads=2, num_mel_bins=32, target_length=128))
    return FeatureExtractor(enc, FrontendConfig(num_mel_bins=32, target_length=128))


def test_adapter_passes_the_xares_check():
    encoder = EATEncoder(_extractor(), layers=[0, 1])
    assert checker.check_audio_encoder(encoder)
    out = encoder(torch.randn(2, 50000))  # 3.125 s: 311 frames -> 20 columns of 160 ms (windows of 8 columns)
    assert out.shape == (2, 20, 64) and encoder.hop_size_in_ms == 160


def test_the_check_catches_a_wrong_output_dim():
    encoder = EATEncoder(_extractor())
    encoder.output_dim = 33  # planted defect: the check must see it
    assert not checker.check_audio_encoder(encoder)
