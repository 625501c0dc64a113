"""Mixture pretraining (SSLAM stage 2, ``model.mix=true``): the mixing, the source retention loss against plain
references, seeded and bitwise-resumable mixture batches, the stage-2 recipes, a start from the
official-layout fixture (exact weights and teacher), and SSLAM-layout checkpoints wherever EAT's load."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import procs
import pytest
import torch
from safetensors.torch import load_file
from test_parity_official import official_checkpoint

import eat
from eat.audio.fbank import FrontendConfig
from eat.checkpoint_export import export_official
from eat.config import ConfigError, load_config
from eat.data import MaskConfig, PretrainDataset
from eat.data.loaders import collate
from eat.data.synthetic import make_unlabelled_corpus
from eat.model.convert import convert_checkpoint, encoder_key_map
from eat.model.eat import EATModel, eat_config
from eat.model.mixing import (
    OFFICIAL_CLEAN_FRACTION,
    clean_rows,
    draw_mix_rows,
    draw_mix_rows_batch,
    mix_spectrograms,
    retention_loss,
)
from eat.train import pretrain
from eat.train.dist import DistEnv
from eat.train.optim import param_groups
from eat.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
STAGE2 = ROOT / "recipes" / "configs" / "pretrain_sslam_stage2.yaml"
STAGE2_CPU = ROOT / "recipes" / "configs" / "sslam_stage2_small_cpu.yaml"
TINY = ROOT / "recipes" / "configs" / "tiny.yaml"
# the CPU recipe at the official fixture's architecture (tiny: 96 wide, 3 blocks; positions for 20 rows)
FIXTURE_ARCH = ["model.encoder.embed_dim=96", "model.encoder.depth=3", "model.encoder.num_heads=4",
                "model.decoder_dim=96", "model.average_top_k_layers=3", "model.encoder.max_time_patches=20"]


# ------------------------------------------------------------------------------------- plain references


def ref_targets(ffn: list[torch.Tensor], top_k: int, extra: int = 1) -> torch.Tensor:
    """EAT's target written out: per layer and channel (x - mean) / sqrt(var + 1e-5) over the tokens,
    averaged over the top layers, then (x - mean) / sqrt(var + 1e-5) over the channels."""
    acc = 0
    for t in ffn[-top_k:]:
        t = t[:, extra:].double()
        acc = acc + (t - t.mean(1, keepdim=True)) / torch.sqrt(t.var(1, unbiased=False, keepdim=True) + 1e-5)
    y = acc / top_k
    return (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + 1e-5)


def ref_retention_loss(pred, own, partner_at_mixed, mix_ids, masked_ids, scale) -> float:
    """Loops: for every mixture clone and masked token, the target is the mean of the own clip's and the
    partner's target where the partner is mixed in, else the own clip's."""
    rows, masked, _ = pred.shape
    clones = rows // own.shape[0]
    total = 0.0
    for r in range(rows):
        b = r // clones
        where = {int(n): k for k, n in enumerate(mix_ids[b])}
        for m in range(masked):
            n = int(masked_ids[r, m])
            target = own[b, n] if n not in where else (own[b, n] + partner_at_mixed[b, where[n]]) / 2
            total += float(((pred[r, m].double() - target.double()) ** 2).sum()) * scale
    return total / (rows * masked)


def ref_mixture(source, mix_rows, stride):
    out = source.clone()
    for b in range(source.shape[0]):
        for t in range(source.shape[-2]):
            row = t // stride
            if row < mix_rows.shape[1] and mix_rows[b, row]:
                out[b, ..., t, :] = torch.maximum(source[b, ..., t, :], source[b - 1, ..., t, :])
    return out


# ------------------------------------------------------------------------------------- the pieces


def test_clean_windows_follow_the_official_ranges():
    assert clean_rows(64, OFFICIAL_CLEAN_FRACTION) == 15 and clean_rows(16, OFFICIAL_CLEAN_FRACTION) == 4
    g = torch.Generator().manual_seed(0)
    starts1, starts2 = set(), set()
    for _ in range(3000):
        rows = draw_mix_rows(64, 15, g)
        assert int(rows.sum()) == 64 - 30
        clean = (~rows).nonzero().flatten().tolist()
        # two windows of 15 rows (possibly touching): the first starts in 0..31, the second ends by row 62
        s1, s2 = clean[0], clean[15]
        assert clean[:15] == list(range(s1, s1 + 15)) and clean[15:] == list(range(s2, s2 + 15))
        starts1.add(s1)
        starts2.add(s2)
    # SSLAM: first start a multiple of 16 frames in 0..500 (rows 0..31), second in start1 + 240 .. 782 (..48)
    assert starts1 == set(range(32)) and min(starts2) == 15 and max(starts2) == 48
    with pytest.raises(ValueError):
        clean_rows(2, 0.25)
    # the model's batched draw on the device (no host sync): the same windows, the same support
    batched = draw_mix_rows_batch(3000, 64, 15, torch.Generator().manual_seed(1))
    assert (batched.sum(1) == 64 - 30).all()
    for rows in batched[:200]:
        clean = (~rows).nonzero().flatten().tolist()
        s1, s2 = clean[0], clean[15]
        assert clean[:15] == list(range(s1, s1 + 15)) and clean[15:] == list(range(s2, s2 + 15))
    first = (~batched).int().argmax(1)
    second = 63 - (~batched).int().flip(1).argmax(1) - 14
    assert set(first.tolist()) == set(range(32)) and int(second.min()) == 15 and int(second.max()) == 48
    pair_counts = torch.bincount(first, minlength=32).float()  # uniform first start: each ~3000/32
    assert pair_counts.min() > 50 and pair_counts.max() < 140


def test_mixture_is_the_max_with_the_previous_clip_on_the_mixed_rows():
    g = torch.Generator().manual_seed(1)
    source = torch.randn(3, 1, 70, 16, generator=g)  # 70 frames: the last 6 belong to no 16-frame row
    mix_rows = torch.stack([draw_mix_rows(4, 1, g) for _ in range(3)])
    mixed = mix_spectrograms(source, mix_rows, 16)
    assert torch.equal(mixed, ref_mixture(source, mix_rows, 16))
    assert torch.equal(mix_spectrograms(source[:, 0], mix_rows, 16), mixed[:, 0])  # (B, T, F) too


def test_retention_loss_equals_a_plain_reference_on_random_tensors():
    g = torch.Generator().manual_seed(2)
    b, c, n, d, k, m = 3, 2, 12, 5, 7, 9
    own, partner_t = torch.randn(b, n, d, generator=g), torch.randn(b, k, d, generator=g)
    mix_ids = torch.stack([torch.randperm(n, generator=g)[:k].sort().values for _ in range(b)])
    masked_ids = torch.stack([torch.randperm(n, generator=g)[:m].sort().values for _ in range(b * c)])
    pred = torch.randn(b * c, m, d, generator=g)
    got = retention_loss(pred, own, partner_t, mix_ids, masked_ids, 0.3)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(ref_retention_loss(pred, own, partner_t, mix_ids, masked_ids, 0.3), rel=1e-5)
    # a wrong pairing (the partner's targets of the next mixture) is caught
    wrong = ref_retention_loss(pred, own, partner_t.roll(1, 0), mix_ids, masked_ids, 0.3)
    assert abs(float(got) - wrong) > 1e-3


def test_model_forward_wires_mixtures_teacher_and_retention_loss_like_the_reference():
    """The whole mixture forward against references built from the model's own modules run separately:
    the teacher's input is [clips, mixtures]; the partner of mixture b is clip b - 1, run alone on its
    mixed tokens; the CLS target comes from the top block only; loss = frame + CLS sum + retention."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(eat_config("tiny"), mix=True, utterance_top_k_layers=1, clone_batch=2)
    cfg.encoder.target_length = 128  # 8 x 8 patches, clean windows of 2 rows
    model = EATModel(cfg)
    for p in model.teacher.parameters():  # a teacher that differs from the student
        p.data.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(3)
    batch, frames = 3, 128
    source = torch.randn(batch, frames, 128, generator=g)
    mask = model.make_masks(batch, frames, generator=g)
    mix_rows = model.make_mix_rows(batch, frames, generator=g)
    seen = {}
    def keep(name, value):
        seen.setdefault(name, value)  # the first call only; returns None, so the output is unchanged

    h1 = model.teacher.register_forward_hook(lambda mod, args, out: keep("teacher_in", args[0]))
    h2 = model.decoder.register_forward_hook(lambda mod, args, out: keep("pred", out.detach().float()))
    out = model(source, mask, mix_rows=mix_rows)
    h1.remove(), h2.remove()

    mixtures = ref_mixture(source, mix_rows, 16)
    assert torch.equal(seen["teacher_in"], torch.cat([source, mixtures]))
    with torch.no_grad():
        _, ffn_own = model.teacher(source, return_ffn=True)
        own = ref_targets(ffn_own, 3)
        mix_ids = torch.stack([(r.repeat_interleave(8)).nonzero().flatten() for r in mix_rows])
        partner_t = []
        for bi in range(batch):  # one clip at a time: clip b - 1 (cyclic), only its tokens on the mixed rows
            tokens = model.teacher.embed(source[(bi - 1) % batch][None])
            _, ffn = model.teacher.forward_tokens(tokens[:, mix_ids[bi]], return_ffn=True)
            partner_t.append(ref_targets(ffn, 3))
        partner_t = torch.cat(partner_t)
    masked_ids = torch.stack([r.nonzero().flatten() for r in mask])
    rows = batch * cfg.clone_batch
    pred_mix = seen["pred"][rows:]
    ref = ref_retention_loss(pred_mix, own, partner_t, mix_ids, masked_ids, 1 / math.sqrt(96))
    assert out["retention_loss"].item() == pytest.approx(ref, rel=1e-4)

    # the CLS target is the token mean of the top block's target, over clips and mixtures
    with torch.no_grad():
        _, ffn_all = model.teacher(torch.cat([source, mixtures]), return_ffn=True)
        cls_target = ref_targets(ffn_all, 1).mean(1).float()
        y_all = ref_targets(ffn_all, 3).float()
    assert torch.allclose(cls_target, model.layer_targets(ffn_all, 1).mean(1), atol=1e-5)
    assert torch.allclose(y_all, model.layer_targets(ffn_all, 3), atol=1e-5)
    item = torch.arange(2 * rows) // cfg.clone_batch
    frame_ref = ((seen["pred"] - y_all[item[:, None], torch.cat([masked_ids, masked_ids])]) ** 2).sum(-1).mean()
    assert out["frame_loss"].item() == pytest.approx(float(frame_ref) / math.sqrt(96), rel=1e-4)
    total = out["frame_loss"] + out["utterance_loss"] + out["retention_loss"]
    torch.testing.assert_close(out["loss"], total)
    assert int(out["sample_size"]) == 2 * rows * masked_ids.shape[1]


