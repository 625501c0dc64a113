"""Continued pretraining (``model.init``) and pretraining on a folder of your own audio.

* From the official-layout tiny fixture written as a fairseq checkpoint: the teacher starts bitwise equal to
  the ``_ema`` weights and the first step through the real trainer reproduces the recorded official loss.
* 50 CPU steps continued on a different synthetic corpus lower the loss; the run exports and loads.
* Our checkpoints, exports, HF-layout files and checkpoints without a teacher/decoder as ``model.init``;
  positional-table slicing; the one-line mismatch error.
* ``recipes/pretrain_as2m.py --data-dir`` (what ``make pretrain DATA=...`` runs) end to end, with the
  normalisation statistics checked against a direct computation.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
import soundfile
import torch
import yaml
from safetensors.torch import load_file, save_file
from test_parity_official import official_checkpoint

import eat
from eat.audio.fbank import fbank, pad_or_crop
from eat.audio.io import load_audio, remove_dc
from eat.checkpoint_export import export_checkpoint
from eat.config import ConfigError, load_config
from eat.data.synthetic import make_unlabelled_corpus
from eat.model.convert import convert_checkpoint, encoder_key_map, to_official
from eat.train import pretrain
from eat.train.dist import DistEnv
from eat.train.optim import param_groups
from eat.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TINY = ROOT / "recipes" / "configs" / "tiny.yaml"
RECIPE = ROOT / "recipes" / "pretrain_as2m.py"
# the fixture's positional table covers 20 time patches (the tiny preset's default is 768)
FIXTURE_ARCH = "model.encoder.max_time_patches=20"


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURES / "eat_tiny_parity.pt", weights_only=True)


@pytest.fixture(scope="module")
def official_pt(tmp_path_factory) -> Path:
    """The fixture's official weights as a fairseq checkpoint file (``cfg`` + ``model`` with nested ``_ema``)."""
    path = tmp_path_factory.mktemp("official") / "eat_tiny_pt.pt"
    torch.save(official_checkpoint("pretrain"), path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A synthetic corpus other than the one the fixture's input came from (seed 1, 2 s clips)."""
    return make_unlabelled_corpus(tmp_path_factory.mktemp("corpus"), num_clips=16, duration=2.0, seed=1)


def _cfg(tmp_path: Path, *overrides: str) -> pretrain.PretrainConfig:
    return load_config(pretrain.PretrainConfig, TINY, [f"train.out_dir={tmp_path}", "train.tensorboard=false",
                                                       "train.cpu_threads=1", *overrides])


def _env() -> DistEnv:
    return DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_first_step_from_the_official_checkpoint_reproduces_the_official_loss(fx, official_pt, tmp_path):
    cfg = _cfg(tmp_path, f"model.init={official_pt}", FIXTURE_ARCH, "train.resume=none")
    model, model_cfg = pretrain.build_model(cfg)

    # the teacher is the checkpoint's EMA model, bitwise (fp32 in the file); the student its fp16 weights
    ours = {theirs: mine for theirs, mine in encoder_key_map(3).items()}
    teacher, student = model.teacher.state_dict(), model.student.state_dict()
    ema = {k[len("_ema."):]: v for k, v in fx["state_dict"].items() if k.startswith("_ema.")}
    assert len(ema) == len(teacher)
    for key, value in ema.items():
        assert value.dtype == torch.float32 and torch.equal(teacher[ours[key]], value), key
    assert torch.equal(student["blocks.1.attn.qkv.weight"], fx["state_dict"]["blocks.1.attn.qkv.weight"].float())
    assert not torch.equal(student["blocks.1.attn.qkv.weight"], teacher["blocks.1.attn.qkv.weight"])
    # continued training uses its own EMA schedule unless the config sets one
    assert (model_cfg.ema_decay, model_cfg.ema_end_decay) == (0.9999, 0.9999) and model.ema_decay_at(1) == 0.9999

    # one update of the real trainer on the recorded input, masks and decoder noise
    frontend = pretrain.frontend_for(cfg.data, model_cfg)
    prep = pretrain.PretrainBatchPrep(frontend)

    def prepare(batch, device):
        kwargs, counts = prep(batch, device)
        return {**kwargs, "noise": fx["mask_noise_masked"]}, counts

    batch = {"source": fx["source"], "mask": fx["precomputed_mask"].bool(), "num_skipped": 0}
    trainer = Trainer(model, [batch], cfg.train, cfg.optim, _env(),
                      lambda m: param_groups(m, cfg.optim.weight_decay, cfg.optim.decay_all), prepare=prepare)
    values = trainer.train_step(batch)
    trainer.logger.close()
    torch.testing.assert_close(values["loss"], fx["loss"], rtol=1e-5, atol=0)
    assert trainer.step == 1 and not values["skipped"]


def test_fifty_steps_on_another_corpus_lower_the_loss_and_the_run_exports(official_pt, corpus, tmp_path, caplog):
    out = tmp_path / "continued"
    cfg = _cfg(out, f"model.init={official_pt}", FIXTURE_ARCH, f"data.train_manifest={corpus}",
               "data.num_workers=0", "train.max_steps=50", "train.log_every=1", "train.save_every=0",
               "optim.warmup_steps=5", "optim.lr=5e-4")
    with caplog.at_level(logging.INFO):
        assert pretrain.run(cfg) == 0
    assert f"from {official_pt}" in caplog.text
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("kind", "train") == "train" and "loss" in json.loads(line)]
    assert len(losses) == 50 and all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"continued loss: first 5 steps {first:.4f}, last 5 steps {last:.4f}")
    assert last < 0.8 * first, (first, last)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["init"] == str(official_pt) and saved["model"]["ema_end_decay"] == 0.9999

    path, what = export_checkpoint(out, tmp_path / "export")
    assert "student" in what
    extractor = eat.load_encoder(path)
    state = load_file(out / "step_000050" / "model.safetensors")
    assert torch.equal(extractor.encoder.state_dict()["blocks.2.mlp.fc2.weight"], state["student.blocks.2.mlp.fc2.weight"])
    feats = extractor.extract_features(torch.randn(32000), sample_rate=16000)
    assert feats.embeddings.shape[-1] == 96 and torch.isfinite(feats.embeddings).all()

    # both the run (ours: student, teacher, decoder) and its export (encoder only) start a new run
    ckpt = pretrain.load_init(out)
    assert ckpt.teacher is not None and ckpt.decoder is not None
    assert torch.equal(ckpt.teacher["pos_embed"], state["teacher.pos_embed"])
    exported = pretrain.load_init(path)
    assert exported.teacher is None and exported.decoder is None
    model, _ = pretrain.build_model(_cfg(tmp_path / "again", f"model.init={path}", FIXTURE_ARCH))
    assert torch.equal(model.teacher.state_dict()["blocks.0.norm1.weight"], state["student.blocks.0.norm1.weight"])
    assert "starts as a copy of the student" in caplog.text and "decoder starts from random" in caplog.text


