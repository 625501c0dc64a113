"""Small-data fine-tuning: the held-out validation split, the pooled head (the probe's embedding made
trainable), LP-FT's step-0 head (= the linear probe), selection that never reads the evaluation split, and
the one-line config errors. Tiny encoders, clips under a second, a few updates."""

import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
import soundfile
import torch

from eat.audio.fbank import FrontendConfig
from eat.audio.io import load_audio
from eat.config import ConfigError, load_config
from eat.data.manifest import LabelledItem, LabelSet, read_path_label_csv
from eat.eval.probe import (
    DEFAULT_WEIGHT_DECAYS,
    fit_linear,
    probe,
    validation_split,
    weight_decay_on_validation,
)
from eat.eval.protocol import encoder_embeddings
from eat.export import load_classifier, load_encoder, save_export
from eat.features import FeatureExtractor
from eat.model.classifier import Classifier, ClassifierConfig, PatchoutConfig
from eat.model.pooling import pool_tokens
from eat.model.vit import Encoder, EncoderConfig
from eat.train.dist import DistEnv
from eat.train.finetune import (
    FinetuneConfig,
    build_classifier,
    check_selection_config,
    eval_loader,
    holdout_split,
    predict,
    probe_init,
    run_finetune,
    with_init_frontend,
)

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
ENC = EncoderConfig(embed_dim=16, depth=2, num_heads=2, target_length=64, num_mel_bins=128, max_time_patches=8)
FRONTEND = FrontendConfig(target_length=64)  # 0.655 s: every clip below is shorter, so padding is masked


def write_split(root: Path, name: str, per_class: int, seed: int, classes: int = 3) -> Path:
    """``per_class`` clips of ``classes`` tone classes (0.3-0.6 s, noisy) and their ``path,label`` csv."""
    rng = np.random.default_rng(seed)
    (root / name).mkdir(parents=True, exist_ok=True)
    rows = []
    for c in range(classes):
        for k in range(per_class):
            n = int(SR * rng.uniform(0.3, 0.6))
            t = np.arange(n) / SR
            wave = 0.3 * np.sin(2 * np.pi * (300 * 2**c) * t) + 0.05 * rng.standard_normal(n)
            path = root / name / f"c{c}_{k}.wav"
            soundfile.write(path, wave.astype(np.float32), SR)
            rows.append((f"{name}/{path.name}", f"class{c}"))
    out = root / f"{name}.csv"
    with out.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    torch.manual_seed(0)
    export = save_export(root / "enc", ENC, Encoder(ENC).state_dict(), FRONTEND)
    return root, write_split(root, "train", 10, 0), write_split(root, "test", 4, 1), export


def small_config(task, tmp_path: Path, *overrides: str) -> FinetuneConfig:
    _, train, test, export = task
    cfg = load_config(FinetuneConfig, ROOT / "recipes" / "configs" / "finetune_small.yaml", [
        f"data.train={train}", f"data.valid={test}", f"model.init={export}", "data.batch_size=8",
        "data.num_workers=0", "train.max_steps=8", "train.log_every=4", "train.tensorboard=false",
        "train.cpu_threads=1", f"train.out_dir={tmp_path}", "optim.warmup_steps=2", *overrides])
    return with_init_frontend(cfg)


def test_validation_split_is_the_probes_disjoint_and_stratified():
    counts = [10, 10, 5, 1]
    items = [LabelledItem(Path(f"/x/{c}_{k}.wav"), (c,)) for c in range(4) for k in range(counts[c])]
    items = [items[i] for i in torch.randperm(len(items), generator=torch.Generator().manual_seed(3))]
    labels = LabelSet(items, ["a", "b", "c", "d"], multi_label=False)
    fit, val, val_idx = holdout_split(labels, 0.2, seed=7)
    paths = lambda s: {it.path for it in s.items}  # noqa: E731
    assert not paths(fit) & paths(val) and paths(fit) | paths(val) == paths(labels)
    per_class = torch.bincount(val.targets(), minlength=4).tolist()
    assert per_class == [2, 2, 1, 0]  # round(0.2 * n) of every class; a single clip stays in training
    _, probe_val = validation_split(labels.targets(), "multiclass", 0.2, seed=7)
    assert torch.equal(val_idx, probe_val)  # the probe's own split for the same seed
    assert [it.path for it in val.items] == [labels.items[int(i)].path for i in probe_val]


