"""Memory and speed predicted without a GPU (eat.apps.gpu_memory, eat.apps.gpu_roofline, tools/predict_gpu.py): the
accounting is checked on cases whose answer is known exactly."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import procs
import pytest
import torch

from eat.apps.gpu_dryrun import fake_cuda
from eat.apps.gpu_memory import LiveBytes, StepMemory, largest_batch, measure_pretrain_step, predict
from eat.apps.gpu_roofline import GPU, Op, OpRecorder, StepOps, record_pretrain_step
from eat.apps.gpu_roofline import predict as roofline
from eat.model.eat import eat_config
from eat.train.flops import pretrain_flops_per_clip

ROOT = Path(__file__).resolve().parents[1]


def test_live_bytes_counts_storages_while_they_live():
    with fake_cuda(), LiveBytes() as live:
        a = torch.empty(1000)  # 4000 bytes
        view = a[:10]  # shares the storage: nothing new
        assert live.current == 4000
        b = torch.empty(500, dtype=torch.bfloat16)  # 1000 bytes
        assert live.current == live.peak == 5000
        del a, b
        gc.collect()
        assert live.current == 4000  # the view keeps a's storage alive
        del view
        gc.collect()
        assert live.current == 0 and live.peak == 5000


def test_step_memory_static_parts_are_the_parameters():
    cfg = eat_config("tiny")
    m = measure_pretrain_step(cfg, 2)
    from eat.model.eat import EATModel

    model = EATModel(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert m.grads == 4 * trainable and m.optimizer == 8 * trainable  # fp32 grads, AdamW's two fp32 moments
    assert m.teacher == 4 * sum(p.numel() for p in model.teacher.parameters())
    bigger = measure_pretrain_step(cfg, 4)
    assert bigger.transient > m.transient > m.grads  # activations grow with the batch


def test_predict_parts_and_largest_batch():
    gib = 2**30
    small = StepMemory(1, 16, params=gib, teacher=gib, grads=gib, optimizer=2 * gib, transient=3 * gib, block=0)
    large = StepMemory(2, 16, params=gib, teacher=gib, grads=gib, optimizer=2 * gib, transient=5 * gib, block=0)
    assert predict(small, "ddp", fragmentation=0.0)["total_gib"] == pytest.approx(8.0)  # 1+1+2+3 + buckets 1
    fsdp = predict(small, "fsdp", world=4, fragmentation=0.0)
    assert fsdp["total_gib"] == pytest.approx(0.25 + 0.25 + 0.5 + (3 - 1 + 0.25))
    # ddp: 6 GiB + 2 GiB per clip -> 80 GiB fits 37 clips
    assert largest_batch(small, large, 80.0, strategy="ddp", fragmentation=0.0) == 37


def test_roofline_sums_each_op_at_its_bound():
    gpu = GPU("test", half_flops=100e12, fp32_flops=10e12, bandwidth=1e12)
    ops = [Op("mm", 1e12, 1e9, True),  # compute 10 ms > memory 1 ms
           Op("mm", 1e11, 1e8, False),  # fp32 product: 10 ms at the fp32 peak
           Op("add", 0.0, 2e9, False)]  # memory 2 ms
    r = roofline(StepOps("t", 4, 1, "ours", ops, model_flops=1e12), gpu, launch_s=1e-3)
    assert r["step_ms"] == pytest.approx(10 + 10 + 2 + 3)
    assert r["compute_bound_ms"] == pytest.approx(20) and r["memory_bound_ms"] == pytest.approx(2)
    assert r["clips_per_s"] == pytest.approx(4 / 0.025)
    assert r["mfu_bound"] == pytest.approx(1e12 / (0.025 * 100e12))


def test_recorded_step_flops_match_the_model_formula():
    """The FLOPs seen op by op (forward, backward, optimizer, EMA) equal eat.train.flops' count within 1 %
    (the formula leaves out biases and element-wise work)."""
    cfg = eat_config("tiny")
    step = record_pretrain_step(cfg, 2, "tiny")
    counted = sum(op.flops for op in step.ops)
    assert counted == pytest.approx(2 * pretrain_flops_per_clip(cfg), rel=0.01)
    assert any(op.half for op in step.ops)  # bf16 products under autocast
    views = [op for op in step.ops if op.name in ("aten.view", "aten.transpose", "aten.expand")]
    assert not views  # views move no bytes and launch nothing


def test_op_recorder_bytes_of_a_matmul():
    with fake_cuda(), OpRecorder() as rec:
        a = torch.empty(64, 32, dtype=torch.bfloat16)
        b = torch.empty(32, 16, dtype=torch.bfloat16)
        torch.mm(a, b)
    (op,) = [o for o in rec.ops if o.name == "aten.mm"]
    assert op.flops == 2 * 64 * 32 * 16 and op.bytes == 2 * (64 * 32 + 32 * 16 + 64 * 16) and op.half


@pytest.mark.slow
def test_tool_memory_and_speed_tiny(tmp_path, capsys):
    from eat.apps import predict_gpu

    for kind, extra in (("memory", ["--world", "2"]), ("speed", ["--no-calibrate"])):
        out = tmp_path / f"{kind}.json"
        predict_gpu.main([kind, "--preset", "tiny", "--batch", "1", "--json", str(out), *extra])
        data = json.loads(out.read_text())
        assert data["kind"] == kind and data["rows"]
    printed = capsys.readouterr().out
    assert "largest batch in 80 GiB" in printed and "| H100 SXM | 1 x 4 |" in printed
    r = procs.run([sys.executable, str(ROOT / "tools" / "predict_gpu.py"), "speed", "--help"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "--launch-us" in r.stdout