def test_hugging_face_layout_and_missing_teacher(fx, tmp_path, caplog):
    ck = official_checkpoint("pretrain")
    enc = convert_checkpoint(ck).encoder
    hf = to_official(enc, 3, layout="hf")
    snap = tmp_path / "hf"
    snap.mkdir()
    save_file({k: v.contiguous() for k, v in hf.items()}, snap / "model.safetensors")
    (snap / "config.json").write_text(json.dumps({"embed_dim": 96, "depth": 3, "num_heads": 4, "max_length": 20}))
    with caplog.at_level(logging.WARNING):
        model, _ = pretrain.build_model(_cfg(tmp_path, f"model.init={snap}", FIXTURE_ARCH))
    assert torch.equal(model.student.state_dict()["patch_embed.weight"], enc["patch_embed.weight"])
    assert torch.equal(model.teacher.state_dict()["patch_embed.weight"], enc["patch_embed.weight"])
    assert "no EMA teacher" in caplog.text and "no decoder" in caplog.text
    # a fairseq checkpoint without _ema: teacher = student, the decoder is still loaded
    no_ema = official_checkpoint("pretrain")
    del no_ema["model"]["_ema"]
    path = tmp_path / "no_ema.pt"
    torch.save(no_ema, path)
    model, _ = pretrain.build_model(_cfg(tmp_path, f"model.init={path}", FIXTURE_ARCH))
    t, s = model.teacher.state_dict(), model.student.state_dict()
    assert all(torch.equal(t[k], s[k]) for k in s)
    key = "modality_encoders.IMAGE.decoder.proj.weight"
    assert torch.equal(model.decoder.state_dict()["proj.weight"], ck["model"][key].float())