def _manual_band_meanstd(tokens: torch.Tensor, cols: int, bands: int) -> torch.Tensor:
    """band-meanstd of one clip's (T'*F', D) tokens over its first ``cols`` columns, by loops."""
    out_mean, out_std = [], []
    for f in range(bands):
        rows = torch.stack([tokens[t * bands + f] for t in range(cols)])
        out_mean.append(rows.mean(0))
        out_std.append(rows.std(0, unbiased=False))
    return torch.cat(out_mean + out_std)


def test_pooled_head_is_pooling_plus_linear():
    torch.manual_seed(1)
    clf = Classifier(ClassifierConfig(encoder=ENC, num_classes=3, prediction_mode="pooled", layers="1+0",
                                      pooling="band-meanstd")).eval()
    dim = clf.head.in_features
    assert dim == 2 * (2 * 8 * 16)
    clf.fc_norm.mean.normal_()
    clf.fc_norm.std.uniform_(0.5, 2.0)
    x = torch.randn(2, 64, 128)
    frames = torch.tensor([64, 40])  # clip 1 covers 3 of the 4 time columns
    mask = clf.padding_mask(frames, 64)
    assert mask.shape == (2, 32) and mask[1].view(4, 8)[:, 0].tolist() == [False, False, False, True]
    logits = clf(x, mask)
    # by hand: run the blocks one by one, pool each clip's valid columns per band, standardise, Linear
    enc = clf.encoder
    with torch.no_grad():
        tokens = enc.embed(x)
        seq = enc.pre_norm(torch.cat([enc.extra_tokens.expand(2, -1, -1), tokens], 1))
        outs = []
        attn = torch.nn.functional.pad(~mask, (1, 0), value=True)[:, None, None, :]
        for block in enc.blocks:
            seq, _ = block(seq, attn)
            outs.append(seq[:, 1:])
        feats = torch.stack([torch.cat([_manual_band_meanstd(outs[i][b], [4, 3][b], 8) for i in (1, 0)])
                             for b in range(2)])
        ref = ((feats - clf.fc_norm.mean) / clf.fc_norm.std) @ clf.head.weight.T + clf.head.bias
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    # and the library pooling of the same outputs (one place for the pooling math)
    lib = torch.cat([pool_tokens(outs[i], mask, "band-meanstd", 8) for i in (1, 0)], 1)
    torch.testing.assert_close(clf.features(x, mask), lib, rtol=1e-5, atol=1e-5)


def test_fine_tuning_features_are_the_probe_protocols(task, tmp_path):
    """The classifier, fed as fine-tuning feeds it (fixed-length batches + padding mask), computes exactly
    the embedding the probe protocol extracts from the same clips."""
    root, train, _, export = task
    cfg = small_config(task, tmp_path)
    labels = read_path_label_csv(train)
    clf = build_classifier(cfg.model, labels.num_classes, cfg.data.frontend.target_length)
    feats, _ = predict(clf, eval_loader(cfg, labels, CPU), cfg.data.frontend, CPU, features=True)
    extractor = FeatureExtractor(clf.encoder, cfg.data.frontend)
    waves = [load_audio(it.path, SR) for it in labels.items]
    ref = encoder_embeddings(extractor, waves, ["all"], ["band-meanstd"])[("all", "band-meanstd")]
    torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-4)


