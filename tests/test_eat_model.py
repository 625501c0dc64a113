"""EATModel: presets and parameter counts, token dropping, loss reductions, EMA teacher, a short training run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from eat.config import ConfigError, from_dict, to_dict
from eat.model.eat import PRESETS, EATConfig, EATModel, eat_config
from eat.model.vit import count_parameters


def _meta_model(name: str) -> EATModel:
    with torch.device("meta"):
        return EATModel(eat_config(name))


def test_parameter_counts_of_presets():
    base = _meta_model("base")
    assert count_parameters(base.student) == 85_254_144
    assert count_parameters(base.student) + count_parameters(base.decoder) == 87_840_000
    assert count_parameters(base.teacher) == 0  # frozen EMA copy
    assert base.student.pos_embed.shape == (1, 6144, 768)
    large = _meta_model("large")
    assert count_parameters(large.student) + count_parameters(large.decoder) == 308_543_488
    assert count_parameters(large) == 308_543_488


def test_presets_are_copies_and_round_trip():
    cfg = eat_config("tiny")
    cfg.encoder.depth = 99
    assert PRESETS["tiny"].encoder.depth == 3
    for name in PRESETS:
        assert from_dict(EATConfig, to_dict(PRESETS[name])) == PRESETS[name]
    large = eat_config("large")
    assert (large.mask_ratio, large.mask_adjust, large.average_top_k_layers, large.ema_anneal_end_step) == (
        0.75, 0.1, 24, 150000,
    )
    with pytest.raises(ConfigError, match="unknown EAT preset"):
        eat_config("huge")
    with pytest.raises(ConfigError, match="average_top_k_layers"):
        EATConfig(average_top_k_layers=13)


def _tiny_model(seed: int = 0, **overrides) -> EATModel:
    torch.manual_seed(seed)
    return EATModel(dataclasses.replace(eat_config("tiny"), **overrides))


def test_student_sees_only_visible_tokens_teacher_sees_all():
    model = _tiny_model()
    shapes = {}
    model.student.blocks[0].register_forward_hook(lambda m, i, o: shapes.__setitem__("student", tuple(i[0].shape)))
    model.teacher.blocks[0].register_forward_hook(lambda m, i, o: shapes.__setitem__("teacher", tuple(i[0].shape)))
    source = torch.randn(3, 256, 128)
    mask = model.make_masks(3, 256, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (12, 128) and ((~mask).sum(1) == 25).all()
    out = model(source, mask)
    assert shapes == {"student": (12, 26, 96), "teacher": (3, 129, 96)}
    assert out["sample_size"].item() == 12 * 103
    assert out["loss"].dim() == 0 and out["loss"].dtype == torch.float32


def test_loss_terms_and_reductions():
    model = _tiny_model()
    source = torch.randn(2, 256, 128)
    mask = model.make_masks(2, 256, generator=torch.Generator().manual_seed(1))
    noise = torch.zeros(int(mask.sum()), 96)
    official = model(source, mask, noise=noise)
    model.cfg = dataclasses.replace(model.cfg, utterance_reduction="mean", cls_loss_weight=0.5, frame_loss_weight=2.0)
    mean = model(source, mask, noise=noise)
    rows = mask.shape[0]
    torch.testing.assert_close(official["utterance_loss"], mean["utterance_loss"] * rows)
    torch.testing.assert_close(official["frame_loss"], mean["frame_loss"])
    torch.testing.assert_close(official["loss"], official["frame_loss"] + official["utterance_loss"])
    torch.testing.assert_close(mean["loss"], 2.0 * mean["frame_loss"] + 0.5 * mean["utterance_loss"])


def test_targets_are_normalised_teacher_ffn_outputs():
    model = _tiny_model()
    source = torch.randn(2, 256, 128)
    y = model.targets(source)
    _, ffn = model.teacher.forward_tokens(model.teacher.embed(source), return_ffn=True)
    ref = 0
    for t in ffn:  # plain per-clip, per-channel standardisation over tokens
        t = t[:, 1:]
        ref = ref + (t - t.mean(1, keepdim=True)) / torch.sqrt(t.var(1, unbiased=False, keepdim=True) + 1e-5)
    ref = ref / 3
    ref = (ref - ref.mean(-1, keepdim=True)) / torch.sqrt(ref.var(-1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(y, ref, atol=1e-5)
    assert not y.requires_grad


def test_teacher_follows_the_ema_formula():
    model = _tiny_model()
    assert model.ema_decay_at(0) == 0.9998 and model.ema_decay_at(100000) == model.ema_decay_at(10**7) == 0.99999
    assert model.ema_decay_at(50000) == pytest.approx(0.9998 + 0.5 * (0.99999 - 0.9998), abs=1e-15)
    model.train()
    assert not model.teacher.training and model.student.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    source = torch.randn(2, 256, 128)
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model(source)["loss"].backward()
    opt.step()
    model.after_optimizer_step(1)
    decay = model.ema_decay_at(1)
    student, teacher = model.student.state_dict(), model.teacher.state_dict()
    for name in ("blocks.0.attn.qkv.weight", "extra_tokens", "pre_norm.bias"):
        expect = before[name] * decay + student[name] * (1 - decay)
        assert torch.allclose(teacher[name], expect, atol=1e-7, rtol=0)
        assert not torch.equal(teacher[name], student[name])
    assert torch.equal(teacher["pos_embed"], student["pos_embed"])
    assert teacher["blocks.0.attn.qkv.weight"].dtype == torch.float32


def test_ema_uses_foreach_over_cast_student():
    model = _tiny_model()
    with torch.no_grad():
        for p in model.student.parameters():
            if p.requires_grad:
                p.add_(1.0)
    model.student.half()  # bf16/fp16 student copies are cast to the fp32 teacher
    model.update_teacher(0.75)
    t = model.teacher.blocks[1].mlp.fc1.bias
    s = model.student.blocks[1].mlp.fc1.bias.float()
    assert t.dtype == torch.float32
    assert torch.allclose(t, 0.75 * (s - 1.0) + 0.25 * s, atol=2e-3)


def test_pretraining_loss_decreases():
    torch.manual_seed(0)
    model = _tiny_model(seed=0)
    model.train()
    t = torch.linspace(0, 1, 256)[:, None]
    f = torch.linspace(0, 1, 128)[None, :]
    source = torch.stack([torch.sin(12 * t + 5 * f), torch.cos(20 * t * f + 3 * f)]) + 0.1 * torch.randn(2, 256, 128)
    masks = model.make_masks(2, 256, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses, frame = [], []
    for step in range(1, 51):
        out = model(source, masks)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.after_optimizer_step(step)
        losses.append(out["loss"].item())
        frame.append(out["frame_loss"].item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
    assert sum(frame[-5:]) < 0.5 * sum(frame[:5]), frame  # the decoder really predicts the targets


def test_no_weight_decay_and_bad_masks():
    model = _tiny_model()
    nwd = model.no_weight_decay()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert nwd <= trainable
    assert {"student.extra_tokens", "student.pre_norm.weight", "decoder.proj.bias"} <= nwd
    assert "student.pos_embed" not in nwd and not any(n.startswith("teacher.") for n in nwd)
    with pytest.raises(ValueError, match="does not fit"):
        model(torch.randn(2, 256, 128), torch.zeros(3, 128, dtype=torch.bool))
    uneven = model.make_masks(2, 256)
    uneven[0, :] = True
    with pytest.raises(ValueError, match="same number of visible"):
        model(torch.randn(2, 256, 128), uneven)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bf16_autocast_on_gpu_keeps_fp32_losses():
    model = _tiny_model().cuda()
    source = torch.randn(2, 256, 128, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(source, model.make_masks(2, 256))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    model.after_optimizer_step(1)


def test_fsdp2_sharded_student_and_teacher_match_plain_model(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        sharded, plain = _tiny_model(seed=4), _tiny_model(seed=4)
        for enc in (sharded.student, sharded.teacher):  # the same wrapping for both, blocks then root
            for block in enc.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(enc, mesh=mesh)
        assert isinstance(sharded.teacher.blocks[0].attn.qkv.weight, DTensor)
        source = torch.randn(2, 256, 128)
        mask = plain.make_masks(2, 256, generator=torch.Generator().manual_seed(0))
        noise = torch.zeros(int(mask.sum()), 96)
        for model in (sharded, plain):
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
            model(source, mask, noise=noise)["loss"].backward()  # student/teacher called through forward
            opt.step()
            model.after_optimizer_step(1)
        got = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in sharded.teacher.state_dict().items()}
        for name, value in plain.teacher.state_dict().items():
            assert torch.allclose(got[name], value, atol=1e-6), name
    finally:
        dist.destroy_process_group()
