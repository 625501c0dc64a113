"""SED fine-tuning (recipes/finetune.py --task sed): label-aligned augmentation and tiny end-to-end runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from eat.audio.fbank import FrontendConfig
from eat.data.strong_labels import Event, write_strong_tsv
from eat.detect import load_detector
from eat.export import save_export
from eat.model.vit import Encoder, EncoderConfig
from eat.train.sed import _roll

pytest.importorskip("sed_scores_eval")
SR = 16000


def test_roll_moves_fbank_and_labels_together():
    """Frame j of the targets describes fbank frames 4j..4j+3 before and after the roll."""
    fb = torch.arange(64, dtype=torch.float32)[None, :, None].expand(2, 64, 3).clone()
    y = (torch.arange(16)[None, :, None] * 4).float().expand(2, 16, 1).clone()  # the first frame of each hop
    k = torch.tensor([3, 13])
    fb2, y2 = _roll(fb, k * 4), _roll(y, k)
    for b in range(2):
        for j in range(16):
            assert fb2[b, 4 * j, 0] == y2[b, j, 0]


def _data(root: Path, n_train: int = 8, n_test: int = 2) -> dict[str, str]:
    rng = np.random.default_rng(0)
    tables = {}
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True)
        events = {}
        for i in range(n):
            x = 0.01 * rng.standard_normal(int(2.0 * SR)).astype(np.float32)
            ev = []
            for label, freq in (("low", 500.0), ("high", 3000.0)):
                on = round(float(rng.uniform(0, 1.2)), 2)
                off = round(on + float(rng.uniform(0.3, 0.7)), 2)
                a, b = int(on * SR), int(off * SR)
                x[a:b] += 0.3 * np.sin(2 * np.pi * freq * np.arange(b - a) / SR).astype(np.float32)
                ev.append(Event(on, off, label))
            soundfile.write(root / split / f"{split}{i}.wav", x, SR)
            events[f"{split}{i}.wav"] = ev
        tables[split] = str(write_strong_tsv(root / f"{split}.tsv", events))
    return tables


def _encoder(path: Path) -> Path:
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(embed_dim=32, depth=2, num_heads=2, num_mel_bins=32, target_length=64))
    fe = FrontendConfig(num_mel_bins=32, target_length=64)
    return save_export(path, enc.cfg, enc.state_dict(), fe)


def _run(tmp_path: Path, *extra: str) -> None:
    from recipes.finetune import main  # noqa: PLC0415 - the recipe is a script; imported from the repo root

    t = _data(tmp_path / "data")
    main(["--task", "sed", "--out", str(tmp_path / "run"),
          f"data.train={t['train']}", f"data.train_audio={tmp_path / 'data' / 'train'}",
          f"data.valid={t['test']}", f"data.valid_audio={tmp_path / 'data' / 'test'}",
          "data.frontend.target_length=64", "data.frontend.num_mel_bins=32", "data.batch_size=4",
          "data.num_workers=0", "data.val_fraction=0.25", "train.max_steps=6", "train.log_every=3",
          "train.device=cpu", "optim.warmup_steps=2", "freeze_steps=3", "eval_every_epochs=1",
          "post.median_filters=[0.0,0.12]", *extra])


def test_sed_recipe_end_to_end(tmp_path, capsys):
    _run(tmp_path, f"--init={_encoder(tmp_path / 'enc')}", "model.sed.gru_hidden=8")
    out = tmp_path / "run"
    det = load_detector(out / "best")
    assert det.class_names == ["high", "low"] and det.hop == 0.04
    post = json.loads((out / "postprocess.json").read_text())
    assert post["median_filter"] in (0.0, 0.12) and len(post["thresholds"]) == 2
    test = json.loads((out / "test_metrics.json").read_text())
    assert set(test) >= {"psds1", "psds2", "segment_f1", "event_f1", "step"}
    assert "evaluation split (selected checkpoint)" in capsys.readouterr().out


def test_sed_recipe_crnn_control(tmp_path):
    _run(tmp_path, "--config", "recipes/configs/finetune_sed_crnn.yaml", "model.crnn_channels=[4,8]",
         "model.sed.gru_hidden=4")
    summary = json.loads((tmp_path / "run" / "sed_summary.json").read_text())
    assert summary["status"] == "done" and 0.0 <= summary["test"]["psds1"] <= 1.0


def test_validation_by_group_keeps_groups_whole():
    from eat.eval.probe import group_validation_split

    groups = [f"src{i % 7}" for i in range(50)]
    for seed in range(5):
        fit, val = group_validation_split(groups, 0.25, seed)
        assert sorted(fit.tolist() + val.tolist()) == list(range(50))
        assert not {groups[i] for i in fit} & {groups[i] for i in val}
        assert len(val) >= 12 and {groups[i] for i in fit}
    assert group_validation_split(groups, 0.25, 1)[1].tolist() == group_validation_split(groups, 0.25, 1)[1].tolist()
    with pytest.raises(ValueError, match="two groups"):
        group_validation_split(["a", "a"], 0.5, 0)


def test_soundscape_labels_match_the_planted_sources(monkeypatch):
    """mix_scape (eat.apps.sed_benchmark): each label covers exactly the samples its source sounds in."""
    import eat.apps.sed_benchmark as sb
    from eat.apps.sed_benchmark import active_extent, mix_scape, trim

    monkeypatch.setattr(sb, "coloured_noise", lambda rng, n, colour: np.zeros(n, np.float32))  # silent background

    sr = 16000
    tone = np.sin(2 * np.pi * 440 * np.arange(int(0.5 * sr)) / sr).astype(np.float32)
    padded = np.concatenate([np.zeros(800, np.float32), tone, np.zeros(1600, np.float32)])
    assert active_extent(padded) == (800, 800 + len(tone)) and len(trim(padded)) == len(tone)
    rng = np.random.default_rng(3)
    wave, events = mix_scape([("a", tone), ("b", tone[: sr // 4])], rng, 4.0, 5)
    assert wave.shape == (4 * sr,) and 1 <= len(events) <= 5
    loud = np.abs(wave) > 1e-4
    for e in events:
        a, b = int(round(e.onset * sr)), int(round(e.offset * sr))
        assert loud[a : a + 40].any() and loud[b - 40 : b].any()
    covered = np.zeros(4 * sr, bool)
    for e in events:
        covered[int(round(e.onset * sr)) : int(round(e.offset * sr))] = True
    assert not (loud & ~covered).any()  # no sound outside the labels


def test_frame_probe_tool(tmp_path, capsys):
    """tools/sed_probe.py: an encoder source and log-mel, penalty chosen on validation files, test scored."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sed_probe", Path(__file__).parents[1] / "tools" / "sed_probe.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    t = _data(tmp_path / "data", n_train=6, n_test=2)
    enc = _encoder(tmp_path / "enc")
    tool.main(["--encoder", f"tiny={enc}", "--train", t["train"], "--train-audio", str(tmp_path / "data" / "train"),
               "--test", t["test"], "--test-audio", str(tmp_path / "data" / "test"), "--json", str(tmp_path / "p.json"),
               "--mlp", "8"])
    res = json.loads((tmp_path / "p.json").read_text())["results"]
    assert set(res) == {"tiny", "log-mel"}
    for r in res.values():
        assert set(r["test"]) == {"psds1", "psds2", "segment_f1", "event_f1"} and r["fit_files"] == 5
        assert set(r["mlp"]["test"]) == set(r["test"])
    assert res["log-mel"]["dim"] == 64 and res["tiny"]["dim"] == 64  # 2 x 32 mel bins; 2 blocks x 32
    assert res["log-mel"]["test"]["segment_f1"] > 0.5  # two tones in light noise: the spectrum tells them apart