def test_step0_head_is_the_linear_probe(task, tmp_path):
    _, train, _, _ = task
    cfg = small_config(task, tmp_path)
    labels = read_path_label_csv(train)
    clf = build_classifier(cfg.model, labels.num_classes, cfg.data.frontend.target_length)
    record = probe_init(clf, cfg, labels, CPU)
    loader = eval_loader(cfg, labels, CPU)
    x, _ = predict(clf, loader, cfg.data.frontend, CPU, features=True)
    logits, _ = predict(clf, loader, cfg.data.frontend, CPU)
    # eat.eval.probe on the same features: its penalty choice and its fit on the split's fitting part
    y = labels.targets()
    x = x.double()
    wd, scores = weight_decay_on_validation(x, y, "multiclass", 3, DEFAULT_WEIGHT_DECAYS, 0.2, cfg.train.seed)
    fit_idx, _ = validation_split(y, "multiclass", 0.2, cfg.train.seed)
    ref = fit_linear(x[fit_idx], y[fit_idx], "multiclass", 3, wd)
    assert record["weight_decay"] == wd and record["val_scores"] == scores
    torch.testing.assert_close(logits.double(), ref.scores(x), rtol=1e-4, atol=1e-4)


def _run(task, out: Path, test_csv: Path, *overrides: str):
    cfg = small_config(task, out, f"data.valid={test_csv}", *overrides)
    from eat.train.finetune_data import task_splits

    train_set, test_set = task_splits(cfg.data)
    return run_finetune(cfg, train_set, test_set, out, CPU)


def test_selection_never_reads_the_test_split(task, tmp_path):
    root, _, test, _ = task
    rows = list(csv.reader(test.open()))
    labels = [r[1] for r in rows[1:]]
    shuffled = [labels[i] for i in np.random.default_rng(0).permutation(len(labels))]
    permuted = tmp_path / "permuted.csv"
    with permuted.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *[(r[0], lab) for r, lab in zip(rows[1:], shuffled, strict=True)]])
    (tmp_path / "test").symlink_to(root / "test")  # the csv's relative paths resolve next to it
    over = ("eval_every_epochs=1", "train.max_steps=6", "optim.lr=3e-3")
    a = _run(task, tmp_path / "a", test, *over)
    b = _run(task, tmp_path / "b", permuted, *over)
    assert [h["step"] for h in a.history] == [0, 3, 6]  # step 0 (the probe head) is a candidate
    assert a.history == b.history and a.best == b.best  # every validation number and the choice
    assert a.test["step"] == a.best["step"] and set(a.test) >= {"acc", "loss"}
    assert (tmp_path / "a" / "test_metrics.json").is_file()
    # the exports reproduce the reported test accuracies through the user API: best/ (the selected checkpoint
    # as trained) and final/ (its head refitted on every training clip, the preset's model.refit_head)
    for export, key in (("best", "acc_trained_head"), ("final", "acc")):
        clf = load_classifier(tmp_path / "a" / export)
        items = read_path_label_csv(test, class_names=clf.class_names).items
        with torch.no_grad():
            logits = clf.predict([load_audio(it.path, SR) for it in items])
        truth = torch.tensor([it.labels[0] for it in items])
        assert (logits.argmax(1) == truth).float().mean().item() == pytest.approx(a.test[key])


@pytest.mark.parametrize(("overrides", "expected"), [
    (["model.prediction_mode=cls"], "model.probe_init needs model.prediction_mode: pooled"),
    (["data.val_fraction=0"], "model.probe_init needs data.val_fraction > 0"),
    (["data.val_fraction=1.5"], "data.val_fraction must lie in [0, 1)"),
    (["augment.spec_mixup_prob=0.5"], "augment.spec_mixup_prob"),
    (["model.probe_weight_decays=[]"], "model.probe_weight_decays"),
])
def test_selection_config_errors(task, tmp_path, overrides, expected):
    cfg = small_config(task, tmp_path, *overrides)
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace(")", r"\)")) as e:
        check_selection_config(cfg)
    assert "\n" not in str(e.value)


def test_pooled_head_config_errors():
    for kwargs, expected in [
        (dict(pooling="max"), "pooling: unknown token pooling 'max'"),
        (dict(layers="0+5"), "block 5 out of range"),
        (dict(pooling="band-mean", patchout=PatchoutConfig(s_f=1)), "may only remove time columns"),
    ]:
        with pytest.raises(ConfigError, match=expected) as e:
            ClassifierConfig(encoder=ENC, num_classes=3, prediction_mode="pooled", **kwargs)
        assert "\n" not in str(e.value)
    ClassifierConfig(encoder=ENC, num_classes=3, prediction_mode="pooled", pooling="band-mean",
                     patchout=PatchoutConfig(s_t=1))  # whole time columns keep the band grid


