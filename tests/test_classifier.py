"""Classifier heads, presets (grids and parameter counts from the architecture description) and
parity with the official EAT fine-tuning model on the tiny fixture."""

from pathlib import Path

import pytest
import torch

from eat.config import ConfigError
from eat.model.classifier import Classifier, ClassifierConfig, classifier_config
from eat.model.convert import encoder_key_map
from eat.model.vit import Encoder, EncoderConfig

FIXTURES = Path(__file__).parent / "fixtures"


def tiny_encoder(**kw) -> EncoderConfig:
    base = dict(embed_dim=32, depth=2, num_heads=4, target_length=64, num_mel_bins=32, max_time_patches=8)
    return EncoderConfig(**{**base, **kw})


def vit_block_params(d: int, mlp_ratio: int = 4) -> int:
    """qkv (3d x d + 3d) + proj (d x d + d) + fc1/fc2 (2 x mlp d^2 + mlp d + d) + two LayerNorms (4d)."""
    h = mlp_ratio * d
    return (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d) + 4 * d


def head_params(d: int, classes: int) -> int:
    return 2 * d + d * classes + classes  # LayerNorm + Linear


def count(model: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def test_vit_b_block_size_matches_reference():
    assert vit_block_params(768) == 7_087_872  # eat.md section 9


def test_ast_base_grid_and_size():
    cfg = classifier_config("ast_base", 527)
    with torch.device("meta"):
        model = Classifier(cfg)
    assert model.encoder.grid(1024) == (101, 12)  # 12 x 101 = 1212 patches (+2 tokens = 1214)
    d, patches, tokens = 768, 101 * 12, 2
    expected = (
        12 * vit_block_params(d)
        + d * 16 * 16 + d  # patch conv, 1 input channel
        + tokens * d  # CLS + distillation tokens
        + (tokens + patches) * d  # one joint table incl. the two token rows
        + 2 * d  # final LayerNorm
        + head_params(d, 527)
    )
    assert count(model) == expected
    # AST's logged 88.1 M also holds the unused DeiT heads (head, head_dist: 768 -> 1000 each).
    assert round((expected + 2 * (d * 1000 + 1000)) / 1e6, 1) == 88.1
    assert model.cfg.prediction_mode == "cls_dist" and model.fc_norm.eps == 1e-5


def test_passt_s_grid_and_size():
    for frames in (998, 1000):
        cfg = classifier_config("passt_s", 527, target_length=frames)
        with torch.device("meta"):
            model = Classifier(cfg)
        assert model.encoder.grid(frames) == (99, 12)  # 12 x 99 = 1188 patches
    d = 768
    expected = (
        12 * vit_block_params(d) + d * 256 + d + 2 * d
        + (2 + 12 + 99) * d  # token vectors + frequency table + time table
        + 2 * d + head_params(d, 527)
    )
    assert count(model) == expected


def test_eat_base_size_matches_reference():
    cfg = classifier_config("eat_base", 527)
    with torch.device("meta"):
        model = Classifier(cfg)
    assert model.encoder.grid(1024) == (64, 8)
    # eat.md section 9: encoder trainable 85,254,144; fc_norm + head for 527 classes 406,799.
    assert count(model.encoder, trainable=True) == 12 * vit_block_params(768) + 768 * 257 + 768 + 2 * 768
    assert count(model.encoder, trainable=True) == 85_254_144
    assert count(model, trainable=True) - count(model.encoder, trainable=True) == head_params(768, 527) == 406_799
    assert model.cfg.prediction_mode == "cls" and model.fc_norm.eps == 1e-6


@pytest.mark.parametrize("mode", ["cls", "cls_dist", "mean"])
def test_heads_pool_the_right_tokens(mode):
    torch.manual_seed(0)
    enc = tiny_encoder(num_extra_tokens=2)
    model = Classifier(ClassifierConfig(encoder=enc, num_classes=5, prediction_mode=mode)).eval()
    x = torch.randn(3, 64, 32)
    out = model.encoder(x)
    pooled = {"cls": out[:, 0], "cls_dist": (out[:, 0] + out[:, 1]) / 2, "mean": out[:, 2:].mean(1)}[mode]
    ref = model.head(model.fc_norm(pooled))
    torch.testing.assert_close(model(x), ref)
    assert model(x).shape == (3, 5)


def test_mean_pooling_ignores_padding():
    torch.manual_seed(1)
    model = Classifier(ClassifierConfig(encoder=tiny_encoder(), num_classes=3, prediction_mode="mean")).eval()
    x = torch.randn(2, 64, 32)
    n = model.encoder.grid(64)[0] * model.encoder.grid(64)[1]
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[1, n // 2 :] = True
    out = model.encoder(x, padding_mask=pad)
    ref = torch.stack([out[0, 1:].mean(0), out[1, 1 : 1 + n // 2].mean(0)])
    torch.testing.assert_close(model.features(x, pad), ref)


def test_head_init_and_config_checks():
    model = Classifier(ClassifierConfig(encoder=tiny_encoder(), num_classes=7))
    assert torch.all(model.head.bias == 0)  # weight: N(0, 0.02) truncated at +-2 (timm/torch default bounds)
    assert 0.01 < model.head.weight.std() < 0.03
    with pytest.raises(ConfigError, match="cls_dist"):
        ClassifierConfig(encoder=tiny_encoder(num_extra_tokens=1), prediction_mode="cls_dist")
    with pytest.raises(ConfigError, match="preset"):
        classifier_config("vit_huge", 3)


def test_wrapping_an_encoder_sets_drop_path_and_config():
    enc = Encoder(tiny_encoder(depth=3))
    model = Classifier(ClassifierConfig(encoder=tiny_encoder(), num_classes=2, drop_path=0.1), encoder=enc)
    assert [b.drop_path for b in model.encoder.blocks] == pytest.approx([0.0, 0.05, 0.1])
    assert model.cfg.encoder.depth == 3 and model.cfg.encoder.drop_path == 0.1


def official_to_ours(sd: dict, depth: int) -> dict:
    """Official fine-tuned names -> Classifier names: ``model.`` + encoder map -> ``encoder.*``; head as is."""
    names = {f"model.{k}": f"encoder.{v}" for k, v in encoder_key_map(depth).items()}
    return {names.get(k, k): v for k, v in sd.items()}


def test_official_finetuned_tiny_parity():
    fx = torch.load(FIXTURES / "eat_tiny_finetune_parity.pt", weights_only=True)
    c = fx["config"]
    enc = EncoderConfig(
        embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"], target_length=c["target_length"],
        max_time_patches=c["max_length"],
    )
    model = Classifier(ClassifierConfig(encoder=enc, num_classes=c["num_classes"], drop_path=c["drop_path_rate"]))
    model.load_state_dict({k: v.float() for k, v in official_to_ours(fx["state_dict"], c["depth"]).items()}, strict=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.features(fx["source"]), fx["cls_feature"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(fx["source"]), fx["logits"], rtol=1e-4, atol=1e-4)


def test_eat_presets_follow_the_pretraining_presets():
    from eat.model.eat import eat_config

    for name in ("tiny", "eat_tiny", "base"):
        cfg = classifier_config(name, 10)
        assert cfg.encoder == eat_config(name.removeprefix("eat_")).encoder
        assert cfg.prediction_mode == "cls" and cfg.drop_path == 0.1
    assert classifier_config("tiny", 10, target_length=512).encoder.target_length == 512