def test_positional_table_is_sliced_for_shorter_clips(fx, official_pt, tmp_path):
    cfg = _cfg(tmp_path, f"model.init={official_pt}", "model.encoder.max_time_patches=8",
               "model.encoder.target_length=128")
    model, model_cfg = pretrain.build_model(cfg)
    table = fx["state_dict"]["modality_encoders.IMAGE.fixed_positional_encoder.positions"]
    assert table.shape[1] == 20 * 8
    assert torch.equal(model.student.pos_embed, table[:, : 8 * 8].float())
    assert torch.equal(model.teacher.pos_embed, table[:, : 8 * 8].float())
    out = model(torch.randn(2, 128, 128))  # 1.28 s clips train
    assert torch.isfinite(out["loss"])
    assert model.student.state_dict()["blocks.0.norm1.weight"].equal(
        fx["state_dict"]["blocks.0.norm1.weight"].float())


def test_mismatched_architecture_is_one_line_naming_keys_and_shapes(official_pt, tmp_path):
    with pytest.raises(ConfigError) as info:
        pretrain.build_model(_cfg(tmp_path, f"model.init={official_pt}", FIXTURE_ARCH, "model.encoder.mlp_ratio=2"))
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"model.init: fairseq-pretrain checkpoint {official_pt} does not fit")
    assert "student.blocks.0.mlp.fc1.weight (384, 96) vs (192, 96)" in text and "more" in text
    with pytest.raises(ConfigError, match=r"student.pos_embed \(1, 160, 96\) vs \(1, 6144, 96\)"):
        pretrain.build_model(_cfg(tmp_path, f"model.init={official_pt}"))  # file table shorter than the model's
    with pytest.raises(ConfigError, match="model.init: .*nope.pt: no such file"):
        pretrain.build_model(_cfg(tmp_path, f"model.init={tmp_path / 'nope.pt'}"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="model.init: .*bad.pt: not a readable PyTorch checkpoint"):
        pretrain.build_model(_cfg(tmp_path, f"model.init={bad}"))


def test_choose_target_length():
    frames = [148] * 8 + [98, 400]
    length, why = pretrain.choose_target_length(frames, max_length=1024)
    assert length == 160 and "1 of 10 are padded" not in why and "9 of 10 are padded, 1 cropped" in why
    assert pretrain.choose_target_length(frames, max_length=144)[0] == 144
    assert pretrain.choose_target_length([3], max_length=1024)[0] == 16
    length, why = pretrain.choose_target_length(frames, max_length=1024, requested=100)
    assert length == 100 and "as requested" in why and "8 cropped" not in why and "9 cropped" in why


def _direct_stats(paths: list[Path], target_length: int) -> tuple[float, float]:
    """Mean and std of the unnormalised, padded fbanks, computed directly (float64, all values at once)."""
    values = []
    for p in paths:
        wave = remove_dc(load_audio(p, sample_rate=16000))
        fb = pad_or_crop(fbank(wave, 16000, 128, 25.0, 10.0), target_length, "head", torch.Generator())
        values.append(fb.double().reshape(-1))
    allv = torch.cat(values)
    return float(allv.mean()), float(allv.std(unbiased=False))


@pytest.mark.slow
def test_pretrain_on_a_folder_of_audio_end_to_end(tmp_path):
    audio = tmp_path / "my_audio"
    make_unlabelled_corpus(audio, num_clips=10, duration=1.5, seed=3)
    (audio / "train.tsv").unlink()  # a plain folder of wav files, nested one level
    flac = audio / "audio" / "extra.flac"
    soundfile.write(flac, np.random.default_rng(0).uniform(-0.3, 0.3, 24000).astype(np.float32), 16000)
    (audio / "audio" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    out = tmp_path / "run"
    cmd = [sys.executable, str(RECIPE), "--config", str(TINY), "--data-dir", str(audio), f"train.out_dir={out}",
           "train.max_steps=2", "train.log_every=1", "data.num_workers=0", "train.tensorboard=false",
           "train.cpu_threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = procs.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "11 clips (1 unreadable left out)" in text and "broken.wav" in text
    assert "target_length 160 frames (1.60 s)" in text and "11 of 11 are padded" in text

    prepared = json.loads((out / "data" / "prepared.json").read_text())["result"]
    manifest = (out / "data" / "train.tsv").read_text().splitlines()
    assert manifest[0] == str(audio.resolve()) and len(manifest) == 12 and any("extra.flac" in m for m in manifest)
    paths = [audio / line.split("\t")[0] for line in manifest[1:]]
    mean, std = _direct_stats(paths, 160)
    assert prepared["norm_mean"] == pytest.approx(mean, abs=1e-9) and prepared["norm_std"] == pytest.approx(std, rel=1e-9)
    assert abs(mean - (-4.268)) > 0.1  # not AudioSet's statistics
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["norm_mean"] == prepared["norm_mean"] and saved["data"]["norm_std"] == prepared["norm_std"]
    assert saved["model"]["encoder"]["target_length"] == 160
    assert saved["data"]["train_manifest"] == str((out / "data" / "train.tsv").resolve())
    assert (out / "step_000002" / "complete").is_file()
    path, _ = export_checkpoint(out, tmp_path / "export")
    frontend = eat.load_encoder(path).frontend  # the export carries the data's own statistics
    assert frontend.norm_mean == pytest.approx(mean, abs=1e-9) and frontend.norm_std == pytest.approx(std, rel=1e-9)
    assert frontend.target_length == 160

    # the same command again reuses the prepared files (nothing is scanned or computed twice)
    record = out / "data" / "prepared.json"
    before = record.stat().st_mtime_ns
    overrides, again = pretrain.own_data_overrides(TINY, [f"train.out_dir={out}"], audio, progress=False)
    assert record.stat().st_mtime_ns == before and again.norm_mean == prepared["norm_mean"]
    assert overrides[-1] == f"train.out_dir={out}"  # the user's own overrides come last and win

    # --prepare-only prepares and trains nothing; a length given on the command line is kept
    other = tmp_path / "run128"
    proc = procs.run([sys.executable, str(RECIPE), "--config", str(TINY), "--data-dir", str(audio),
                           "--prepare-only", f"train.out_dir={other}", "model.encoder.target_length=128"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "target_length 128 frames (1.28 s): as requested" in proc.stdout
    assert (other / "data" / "prepared.json").is_file() and not (other / "metrics.jsonl").exists()


def test_make_pretrain_runs_the_preparation_then_the_run():
    """``make pretrain DATA=... INIT=...`` prepares in one process, checks the config in one process (a bad key is
    one line there, not torchrun's traceback), then starts torchrun with the same data."""
    proc = procs.run(["make", "-n", "pretrain", "DATA=/my/audio", "INIT=/w/eat.pt", "NPROC=2"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "pretrain_as2m.py" in line]
    assert len(lines) == 3
    prep, check, run = lines
    assert "--check" in check and "--data-dir /my/audio" in check and "model.init=/w/eat.pt" in check
    assert "--data-dir /my/audio" in prep and "--prepare-only" in prep and "model.init=/w/eat.pt" in prep
    assert "torchrun" in run and "--nproc_per_node=2" in run and "--data-dir /my/audio" in run
    assert "model.init=/w/eat.pt" in run and "pretrain_own_data.yaml" in run


def test_data_dir_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="--data-dir .*missing: no such folder"):
        pretrain.own_data_overrides(TINY, [f"train.out_dir={tmp_path}"], tmp_path / "missing", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no wav/flac files"):
        pretrain.own_data_overrides(TINY, [f"train.out_dir={tmp_path}"], empty, progress=False)
    (empty / "x.wav").write_bytes(b"")
    with pytest.raises(ConfigError, match="none of the 1 wav/flac files is readable"):
        pretrain.own_data_overrides(TINY, [f"train.out_dir={tmp_path}"], empty, progress=False)
    with pytest.raises(ConfigError, match="with several processes run the preparation once first"):
        pretrain.own_data_overrides(TINY, [f"train.out_dir={tmp_path}"], empty, world_size=2, progress=False)


def test_continued_ema_default_and_overrides():
    official = pretrain.resolve_model({"preset": "tiny"})
    assert (official.ema_decay, official.ema_end_decay, official.ema_anneal_end_step) == (0.9998, 0.99999, 100000)
    continued = pretrain.resolve_model({"preset": "tiny", "init": "weights.pt"})
    assert (continued.ema_decay, continued.ema_end_decay, continued.ema_anneal_end_step) == (0.9999, 0.9999, 0)
    mine = pretrain.resolve_model({"preset": "tiny", "init": "weights.pt", "ema_decay": 0.999, "ema_end_decay": 0.999})
    assert (mine.ema_decay, mine.ema_end_decay) == (0.999, 0.999)
    with pytest.raises(ConfigError, match="model.init: expected a path"):
        pretrain.resolve_model({"preset": "tiny", "init": 3})
