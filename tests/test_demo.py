"""tools/demo.py end to end (``--quick``: real torchrun pretraining on 2 CPU ranks, export, probes, fine-tuning,
figures), and the guard on the method: after pretraining, a linear probe on the encoder must clearly beat the
same network with its initial random weights and the pooled log-mel baseline."""

import json
import os
import struct
import sys
from pathlib import Path

import procs
import pytest
import torch
from safetensors.torch import load_file

from eat.apps import demo
from eat.config import load_config
from eat.export import load_encoder
from eat.train import pretrain

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "tools" / "demo.py"


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = procs.run([sys.executable, str(DEMO), "--out", str(out), "--quick", "--seed", "0", "--device", "cpu",
                           "--set", "train.log_every=50"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow
def test_pretraining_beats_random_weights_and_logmel(quick):
    out, _ = quick
    probe = json.loads((out / "summary.json").read_text())["probe"]
    pre, rnd, mel = (probe[k]["mean"] for k in ("pretrained", "random", "logmel"))
    # quick run, 20 classes (chance 0.05); seeds 0-2 measured +17.5..+24.5 over random, +11..+13.5 over
    # log-mel (docs/benchmarks.md "Demo")
    assert pre >= rnd + 0.05, probe
    assert pre >= mel, probe
    for name in ("pretrained", "random", "logmel"):
        assert sorted(probe[name]["folds"]) == ["1", "2", "3", "4", "5"]
        assert probe[name]["mean"] == pytest.approx(sum(probe[name]["folds"].values()) / 5)


@pytest.mark.slow
def test_every_stage_ran_and_reported(quick):
    out, stdout = quick
    s = json.loads((out / "summary.json").read_text())
    assert s["quick"] and s["seed"] == 0
    assert s["pretrain"]["steps"] == demo.QUICK.pretrain_steps and s["pretrain"]["processes"] == 2
    records = [json.loads(x) for x in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    # --set reached the recipe: a train record every 50 updates instead of demo.yaml's 100
    assert s["pretrain"]["overrides"] == ["train.log_every=50"]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(50, demo.QUICK.pretrain_steps + 1, 50))
    assert s["finetune"]["steps"] == demo.QUICK.finetune_steps
    assert sorted(s["finetune"]["folds"]) == [str(f) for f in demo.QUICK.finetune_folds]
    assert 0.0 <= s["finetune"]["mean"] <= 1.0
    for stage in ("data", "pretrain", "export", "probe", "finetune", "report", "total"):
        assert s["seconds"][stage] >= 0
    assert s["seconds"]["total"] >= s["seconds"]["pretrain"] + s["seconds"]["probe"]
    for n in range(1, 7):
        assert f"== {n}/6 " in stdout
    n = demo.QUICK.pretrain_steps
    assert f"step {n}/{n}" in stdout  # the recipe's own progress lines are shown
    table = stdout[stdout.index("features / model"):]
    for name in ("EAT pretrained", "random weights", "log-mel mean+std", "fine-tuned from the pretrained"):
        assert name in table
    assert f"{100 * s['probe']['pretrained']['mean']:.1f} %" in table
    for png in ("loss_curves.png", "masks.png", "probe.png"):
        width, height = _png_size(out / png)
        assert width > 500 and height > 300


@pytest.mark.slow
def test_exports_pretrained_and_the_runs_initial_weights(quick, tmp_path):
    """(b) in the table is exactly the network the pretraining started from: a run of the recipe that takes
    one update with learning rate 0 (so nothing moves) checkpoints the same student weights."""
    out, _ = quick
    pre, init = load_encoder(out / "encoder"), load_encoder(out / "encoder_init")
    assert pre.encoder.cfg == init.encoder.cfg and pre.frontend == init.frontend
    assert pre.encoder.cfg.embed_dim == 128 and pre.frontend.target_length == 256
    sd_pre, sd_init = pre.encoder.state_dict(), init.encoder.state_dict()
    assert not torch.equal(sd_pre["blocks.0.attn.qkv.weight"], sd_init["blocks.0.attn.qkv.weight"])

    run = tmp_path / "zero_lr"
    cfg = load_config(pretrain.PretrainConfig, demo.CONFIG, [
        f"data.train_manifest={out / 'data/unlabelled/train.tsv'}", f"train.out_dir={run}", "train.max_steps=1",
        "train.seed=0", "train.device=cpu", "optim.lr=0", "optim.min_lr=0", "optim.weight_decay=0",
        "data.num_workers=0", "train.resume=none"])
    assert pretrain.run(cfg) == 0
    state = load_file(next(run.glob("step_*")) / "model.safetensors")
    for key, value in sd_init.items():
        assert torch.equal(state[f"student.{key}"], value), key


def test_refuses_a_foreign_folder_and_bad_arguments(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        demo.main(["--out", str(foreign)])
    assert str(e.value.code) == f"error: {foreign}: exists, is not empty and is not a demo output folder; " \
                                "choose another --out"
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit) as e:
        demo.main(["--out", str(tmp_path / "x"), "--steps", "0"])
    assert str(e.value.code) == "error: --steps must be positive, got 0"
    with pytest.raises(SystemExit) as e:
        demo.main(["--out", str(tmp_path / "x"), "--set", "optim.lr"])
    assert str(e.value.code) == "error: --set optim.lr: expected KEY=VALUE, e.g. --set optim.lr=3e-3"
    assert not (tmp_path / "x").exists()


def test_a_rerun_replaces_only_the_demos_own_outputs(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / demo.MARKER).write_text("")
    (out / "pretrain").mkdir()
    (out / "pretrain" / "old.txt").write_text("stale")
    (out / "summary.json").write_text("{}")
    (out / "user.txt").write_text("kept")
    demo.prepare_out(out)
    assert not (out / "pretrain").exists() and not (out / "summary.json").exists()
    assert (out / "user.txt").read_text() == "kept" and (out / demo.MARKER).is_file()
