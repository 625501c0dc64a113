"""ONNX export of the encoder (optional extra): onnxruntime matches PyTorch at several lengths and batch
sizes, because batch and time are dynamic axes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eat.audio.fbank import FrontendConfig
from eat.export import export_onnx, load_encoder, save_export
from eat.model.eat import eat_config
from eat.model.vit import Encoder

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def test_onnx_matches_torch_at_two_lengths(tmp_path):
    torch.manual_seed(0)
    enc = Encoder(eat_config("tiny").encoder)
    fx = load_encoder(save_export(tmp_path / "exp", enc.cfg, enc.state_dict(), FrontendConfig(target_length=256)))
    path = export_onnx(fx, tmp_path / "encoder.onnx", num_frames=256)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["fbank"]
    gen = torch.Generator().manual_seed(1)
    for frames, batch in ((256, 1), (96, 3)):  # the traced length and another multiple of 16
        x = torch.randn(batch, frames, 128, generator=gen)
        (tokens,) = session.run(None, {"fbank": x.numpy()})
        with torch.no_grad():
            ref = fx(x).numpy()
        assert tokens.shape == (batch, 1 + frames // 16 * 8, 96)
        np.testing.assert_allclose(tokens, ref, atol=1e-5, rtol=0)


def test_onnx_refuses_lengths_without_a_whole_patch_grid(tmp_path):
    torch.manual_seed(0)
    enc = Encoder(eat_config("tiny").encoder)
    fx = load_encoder(save_export(tmp_path / "exp", enc.cfg, enc.state_dict(), FrontendConfig(target_length=256)))
    with pytest.raises(ValueError, match="whole patch grid"):
        export_onnx(fx, tmp_path / "bad.onnx", num_frames=250)
