"""Pretraining (``eat.train.pretrain`` and its command line ``recipes/pretrain_as2m.py``) end to end on a
synthetic corpus: python and torchrun (2 CPU ranks, Gloo), DDP and FSDP2, exact resume, preemption, broken
checkpoints, user errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import procs
import pytest
import torch
from safetensors.torch import load_file

from eat.config import load_config
from eat.data.synthetic import make_unlabelled_corpus
from eat.model.eat import EATModel
from eat.train import pretrain
from eat.train.dist import DistEnv
from eat.train.flops import pretrain_flops_per_clip

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "pretrain_as2m.py"
TINY = ROOT / "recipes" / "configs" / "tiny.yaml"
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_unlabelled_corpus(tmp_path_factory.mktemp("corpus"), num_clips=24, duration=2.0, seed=0)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _args(out: Path, manifest: Path, *overrides: str) -> list[str]:
    """One torch thread per process (train.cpu_threads=1): the tiny model gains nothing from more, and
    several ranks share the cores (train.cpu_threads=0 would give each rank cores // 2)."""
    return [str(RECIPE), "--config", str(TINY), f"data.train_manifest={manifest}", f"train.out_dir={out}",
            "train.log_every=1", "train.tensorboard=false", "train.keep_last=0", "train.cpu_threads=1", *overrides]


@pytest.fixture
def restore_threads():
    """In-process runs set this process's torch thread count; give the next test its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _torchrun(out: Path, manifest: Path, *overrides: str) -> list[str]:
    return [TORCHRUN, "--standalone", "--nproc_per_node=2", *_args(out, manifest, *overrides)]


def _check(proc: subprocess.CompletedProcess | subprocess.Popen, output: str, expect: int = 0) -> None:
    assert proc.returncode == expect, output[-4000:]


def run_python(out: Path, manifest: Path, *overrides: str) -> str:
    """One plain ``python`` process, no launcher."""
    proc = procs.run([PYTHON, *_args(out, manifest, *overrides)], capture_output=True, text=True,
                          env=_env())
    _check(proc, proc.stdout + proc.stderr)
    return proc.stdout + proc.stderr


def run_torchrun(out: Path, manifest: Path, *overrides: str) -> str:
    proc = procs.run(_torchrun(out, manifest, *overrides), capture_output=True, text=True, env=_env())
    _check(proc, proc.stdout + proc.stderr)
    return proc.stdout + proc.stderr


def start_two_ranks(out: Path, manifest: Path, *overrides: str) -> subprocess.Popen:
    """Two ranks under ``torchrun --standalone``: its rendezvous binds a port the OS picks at bind time (a port
    chosen first and bound later can be taken in between by another run), in a process group of its own."""
    return subprocess.Popen(_torchrun(out, manifest, *overrides), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(), start_new_session=True)


def finish(*launchers: subprocess.Popen) -> str:
    """Wait for every launcher (stacks dumped and everything killed at the hang deadline); each must exit
    0. Returns the first one's output."""
    outputs = procs.finish(launchers)
    for p, text in zip(launchers, outputs, strict=True):
        _check(p, text)
    return outputs[0]


def run_two_ranks(out: Path, manifest: Path, *overrides: str) -> str:
    return finish(start_two_ranks(out, manifest, *overrides))


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def records(out: Path, kind: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(out, "train")}


def tensors(out: Path, step: int) -> dict[str, torch.Tensor]:
    path = out / f"step_{step:06d}"
    model = {f"model/{k}": v for k, v in load_file(path / "model.safetensors").items()}
    optim = {f"optim/{k}": v for k, v in load_file(path / "optimizer.safetensors").items()}
    return {**model, **optim}


def assert_same(a: dict, b: dict, exact: bool) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            # the key bias gets only rounding-noise gradients, which Adam scales up: atol covers that
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5, msg=k)


@pytest.fixture(scope="module")
def ddp_run(manifest, tmp_path_factory) -> Path:
    """The reference: torchrun, 2 ranks, DDP, 6 steps, checkpoints at 3 and 6."""
    out = tmp_path_factory.mktemp("ddp")
    run_torchrun(out, manifest, "train.max_steps=6", "train.save_every=3", "train.tensorboard=true",
                 "train.peak_tflops=0.001")
    return out


# ------------------------------------------------------------------------------------------ runs