def test_mix_rows_come_from_the_item_seed_and_leave_the_masks_alone(tmp_path):
    manifest = make_unlabelled_corpus(tmp_path, num_clips=4, duration=1.0, seed=0)
    frontend = FrontendConfig.from_preset("audioset", target_length=128)
    plain = PretrainDataset(manifest, frontend, MaskConfig(clones=2, grid=(8, 8)), seed=5)
    mixed = PretrainDataset(manifest, frontend, MaskConfig(clones=2, grid=(8, 8), mix_clean_rows=2), seed=5)
    a, b = mixed[(1, 3)], mixed[(1, 3)]
    assert torch.equal(a["mix_rows"], b["mix_rows"]) and a["mix_rows"].shape == (8,) and int(a["mix_rows"].sum()) == 4
    assert torch.equal(a["mask"], plain[(1, 3)]["mask"]) and "mix_rows" not in plain[(1, 3)]
    draws = {tuple(mixed[(1, e)]["mix_rows"].tolist()) for e in range(12)}
    assert len(draws) > 3  # a new mixture layout each epoch
    batch = collate([mixed[(i, 0)] for i in range(4)])
    assert batch["mix_rows"].shape == (4, 8) and batch["mask"].shape == (8, 64)


# ------------------------------------------------------------------------------------- runs and recipes


