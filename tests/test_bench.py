"""The step benchmarks (tools/bench_pretrain.py, tools/bench_finetune.py) on CPU with the tiny preset,
and the property that makes the GPU step sync-free: the model never reads a device-resident mask."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import procs
import pytest
import torch

from eat.data.synthetic import make_unlabelled_corpus
from eat.model.classifier import PatchoutConfig, classifier_config
from eat.model.eat import EATModel, eat_config
from eat.train.flops import classifier_flops_per_clip, pretrain_flops

ROOT = Path(__file__).resolve().parents[1]
SPLIT_KEYS = {"teacher", "student_fwd_bwd", "decoder", "optimizer_ema", "other", "total"}


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return procs.run([sys.executable, str(ROOT / "tools" / tool), *args], capture_output=True, text=True,
                          cwd=ROOT)


def _bench(tool: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{tool}.json"
    proc = _run(tool, "--threads", "1", "--json", str(out), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "clips/s" in proc.stdout
    return json.loads(out.read_text())


def _check_split(r: dict) -> None:
    split = r["split_s"]
    assert set(split) == SPLIT_KEYS
    assert all(v > 0 for k, v in split.items() if k != "other") and split["other"] >= 0
    parts = sum(v for k, v in split.items() if k != "total")
    assert parts == pytest.approx(split["total"], rel=1e-9)
    # the instrumented step and the timed steps measure the same work (generous: a shared CPU is noisy)
    assert 0.2 < split["total"] / r["step_time_s"]["step_s_median"] < 5


def test_bench_pretrain_synthetic_with_reference(tmp_path):
    r = _bench("bench_pretrain.py", tmp_path, "--preset", "tiny", "--batch", "2", "--steps", "2", "--warmup", "1",
               "--split-steps", "1", "--device", "cpu", "--reference")
    flops = pretrain_flops(eat_config("tiny"))
    assert r["flops_per_clip"] == pytest.approx(flops["total"])
    assert r["flops_split"] == pytest.approx({k: v for k, v in flops.items() if k != "total"})
    assert r["clips_per_s"] > 0 and math.isfinite(r["loss"])
    assert r["clips_per_s"] == pytest.approx(2 * 2 / r["step_time_s"]["wall_s"])
    assert r["mfu"] is None and r["peak_flops"] is None  # no peak for a CPU
    assert r["config"]["dtype"] == "fp32" and r["config"]["clones"] == 4
    _check_split(r)
    ref = r["reference"]
    assert ref["clips_per_s"] > 0 and math.isfinite(ref["loss"]) and ref["sdpa_backend"] == "math"
    assert r["speedup_vs_reference"] == pytest.approx(r["clips_per_s"] / ref["clips_per_s"])
    assert r["peak_memory_gib"] > 0 and r["host_syncs_per_step"] is None


def test_bench_pretrain_from_a_manifest_with_fbank_on_the_device(tmp_path):
    manifest = make_unlabelled_corpus(tmp_path / "corpus", num_clips=4, duration=2.0, seed=0)
    r = _bench("bench_pretrain.py", tmp_path, "--preset", "tiny", "--batch", "2", "--clones", "2", "--steps", "1",
               "--warmup", "1", "--split-steps", "1", "--device", "cpu", "--fbank-on-device",
               "--loader", str(manifest), "--workers", "0", "--loader-batches", "1")
    assert r["config"]["fbank_on_device"] and r["config"]["input"] == "loader" and r["config"]["clones"] == 2
    lo = r["loader"]
    assert lo["clips"] == 4
    for key in ("workers_fbank_clips_per_s", "workers_wave_only_clips_per_s", "device_fbank_clips_per_s"):
        assert lo[key] > 0, key
    assert r["clips_per_s"] > 0 and math.isfinite(r["loss"])
    _check_split(r)


def test_bench_finetune_tiny(tmp_path):
    r = _bench("bench_finetune.py", tmp_path, "--preset", "tiny", "--batch", "4", "--steps", "2", "--warmup", "1",
               "--device", "cpu", "--patchout", "6,3")
    cfg = classifier_config("tiny", 527)
    po = PatchoutConfig(s_t=6, s_f=3)
    assert r["config"]["grid"] == [16, 8] and r["config"]["patchout"] == {"s_t": 6, "s_f": 3}
    assert r["train"]["flops_per_clip"] == pytest.approx(classifier_flops_per_clip(cfg, 256, training=True))
    assert r["train_patchout"]["flops_per_clip"] == pytest.approx(
        classifier_flops_per_clip(classifier_config("tiny", 527, patchout=po), 256, training=True))
    assert r["inference"]["flops_per_clip"] == pytest.approx(classifier_flops_per_clip(cfg, 256))
    for name in ("train", "train_patchout", "inference"):
        assert r[name]["clips_per_s"] > 0 and r[name]["mfu"] is None, name
    assert math.isfinite(r["train"]["loss"]) and math.isfinite(r["train_patchout"]["loss"])
    assert r["patchout_speedup"] == pytest.approx(r["train_patchout"]["clips_per_s"] / r["train"]["clips_per_s"])


def test_user_errors_are_one_line(tmp_path):
    """Four bad command lines, run as the user runs them (in parallel: each process mostly imports torch)."""
    missing = tmp_path / "no.tsv"
    cases = [
        ("bench_pretrain.py", ["--loader", str(missing)], f"^error: manifest not found: {re.escape(str(missing))}$", 1),
        ("bench_finetune.py", ["--sdpa-backend", "cudnn"], r"^error: train.sdpa_backend=cudnn needs a CUDA device", 1),
        ("bench_pretrain.py", ["--loader-only"], r"--loader-only", 2),  # argparse: --loader-only needs --loader
        ("bench_finetune.py", ["--patchout", "40"], r"^error: --patchout '40': expected two integers", 1),
    ]
    runs = [subprocess.Popen([sys.executable, str(ROOT / "tools" / tool), "--preset", "tiny", "--device", "cpu",
                               *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for tool, args, _, _ in cases]
    for proc, (tool, _, pattern, code) in zip(runs, cases, strict=True):
        _, err = proc.communicate(timeout=procs.DEADLINE_S)
        assert proc.returncode == code, (tool, err[-2000:])
        last = err.strip().splitlines()[-1]
        assert re.search(pattern, last), (tool, err[-2000:])
        if code == 1:
            assert len(err.strip().splitlines()) == 1, err


def test_step_never_reads_a_device_mask_on_the_host():
    """On the meta device nothing can be read back: any .item()/int()/bool() of a tensor would raise. So a
    full training forward, backward and EMA update with a device-resident mask proves the GPU step needs
    no device-to-host copy for the masks (the visible count comes from the config)."""
    model = EATModel(eat_config("tiny")).to("meta")
    source = torch.empty(2, 256, 128, device="meta")
    mask = torch.empty(8, 128, dtype=torch.bool, device="meta")
    out = model(source, mask)
    assert out["loss"].shape == () and out["loss"].device.type == "meta"
    out["loss"].backward()
    model.after_optimizer_step(1)
    with pytest.raises((RuntimeError, NotImplementedError)):
        int(mask.sum())  # the check above is meaningful: a host read of a meta tensor fails


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts CUDA synchronisations")
def test_gpu_pretraining_step_has_no_host_sync(tmp_path):
    r = _bench("bench_pretrain.py", tmp_path, "--preset", "tiny", "--batch", "2", "--steps", "2", "--warmup", "2",
               "--device", "cuda")
    assert r["host_syncs_per_step"] == 0