@pytest.mark.slow
def test_torchrun_ddp_trains_and_ranks_end_identical(ddp_run):
    loss = losses(ddp_run)
    assert sorted(loss) == list(range(1, 7))
    assert loss[5] + loss[6] < 0.9 * (loss[1] + loss[2])
    weights = records(ddp_run, "weights")[-1]
    assert len(weights["sha256"]) == 2 and weights["ranks_agree"] and len(set(weights["sha256"])) == 1
    ckpt = ddp_run / "step_000006"
    assert json.loads((ckpt / "trainer.json").read_text())["world_size"] == 2
    assert {"rank_00000.pt", "rank_00001.pt", "complete", "config.yaml"} <= {p.name for p in ckpt.iterdir()}
    keys = load_file(ckpt / "model.safetensors").keys()
    assert {k.split(".")[0] for k in keys} == {"student", "decoder", "teacher"}
    assert list((ddp_run / "tb").glob("events.out.tfevents.*"))
    first = records(ddp_run, "train")[0]
    assert {"frame_loss", "utterance_loss", "grad_norm", "lr", "ema_decay", "clips_per_s"} <= set(first)
    assert first["clips"] == 2 * 4  # 2 ranks x 4 clips
    flops = pretrain_flops_per_clip(pretrain.resolve_model({"preset": "tiny", "encoder": {"target_length": 256}}))
    assert first["mfu"] == pytest.approx(first["clips_per_s"] * flops / (2 * 1e9))  # 0.001 TFLOP/s per rank
    saved = load_config(pretrain.PretrainConfig, ddp_run / "config.yaml")  # the resolved config reloads
    assert saved.train.max_steps == 6 and saved.model["encoder"]["embed_dim"] == 96


@pytest.mark.slow
def test_resume_mid_run_is_bitwise_identical_on_two_ranks(ddp_run, manifest, tmp_path):
    out = tmp_path / "resumed"
    run_two_ranks(out, manifest, "train.max_steps=6", "--resume", str(ddp_run / "step_000003"))
    assert sorted(losses(out)) == [4, 5, 6]
    assert [losses(out)[s] for s in (4, 5, 6)] == [losses(ddp_run)[s] for s in (4, 5, 6)]
    assert_same(tensors(ddp_run, 6), tensors(out, 6), exact=True)  # student, teacher, decoder, Adam moments


@pytest.mark.slow
def test_fsdp2_matches_ddp_and_checkpoints_cross_load(ddp_run, manifest, tmp_path):
    fsdp = tmp_path / "fsdp"
    run_two_ranks(fsdp, manifest, "train.max_steps=6", "train.save_every=3", "train.strategy=fsdp",
                  "train.check_weights=false")
    ref = losses(ddp_run)
    assert losses(fsdp) == pytest.approx(ref, rel=1e-5)
    assert_same(tensors(ddp_run, 3), tensors(fsdp, 3), exact=False)
    # FSDP2 checkpoint -> DDP, and DDP checkpoint -> FSDP2: both continue like the DDP run, here with the
    # 4 clips per rank split into 2 accumulated micro-batches (gradient sync only on the second)
    to_ddp, to_fsdp = tmp_path / "to_ddp", tmp_path / "to_fsdp"
    accum = ("data.batch_size=2", "train.grad_accum=2")
    finish(start_two_ranks(to_ddp, manifest, "train.max_steps=6", *accum, "--resume", str(fsdp / "step_000003")),
           start_two_ranks(to_fsdp, manifest, "train.max_steps=6", "train.strategy=fsdp", *accum, "--resume",
                             str(ddp_run / "step_000003")))  # both at once
    for out in (to_ddp, to_fsdp):
        assert losses(out) == pytest.approx({s: ref[s] for s in (4, 5, 6)}, rel=1e-5)
        assert_same(tensors(ddp_run, 6), tensors(out, 6), exact=False)


def test_plain_python_run_and_fallback_past_a_truncated_checkpoint(manifest, tmp_path, caplog, restore_threads):
    out = tmp_path / "py"
    run_python(out, manifest, "train.max_steps=4", "train.save_every=2")
    assert sorted(losses(out)) == [1, 2, 3, 4]
    assert json.loads((out / "step_000004" / "trainer.json").read_text())["world_size"] == 1
    model = out / "step_000004" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])  # a crash mid-write of the newest checkpoint
    with caplog.at_level(logging.INFO):  # resume=auto, in this process, through the library
        args = _args(out, manifest, "train.max_steps=6", "data.num_workers=0")
        assert pretrain.run(load_config(pretrain.PretrainConfig, TINY, args[3:])) == 0
    assert "skipping checkpoint" in caplog.text and "step_000004" in caplog.text
    assert "step_000002 at step 2" in caplog.text
    assert [r["step"] for r in records(out, "train")][-4:] == [3, 4, 5, 6]