def test_freeze_then_unfreeze_and_aligned_loss_masks():
    from eat.model.sed import SEDConfig, SEDModel
    from eat.train.sed import SEDFinetuneConfig, SEDTrainModel

    torch.manual_seed(0)
    cfg = SEDFinetuneConfig(freeze_steps=2)
    cfg.model.sed = SEDConfig(num_classes=2, hop=0.04)
    model = SEDModel(cfg.model.sed, EncoderConfig(embed_dim=32, depth=1, num_heads=2, num_mel_bins=32, target_length=64))
    fe = FrontendConfig(num_mel_bins=32, target_length=64)
    tm = SEDTrainModel(model, cfg, fe, frames=16, seed=0).train()
    batch = dict(fbank=torch.randn(2, 64, 32), frames=torch.zeros(2, 16, 2), frame_mask=torch.ones(2, 16, dtype=torch.bool),
                 clip=torch.zeros(2, 2))
    tm(**batch)["loss"].backward()
    assert model.encoder.patch_embed.weight.grad is None and model.head.frame.weight.grad is not None
    tm.after_optimizer_step(2)  # the schedule reaches freeze_steps: the encoder trains
    tm(**batch)["loss"].backward()
    assert model.encoder.patch_embed.weight.grad is not None
    # frames outside the mask do not count: a wrong target there leaves the frame loss unchanged
    tm.eval()
    a = tm(**batch)["frame_loss"]
    bad = dict(batch, frames=batch["frames"].clone(), frame_mask=batch["frame_mask"].clone())
    bad["frame_mask"][:, 8:] = False
    bad["frames"][:, 8:] = 1.0
    b = tm(**bad)["frame_loss"]
    good = dict(batch, frame_mask=bad["frame_mask"])
    assert torch.allclose(b, tm(**good)["frame_loss"]) and not torch.allclose(a, tm(**dict(batch, frames=bad["frames"]))["frame_loss"])