def _cfg(path: Path, out: Path, *overrides: str) -> pretrain.PretrainConfig:
    return load_config(pretrain.PretrainConfig, path, [f"train.out_dir={out}", "train.tensorboard=false",
                                                       "train.cpu_threads=1", *overrides])


def test_resume_through_mixture_batches_is_bitwise(tmp_path):
    manifest = make_unlabelled_corpus(tmp_path / "corpus", num_clips=12, duration=1.5, seed=0)
    common = [f"data.train_manifest={manifest}", "data.num_workers=0", "data.batch_size=3", "model.mix=true",
              "model.clone_batch=2", "model.encoder.target_length=128", "train.max_steps=4", "train.log_every=1",
              "train.keep_last=0"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert pretrain.run(_cfg(TINY, full, *common, "train.save_every=2")) == 0
    assert pretrain.run(_cfg(TINY, resumed, *common, "train.save_every=0",
                             f"train.resume={full / 'step_000002'}")) == 0
    a, b = load_file(full / "step_000004" / "model.safetensors"), load_file(resumed / "step_000004" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("teacher.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for key, value in load_file(full / "step_000004" / "optimizer.safetensors").items():
        assert torch.equal(value, load_file(resumed / "step_000004" / "optimizer.safetensors")[key]), key
    logged = [line for line in (resumed / "metrics.jsonl").read_text().splitlines() if "retention_loss" in line]
    assert logged, "the retention loss is logged"


def test_the_stage2_recipes_resolve_to_the_official_settings(tmp_path):
    cfg = _cfg(STAGE2, tmp_path, "model.init=/x.pt")
    model_cfg = pretrain.resolve_model(cfg.model)
    assert model_cfg.mix and model_cfg.clone_batch == 8 and model_cfg.utterance_top_k_layers == 1
    assert model_cfg.mix_clean_fraction * 1024 == 240 and model_cfg.retention_loss_weight == 1.0
    # the official EMA schedule, not the continued-pretraining default, although model.init is set
    assert (model_cfg.ema_decay, model_cfg.ema_end_decay, model_cfg.ema_anneal_end_step) == (0.9998, 0.99999, 100000)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.train.max_steps, cfg.data.batch_size) == (5e-5, 25000, 200000, 12)
    assert (cfg.optim.betas, cfg.optim.weight_decay, cfg.optim.clip_grad) == ((0.9, 0.95), 0.05, 4.0)
    small = pretrain.resolve_model(_cfg(STAGE2_CPU, tmp_path).model)
    small_cpu = pretrain.resolve_model(_cfg(ROOT / "recipes" / "configs" / "small_cpu.yaml", tmp_path).model)
    assert small.encoder == small_cpu.encoder and small.mix and small.clone_batch * 2 == small_cpu.clone_batch


def test_stage2_from_the_official_fixture_starts_from_its_weights_and_teacher(tmp_path):
    official = tmp_path / "eat_tiny_pt.pt"
    torch.save(official_checkpoint("pretrain"), official)
    fx = torch.load(FIXTURES / "eat_tiny_parity.pt", weights_only=True)
    cfg = _cfg(STAGE2_CPU, tmp_path / "run", f"model.init={official}", *FIXTURE_ARCH, "train.resume=none")
    model, model_cfg = pretrain.build_model(cfg)
    assert model_cfg.mix
    names = encoder_key_map(3)
    teacher, student = model.teacher.state_dict(), model.student.state_dict()
    for theirs, value in fx["state_dict"].items():
        if theirs.startswith("_ema."):
            assert torch.equal(teacher[names[theirs[5:]]], value), theirs
        elif theirs in names:
            assert torch.equal(student[names[theirs]], value.float()), theirs
    decoder = {k: v for k, v in fx["state_dict"].items() if ".decoder." in k}
    assert len(decoder) == len(model.decoder.state_dict()) and decoder

    # one update of the real trainer on the fixture's input with the recipe's mixtures
    frontend = pretrain.frontend_for(cfg.data, model_cfg)
    source = fx["source"][:, 0]
    g = torch.Generator().manual_seed(0)
    batch = {"source": source, "mask": model.make_masks(2, 256, generator=g), "num_skipped": 0,
             "mix_rows": model.make_mix_rows(2, 256, generator=g)}
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    trainer = Trainer(model, [batch], cfg.train, cfg.optim, env,
                      lambda m: param_groups(m, cfg.optim.weight_decay, cfg.optim.decay_all),
                      prepare=pretrain.PretrainBatchPrep(frontend))
    values = trainer.train_step(batch)
    trainer.logger.close()
    assert torch.isfinite(values["retention_loss"]) and float(values["retention_loss"]) > 0
    assert trainer.step == 1 and not values["skipped"]


def sslam_checkpoint(kind: str = "pretrain") -> dict:
    """A checkpoint as SSLAM's code saves it. Its model class is EAT's (``data2vec_multi`` /
    ``mae_image_classification``, same parameter names); what differs is the stored config: stage 2 runs
    with ``clone_batch`` 8 and carries the extra (switched-off) options of SSLAM's config class."""
    ckpt = official_checkpoint(kind)
    model_cfg = dict(ckpt["cfg"]["model"])
    extra = {"clone_batch": 8, "utterance_level": False, "init_center_token_zero": False, "center_exp": 0.9,
             "softmax_temperature_student": 0.1, "softmax_temperature_teacher": 0.04, "recon_loss": 0.0}
    if kind == "pretrain":
        model_cfg.update(extra)
    else:
        model_cfg["pretrained_model_args"] = {"model": {**model_cfg["pretrained_model_args"]["model"], **extra}}
    return {"cfg": {"model": model_cfg}, "model": ckpt["model"]}


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_sslam_checkpoints_load_wherever_official_eat_checkpoints_load(kind, tmp_path):
    path = tmp_path / f"sslam_{kind}.pt"
    torch.save(sslam_checkpoint(kind), path)
    conv = convert_checkpoint(sslam_checkpoint(kind))
    ref = convert_checkpoint(official_checkpoint(kind))
    assert conv.encoder.keys() == ref.encoder.keys()
    assert all(torch.equal(conv.encoder[k], ref.encoder[k]) for k in ref.encoder)
    if kind == "pretrain":
        assert conv.eat_cfg is not None and conv.eat_cfg.clone_batch == 8, conv.notes
        init = pretrain.load_init(path)  # model.init
        assert init.teacher is not None and init.decoder is not None
        cfg = _cfg(STAGE2_CPU, tmp_path / "run", f"model.init={path}", *FIXTURE_ARCH)
        model, _ = pretrain.build_model(cfg)
        assert torch.equal(model.teacher.state_dict()["blocks.0.norm1.weight"], ref.teacher["blocks.0.norm1.weight"])
    export = tmp_path / f"export_{kind}"
    export_official(path, export)  # what tools/convert_official.py runs
    extractor = eat.load_encoder(export)
    assert torch.equal(extractor.encoder.state_dict()["blocks.2.mlp.fc2.weight"], ref.encoder["blocks.2.mlp.fc2.weight"])


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=1", "data.batch_size: mixture pretraining"),
    ("model.encoder.target_length=32", "model.mix_clean_fraction: 2 time patches are too few"),
    ("model.mix_clean_fraction=0.6", "model.mix_clean_fraction: the clean-window fraction must lie in"),
    ("model.utterance_top_k_layers=9", "utterance_top_k_layers must be in"),
])
def test_mixture_settings_no_run_can_use_are_one_line_errors(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        pretrain.check_config(_cfg(STAGE2_CPU, tmp_path, f"data.train_manifest={STAGE2}", override))


def test_flops_count_the_mixtures_and_the_partners_teacher_pass():
    """Clips + mixtures at C/2 clones cost the student and decoder of plain EAT at C clones; the teacher
    runs twice on whole inputs plus once on the partner's mixed tokens (34 of 64 rows at 10.24 s)."""
    from eat.train.flops import blocks_forward, patch_embed_forward, pretrain_flops

    base = eat_config("base")
    mix = dataclasses.replace(base, mix=True, clone_batch=8)
    plain, mixed = pretrain_flops(base), pretrain_flops(mix)
    assert mixed["student"] == pytest.approx(plain["student"] + 2 * patch_embed_forward(base.encoder, 512))
    assert mixed["decoder"] == pytest.approx(plain["decoder"])
    partial = patch_embed_forward(base.encoder, 512) + blocks_forward(base.encoder, 34 * 8 + 1)
    assert mixed["teacher"] == pytest.approx(2 * plain["teacher"] + partial)


def test_stage2_recipe_on_a_folder_of_audio_from_an_official_checkpoint(tmp_path):
    """What ``make pretrain CONFIG=recipes/configs/sslam_stage2_small_cpu.yaml DATA=... INIT=...`` runs, in one
    process: prepare the folder, continue the official weights with mixtures, log the retention loss."""
    import json
    import os
    import sys

    official = tmp_path / "eat_tiny_pt.pt"
    torch.save(official_checkpoint("pretrain"), official)
    audio = make_unlabelled_corpus(tmp_path / "corpus", num_clips=6, duration=2.0, seed=3).parent
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "recipes" / "pretrain_as2m.py"), "--config", str(STAGE2_CPU), "--data-dir",
           str(audio), f"model.init={official}", *FIXTURE_ARCH, f"train.out_dir={out}", "train.max_steps=2",
           "train.log_every=1", "data.num_workers=0", "data.batch_size=3"]
    proc = procs.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "mixture with its neighbour" in proc.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "retention_loss" in r] == [1, 2]
