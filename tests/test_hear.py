"""HEAR 2021 API: the checks hearvalidator 2021.0.2 runs (float32, batch size kept, emb.shape[:2] == ts.shape,
regular timestamps in ms, white-noise inputs of 2.0 s and 3.74 s) on a tiny exported encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import eat.hear as hear
from eat.audio.fbank import FrontendConfig
from eat.export import save_export
from eat.model.eat import eat_config
from eat.model.vit import Encoder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = eat_config("tiny").encoder
    enc = Encoder(cfg)
    path = save_export(tmp_path_factory.mktemp("hear") / "tiny", cfg, enc.state_dict(), FrontendConfig(target_length=256))
    return hear.load_model(str(path), device="cpu")


def noise(n_sounds: int, seconds: float, sr: int) -> torch.Tensor:
    return torch.rand(n_sounds, int(seconds * sr), generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_model_attributes(model):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate in (16000, 22050, 44100, 48000)  # what the validator accepts
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)


def test_timestamp_embeddings_like_the_validator(model):
    audio = noise(16, 2.0, model.sample_rate)
    with torch.no_grad():
        emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float64  # float64 ms: regular on hours of audio
    assert emb.shape[0] == 16 and emb.shape[:2] == ts.shape
    assert emb.shape[2] == model.timestamp_embedding_size
    diffs = np.diff(ts.numpy(), axis=1)
    assert np.abs(diffs - diffs[0, 0]).max() < 1.0  # regular to within 1 ms
    assert diffs[0, 0] == pytest.approx(160.0, abs=1e-3)  # one column of 16 frames x 10 ms
    assert ts[0, 0] == pytest.approx(87.5, abs=1e-3)
    # 198 frames -> 13 columns; the 13th, mostly padding, is centred at 2007.5 ms, past the end: left out
    assert ts.shape[1] == 12 and ts[0, -1] == pytest.approx(1847.5, abs=1e-6)
    # two sounds with different content get different embeddings; identical sounds identical ones
    assert not torch.allclose(emb[0], emb[1])
    twice, _ = hear.get_timestamp_embeddings(audio[[0, 0]], model)
    torch.testing.assert_close(twice[0], twice[1])
    torch.testing.assert_close(twice[0], emb[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("seconds", [1.07, 1.98, 4.0, 2.0, 0.3, 7.77])
def test_timestamps_pass_the_validators_end_checks(model, seconds):
    """hear-validator's rules: regular within 1 ms, the last timestamp not after the end of the audio and not
    more than two steps before it (1.07, 1.98 and 4.0 s are the lengths it tries)."""
    audio = noise(2, seconds, model.sample_rate)
    length_ms = 1000.0 * audio.shape[1] / model.sample_rate
    with torch.no_grad():
        emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape[:2] == ts.shape and ts.shape[1] >= 1
    ts = ts.numpy()
    assert ts.max() <= length_ms
    if ts.shape[1] > 1:
        steps = np.diff(ts, axis=1)
        assert np.abs(steps - steps.mean()).max() < 1e-6
        assert ts.max() >= length_ms - 2 * steps.mean()


def test_scene_embeddings_like_the_validator(model):
    audio = noise(8, 3.74, model.sample_rate)  # 3.74 s is not a whole number of 16-frame patches
    with torch.no_grad():
        emb = hear.get_scene_embeddings(audio, model)
    assert emb.dtype == torch.float32 and emb.shape == (8, model.scene_embedding_size)
    assert torch.isfinite(emb).all()


def test_layers_and_mean_pooling_options(model):
    fx = model.extractor  # the loaded weights behind other options
    multi = hear.HearModel(fx, utterance="mean", layers=[0, -1])
    audio = noise(2, 2.0, multi.sample_rate)
    emb = hear.get_scene_embeddings(audio, multi)
    assert emb.shape == (2, 2 * 96) == (2, multi.scene_embedding_size)
    last = hear.get_scene_embeddings(audio, hear.HearModel(fx, utterance="mean", layers=-1))
    torch.testing.assert_close(emb[:, 96:], last)
    frames, ts = hear.get_timestamp_embeddings(audio, multi)
    assert frames.shape[:2] == ts.shape and frames.shape[2] == multi.timestamp_embedding_size
    with pytest.raises(ValueError, match="n_sounds"):
        hear.get_scene_embeddings(audio[0], multi)


def test_the_default_scene_embedding_is_the_registrys(model):
    """Scene embeddings default to eat.model.pooling's DEFAULT_LAYERS / DEFAULT_POOLING (every block, band
    mean+std): the same vector as FeatureExtractor.clip_embeddings and the probe protocol's cell."""
    from eat.eval.protocol import encoder_embeddings
    from eat.model.pooling import DEFAULT_LAYERS, DEFAULT_POOLING

    fx = model.extractor
    assert (model.pooling, model.layers, model.frame_layers) == (DEFAULT_POOLING, [0, 1, 2], [2])
    assert model.scene_embedding_size == 3 * 2 * fx.encoder.num_freq_patches * fx.embed_dim
    audio = noise(2, 2.0, model.sample_rate)
    emb = hear.get_scene_embeddings(audio, model)
    ref = encoder_embeddings(fx, list(audio), [DEFAULT_LAYERS], [DEFAULT_POOLING])[(DEFAULT_LAYERS, DEFAULT_POOLING)]
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=0)
    old = hear.HearModel(fx, utterance="cls", layers=-1)  # the old default, by name
    assert old.scene_embedding_size == fx.embed_dim
    torch.testing.assert_close(hear.get_scene_embeddings(audio, old),
                               fx.extract_features(list(audio), layers=-1, utterance="cls").embeddings, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="give one"):
        hear.HearModel(fx, utterance="cls", pooling="mean")
