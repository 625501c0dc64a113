"""Acceptance test of ``recipes/finetune.py --task esc50``: 5-fold CV on a synthetic ESC-50-shaped set with
the tiny EAT encoder (initialised from an exported encoder directory), plus the CLI's one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import procs
import pytest
import torch

from eat.audio.fbank import FrontendConfig
from eat.audio.io import load_audio
from eat.data.manifest import read_esc50
from eat.data.synthetic import make_esc50_like
from eat.export import load_classifier, save_export
from eat.model.eat import eat_config
from eat.model.vit import Encoder

ROOT = Path(__file__).resolve().parents[1]


RECIPE = ROOT / "recipes" / "finetune.py"


def _recipe(*argv: str) -> list[str]:
    return [sys.executable, str(RECIPE), *argv]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}

# Short schedule for a CPU: 1 s clips (96 frames -> 6 x 8 patches), 120 updates of 8 clips per fold, one
# torch thread (train.cpu_threads): for a model this small more threads only contend, and on a busy 2-core
# machine two threads made the 5 folds 20x slower (400 s instead of 20 s).
FAST = [
    "data.frontend.target_length=96", "data.batch_size=8", "data.num_workers=0", "train.max_steps=120",
    "train.log_every=60", "train.tensorboard=false", "train.cpu_threads=1", "optim.lr=2e-3",
    "optim.warmup_steps=10", "augment.freq_mask=16", "augment.time_mask=16", "layer_decay.decay=1.0",
    "model.drop_path=0", "eval_every_epochs=5",
]


@pytest.fixture(scope="module")
def esc_root(tmp_path_factory):
    return make_esc50_like(tmp_path_factory.mktemp("esc"), num_classes=4, clips_per_class=10, duration=1.0, seed=0)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    torch.manual_seed(0)
    cfg = eat_config("tiny").encoder
    return save_export(tmp_path_factory.mktemp("enc") / "tiny", cfg, Encoder(cfg).state_dict(), FrontendConfig())


@pytest.mark.slow
def test_esc50_five_fold_cv(esc_root, tiny_export, tmp_path):
    out = tmp_path / "ft"
    proc = procs.run(_recipe("--task", "esc50", "--esc50-root", str(esc_root), "--init", str(tiny_export),
                                  "--preset", "tiny", "--out", str(out), *FAST),
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("mean accuracy over 5 folds")
    table = lines[lines.index("fold | acc (last) | acc (best) | best step"):]
    assert [row.split("|")[0].strip() for row in table[2:-3]] == ["1", "2", "3", "4", "5"]
    summary = json.loads((out / "esc50_summary.json").read_text())
    assert sorted(summary["folds"]) == ["1", "2", "3", "4", "5"]
    accs = [f["acc_last"] for f in summary["folds"].values()]
    assert summary["mean_acc_last"] == pytest.approx(sum(accs) / 5)
    assert f"{summary['mean_acc_last']:.4f}" in lines[-1]
    assert summary["mean_acc_last"] >= 0.5  # chance is 0.25 (4 balanced classes)
    assert all(f["steps"] == 120 for f in summary["folds"].values())
    assert summary["config"]["train"]["cpu_threads"] == 1

    # best/ is an export that reproduces its recorded accuracy on the held-out fold
    fold = summary["folds"]["1"]
    best = load_classifier(out / "fold1" / "best")
    assert best.class_names == read_esc50(esc_root).class_names
    clips = read_esc50(esc_root, folds=[1])
    with torch.no_grad():
        logits = best.predict([load_audio(it.path) for it in clips.items])
    truth = torch.tensor([it.labels[0] for it in clips.items])
    assert (logits.argmax(1) == truth).float().mean().item() == pytest.approx(fold["acc_best"])
    assert (out / "fold1" / "last" / "model.safetensors").is_file()


def test_errors_are_one_line(esc_root, tiny_export, tmp_path):
    """Six bad command lines, run as a user runs them (in parallel: each process mostly imports torch)."""
    base = ["--task", "esc50", "--esc50-root", str(esc_root), "--out", str(tmp_path / "x")]
    cases = [
        ([*base, "--init", str(tiny_export), "--preset", "base"], "encoder.embed_dim"),
        ([*base, "optim.lrr=1"], "optim.lrr"),
        (["--task", "esc50", "--esc50-root", str(tmp_path / "missing")], "esc50.csv"),
        ([*base, "--init", str(tmp_path)], "config.json"),
        (["--task", "generic", "--out", str(tmp_path / "g")], "data.train"),
        ([*base, "--preset", "tiny", "data.batch_size=64", "data.num_workers=0"], "batch_size"),
    ]
    runs = [subprocess.Popen(_recipe(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for argv, _ in cases]
    for proc, (argv, expected) in zip(runs, cases, strict=True):
        _, err = proc.communicate(timeout=procs.DEADLINE_S)
        message = err.strip().splitlines()[-1] if err.strip() else ""
        assert proc.returncode != 0 and message.startswith("error: ") and expected in message, (argv, err[-2000:])
        assert "Traceback" not in err