def test_recipe_small_task_errors_are_one_line(task, tmp_path):
    _, train, test, export = task
    base = [sys.executable, str(ROOT / "recipes" / "finetune.py"), "--task", "small", "--out", str(tmp_path / "x"),
            f"data.train={train}", f"data.valid={test}"]
    cases = [([*base, "--init", str(export), "model.layers=7"], "layers"),
             ([*base], "model.init_frontend needs an --init export")]
    for argv, expected in cases:
        proc = procs.run(argv, capture_output=True, text=True)
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        assert proc.returncode != 0 and message.startswith("error: ") and expected in message, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_pooled_export_round_trip(tmp_path):
    torch.manual_seed(2)
    cfg = ClassifierConfig(encoder=ENC, num_classes=3, prediction_mode="pooled", layers="all", pooling="meanstd")
    clf = Classifier(cfg).eval()
    clf.fc_norm.mean.normal_()
    from eat.model.classifier import head_spec

    path = save_export(tmp_path / "clf", clf.cfg.encoder, clf.state_dict(), FRONTEND, head=head_spec(clf.cfg))
    loaded = load_classifier(path)
    assert dataclasses.asdict(loaded.classifier.cfg) == dataclasses.asdict(clf.cfg)
    x = torch.randn(2, 64, 128)
    torch.testing.assert_close(loaded(x), clf(x))


def test_refit_of_an_unmoved_encoder_is_the_probe_protocols_probe(task, tmp_path):
    """With a zero learning rate nothing moves, selection keeps step 0 and the refitted head is the probe
    protocol's own probe of the encoder: the same test accuracy, by construction of the shared pieces."""
    root, train, test, export = task
    result = _run(task, tmp_path / "r", test, "optim.lr=0", "model.refit_head=true", "train.max_steps=3")
    assert result.best["step"] == 0 and result.test["step"] == 0
    assert "acc_trained_head" in result.test and (tmp_path / "r" / "final" / "config.json").is_file()
    cfg = small_config(task, tmp_path)
    extractor = load_encoder(export)
    labels = read_path_label_csv(train)
    test_labels = read_path_label_csv(test, class_names=labels.class_names)
    feats = [encoder_embeddings(extractor, [load_audio(it.path, SR) for it in s.items], ["all"], ["band-meanstd"])
             [("all", "band-meanstd")] for s in (labels, test_labels)]
    ref = probe(feats[0], labels.targets(), feats[1], test_labels.targets(), seed=cfg.train.seed,
                val_fraction=0.2)
    assert result.test["acc"] == pytest.approx(ref["score"])
    assert result.probe["refit"]["weight_decay"] == ref["weight_decay"]


def test_bench_tool_table_resume_and_errors(task, tmp_path, capsys):
    root, _, _, export = task
    tool = ROOT / "tools" / "bench_small_finetune.py"
    argv = ["--task-dir", str(root), "--encoder", str(export), "--seeds", "0", "1", "--out", str(tmp_path / "b"),
            "data.batch_size=8", "data.num_workers=0", "train.max_steps=3", "optim.warmup_steps=1",
            "model.probe_weight_decays=[0.001,0.1]"]
    proc = procs.run([sys.executable, str(tool), *argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    rows = [ln for ln in lines if ln.startswith(f"| {root.name} |")]
    assert len(rows) == 3  # two seeds, one summary row
    assert "[2/2]" in proc.stdout and "ETA" in proc.stdout
    again = procs.run([sys.executable, str(tool), *argv], capture_output=True, text=True)
    assert again.returncode == 0 and "done before" in again.stdout  # finished runs are not repeated
    assert [ln for ln in again.stdout.splitlines() if ln.startswith(f"| {root.name} |")] == rows
    bad = procs.run([sys.executable, str(tool), "--task-dir", str(root), "--encoder", str(export), str(export),
                          "--seeds", "0", "1", "2"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: --encoder: give one export or one per seed (3), got 2"]
