"""Fine-tuning pieces: batch preparation (soft targets, waveform mixup + fbank), the training step's
augmentation and loss, task data readers (Speech Commands layout, csv), and a short multi-label run
(EAT manifests, class-weighted sampling, fbank on the device, two-level mixup, mAP)."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
import soundfile
import torch

from eat.audio.augment import AugmentConfig, augment_batch, beta
from eat.audio.fbank import FrontendConfig, waveform_to_input
from eat.config import ConfigError
from eat.data.manifest import ManifestError
from eat.model.classifier import Classifier, ClassifierConfig
from eat.model.vit import EncoderConfig
from eat.train.finetune import (
    BatchPrep,
    FinetuneModel,
    LossSection,
    ModelSection,
    batch_seed_of,
    build_classifier,
)
from eat.train.finetune_data import DataSection, read_speech_commands, task_splits

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def tiny_classifier(classes: int = 3) -> Classifier:
    enc = EncoderConfig(embed_dim=16, depth=1, num_heads=2, target_length=32, num_mel_bins=128, max_time_patches=4)
    return Classifier(ClassifierConfig(encoder=enc, num_classes=classes))


def test_batch_prep_waveform_mixup_then_fbank():
    frontend = FrontendConfig(target_length=32)
    aug = AugmentConfig(wave_mixup_prob=1.0, wave_mixup_alpha=10.0)
    prep = BatchPrep(frontend, aug, num_classes=3, soft_targets=True, seed=5)
    wave = torch.randn(4, 5600)
    length = torch.tensor([5600, 4000, 5600, 3000])
    batch = {"wave": wave, "length": length, "target": torch.tensor([0, 1, 2, 0]), "index": torch.arange(4)}
    kwargs, counts = prep(batch, torch.device("cpu"))
    # same draw as the prep made: its generator, seeded identically
    seed = 5 + 7919 + batch_seed_of(batch["index"])
    lam = beta(10.0, 1, torch.Generator().manual_seed(seed)).item()
    mixed = lam * wave + (1 - lam) * wave.flip(0)
    ref = waveform_to_input(mixed, frontend, torch.maximum(length, length.flip(0)))
    torch.testing.assert_close(kwargs["source"], ref)
    onehot = torch.eye(3)[[0, 1, 2, 0]]
    torch.testing.assert_close(kwargs["target"], lam * onehot + (1 - lam) * onehot.flip(0))
    assert counts == {"clips": 4.0}


def test_batch_prep_keeps_indices_for_plain_ce():
    prep = BatchPrep(FrontendConfig(), AugmentConfig(), num_classes=3, soft_targets=False)
    batch = {"source": torch.randn(2, 32, 128), "target": torch.tensor([2, 1]), "index": torch.tensor([4, 0])}
    kwargs, _ = prep(batch, torch.device("cpu"))
    assert torch.equal(kwargs["target"], torch.tensor([2, 1])) and torch.equal(kwargs["source"], batch["source"])


def test_finetune_model_augments_only_in_training():
    torch.manual_seed(0)
    clf = tiny_classifier()
    aug = AugmentConfig(spec_mixup_prob=1.0, spec_mixup_alpha=0.8, freq_mask=20, time_mask=8)
    model = FinetuneModel(clf, aug, LossSection(kind="ce", label_smoothing=0.1), multi_label=False, seed=1)
    seen = []
    clf.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    x, y = torch.randn(4, 32, 128), torch.eye(3)[[0, 1, 2, 0]]
    model.eval()
    loss = model(x, y)["loss"]
    ref = -(y * torch.log_softmax(clf(x), -1)).sum(-1).mean()  # soft targets: CE without smoothing
    torch.testing.assert_close(loss, ref)
    assert torch.equal(seen[0], x)
    model.train()
    loss = model(x, y)["loss"]
    expected, _ = augment_batch(x, y, aug, torch.Generator().manual_seed(1))
    assert torch.equal(seen[-1], expected) and not torch.equal(expected, x)
    loss.backward()
    assert clf.head.weight.grad is not None


def test_batch_augmentation_depends_on_data_position_not_on_history():
    """A resumed run must augment its next batch exactly as an unbroken run does."""
    torch.manual_seed(0)
    clf = tiny_classifier()
    aug = AugmentConfig(spec_mixup_prob=1.0, spec_mixup_alpha=0.8, freq_mask=20, time_mask=8)
    seen = []
    clf.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    x, y = torch.randn(4, 32, 128), torch.eye(3)[[0, 1, 2, 0]]
    index, epoch = torch.tensor([5, 2, 7, 1]), torch.tensor([3, 3, 3, 3])
    seed = batch_seed_of(index, epoch)
    unbroken = FinetuneModel(clf, aug, LossSection(kind="ce"), multi_label=False, seed=1).train()
    for other in range(3):  # an unbroken run has drawn for earlier batches
        unbroken(x, y, batch_seed=batch_seed_of(torch.tensor([other]), torch.tensor([0])))
    unbroken(x, y, batch_seed=seed)
    resumed = FinetuneModel(clf, aug, LossSection(kind="ce"), multi_label=False, seed=1).train()
    resumed(x, y, batch_seed=seed)
    assert torch.equal(seen[3], seen[4])
    assert seed != batch_seed_of(index, epoch + 1) and seed != batch_seed_of(index.flip(0), epoch)


def test_build_classifier_from_preset_and_errors(tmp_path):
    clf = build_classifier(ModelSection(preset="tiny", drop_path=0.2), num_classes=5, target_length=96)
    assert clf.cfg.encoder.embed_dim == 96 and clf.cfg.encoder.target_length == 96 and clf.head.out_features == 5
    assert clf.encoder.blocks[-1].drop_path == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="model.imagenet"):
        build_classifier(ModelSection(preset="ast_base", imagenet=str(tmp_path / "none.pt")), 5, 1024)


def make_speech_commands(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for word in ("yes", "no", "up", "_background_noise_"):
        (root / word).mkdir(parents=True)
        for i in range(4):
            soundfile.write(root / word / f"spk{i}_nohash_0.wav", rng.standard_normal(1600) * 0.1, SR)
    (root / "validation_list.txt").write_text("yes/spk0_nohash_0.wav\nno/spk0_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("up/spk1_nohash_0.wav\nyes/spk1_nohash_0.wav\n")
    return root


def test_speech_commands_layout(tmp_path):
    root = make_speech_commands(tmp_path / "sc")
    train, valid, test = (read_speech_commands(root, s) for s in ("train", "valid", "test"))
    assert train.class_names == ["no", "up", "yes"]
    assert len(train) == 12 - 4 and len(valid) == 2 and len(test) == 2
    names = {p.path.relative_to(root).as_posix() for p in train.items}
    assert "yes/spk0_nohash_0.wav" not in names and not any(n.startswith("_") for n in names)
    assert [it.labels for it in test.items] == [(1,), (2,)]
    tr, ev = task_splits(DataSection(format="spc2", root=str(root), eval_split="valid"))
    assert len(tr) == 8 and len(ev) == 2
    (root / "testing_list.txt").unlink()
    with pytest.raises(ManifestError, match="testing_list.txt"):
        read_speech_commands(root, "train")


def test_csv_task_and_missing_keys(tmp_path):
    (tmp_path / "train.csv").write_text("path,label\na.wav,dog\nb.wav,cat\n")
    (tmp_path / "valid.csv").write_text("c.wav,cat\n")
    tr, ev = task_splits(DataSection(format="csv", train=str(tmp_path / "train.csv"), valid=str(tmp_path / "valid.csv")))
    assert tr.class_names == ev.class_names == ["cat", "dog"] and ev.items[0].labels == (0,)
    with pytest.raises(ManifestError, match="data.class_csv"):
        task_splits(DataSection(format="eat", train="x.tsv"))


def test_short_multilabel_run(tmp_path):
    rng = np.random.default_rng(1)
    audio = tmp_path / "audio"
    audio.mkdir()
    mids = ["/m/a", "/m/b", "/m/c", "/m/d"]
    (tmp_path / "classes.csv").write_text("index,mid,display_name\n" + "".join(f"{i},{m},c{i}\n" for i, m in enumerate(mids)))
    for split, n in (("train", 16), ("eval", 8)):
        rows, lbl = [], []
        for i in range(n):
            name = f"{split}{i}.wav"
            soundfile.write(audio / name, rng.standard_normal(SR // 2) * 0.1, SR)
            rows.append(f"{name}\t{SR // 2}\n")
            labels = sorted({mids[i % 4], mids[(i * 3 + 1) % 4]})
            lbl.append(f"{split}{i} {','.join(labels)}\n")
        (tmp_path / f"{split}.tsv").write_text(f"{audio}\n" + "".join(rows))
        (tmp_path / f"{split}.lbl").write_text("".join(lbl))
    out = tmp_path / "out"
    proc = procs.run([
        sys.executable, str(ROOT / "recipes" / "finetune.py"), "--task", "as2m", "--preset", "tiny", "--out", str(out),
        f"data.train={tmp_path / 'train.tsv'}", f"data.train_labels={tmp_path / 'train.lbl'}",
        f"data.valid={tmp_path / 'eval.tsv'}", f"data.valid_labels={tmp_path / 'eval.lbl'}",
        f"data.class_csv={tmp_path / 'classes.csv'}", "data.epoch_samples=8", "data.batch_size=4",
        "data.num_workers=0", "data.frontend.target_length=48", "augment.wave_mixup_prob=0.5",
        "augment.wave_mixup_alpha=10", "train.max_steps=4", "optim.warmup_steps=1", "train.tensorboard=false",
        "train.log_every=2",
    ], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("mAP (last checkpoint):")
    summary = json.loads((out / "as2m_summary.json").read_text())
    assert summary["metric"] == "mAP" and 0 < summary["last"]["mAP"] <= 1 and summary["last"]["step"] == 4
    assert {"mAUC", "d_prime"} <= set(summary["last"])
    assert [h["step"] for h in summary["history"]] == [2, 4]  # every epoch (8 sampled clips = 2 updates)