def test_fbank_on_device_gives_the_worker_inputs(manifest):
    """The batched fbank of raw waveforms (the GPU path) equals the per-clip fbank of the loader workers."""
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    inputs = []
    for on_device in (False, True):
        cfg = load_config(pretrain.PretrainConfig, TINY, [f"data.train_manifest={manifest}",
                                                               "data.num_workers=0",
                                                               f"data.fbank_on_device={str(on_device).lower()}"])
        model_cfg = pretrain.resolve_model(cfg.model)
        loader, frontend = pretrain.build_loader(cfg, model_cfg, EATModel(model_cfg), env)
        batch = next(iter(loader))
        assert ("wave" in batch) == on_device
        inputs.append(pretrain.PretrainBatchPrep(frontend)(batch, env.device))
    (a, count_a), (b, count_b) = inputs
    assert count_a == count_b == {"clips": 4, "bad_clips": 0}
    assert a["source"].shape == (4, 256, 128)
    torch.testing.assert_close(a["source"], b["source"], rtol=1e-4, atol=1e-4)
    assert torch.equal(a["mask"], b["mask"]) and a["mask"].shape == (16, 128)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.mark.slow
def test_sigterm_on_one_rank_checkpoints_all_and_resume_auto_continues(manifest, tmp_path):
    out = tmp_path / "pre"
    proc = start_two_ranks(out, manifest, "train.max_steps=100000", "train.save_every=0")
    try:
        procs.wait_until(lambda: '"kind": "train"' in _text(out / "metrics.jsonl"), [proc], "the first logged step")
        workers = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        assert workers, "rank 1 worker not found"
        os.kill(workers[0], signal.SIGTERM)  # only rank 1 is told; rank 0 must agree through the reduction
        output = procs.finish([proc])[0]
    finally:
        procs.kill(procs.run_of([proc]))
    ckpts = sorted(out.glob("step_*"))
    assert len(ckpts) == 1 and (ckpts[0] / "complete").is_file(), output[-3000:]
    stopped = int(ckpts[0].name.split("_")[1])
    assert "preemption signal" in output
    assert proc.returncode != 0 and "exitcode  : 75" in output  # torchrun reports the workers' status 75
    text = run_two_ranks(out, manifest, f"train.max_steps={stopped + 2}")  # resume=auto is the default
    assert f"at step {stopped}" in text
    assert max(losses(out)) == stopped + 2


# ------------------------------------------------------------------------------------ user errors


def test_user_error_is_one_line_on_stderr_and_fails():
    """A real process (the in-process test below covers the other messages)."""
    cmd = [PYTHON, str(RECIPE), "--config", str(TINY), "train.max_stepz=3"]
    proc = procs.run(cmd, capture_output=True, text=True, env=_env())
    assert proc.returncode != 0
    message = "error: unknown config key train.max_stepz in 'train'"
    assert proc.stderr.strip() == message or proc.stderr.strip().startswith(message + ";"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["data.train_manifest=/nonexistent/train.tsv"], "error: data.train_manifest: /nonexistent/train.tsv: no such file"),
        (["optim.lr=fast"], "error: optim.lr: expected a number, got 'fast'"),
        (["model.encoder.dept=2"], "error: unknown config key model.encoder.dept in 'model.encoder'"),
        (["model.preset=huge"], "error: unknown EAT preset 'huge'"),
        (["train.strategy=zero3"], "error: train.strategy: 'zero3' is not one of ['ddp', 'fsdp']"),
        ([], "error: data.train_manifest is not set"),
    ],
)
def test_more_user_errors_in_process(args, message, tmp_path):
    """The library raises one of the errors the command line turns into ``error: <message>`` (one line)."""
    with pytest.raises(pretrain.USER_ERRORS) as info:
        pretrain.run(load_config(pretrain.PretrainConfig, TINY, [f"train.out_dir={tmp_path}", *args]))
    text = f"error: {info.value}"
    assert text.startswith(message) and "\n" not in text


def test_help_lists_the_config_sections():
    proc = procs.run([PYTHON, str(RECIPE), "--help"], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr
    for section in ("model:", "data:", "optim:", "train:", "train_manifest", "max_steps", "--resume", "--data-dir",
                    "init"):
        assert section in proc.stdout


# ------------------------------------------------------------------------------------ in-process


def test_config_files_resolve():
    cfg = load_config(pretrain.PretrainConfig, ROOT / "recipes" / "configs" / "pretrain_as2m.yaml")
    model = pretrain.resolve_model(cfg.model)
    assert (model.encoder.embed_dim, model.encoder.depth, model.clone_batch, model.encoder.target_length) == (
        768, 12, 16, 1024)
    assert (model.ema_decay, model.ema_end_decay, model.ema_anneal_end_step) == (0.9998, 0.99999, 100000)
    assert (cfg.data.batch_size, cfg.data.norm, cfg.optim.lr, cfg.optim.betas) == (12, "audioset", 5e-4, (0.9, 0.95))
    assert (cfg.optim.weight_decay, cfg.optim.decay_all, cfg.optim.warmup_steps, cfg.optim.min_lr) == (
        0.05, True, 53333, 0.0)
    assert (cfg.optim.clip_grad, cfg.train.max_steps) == (4.0, 400000)
    tiny = load_config(pretrain.PretrainConfig, TINY)
    assert pretrain.resolve_model(tiny.model).encoder.target_length == 256
