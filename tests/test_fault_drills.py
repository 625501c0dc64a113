"""Fault drills as clusters cause them: SIGTERM to the whole process group with loader workers (1 process
and 2 torchrun ranks), SIGTERM during start-up, the launcher killed with SIGKILL, every damaged file of the
newest checkpoint, a diverging run, leftovers of killed saves, and metrics of re-run steps."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import procs
import pytest
import torch
from safetensors.torch import load_file
from test_pretrain_recipe import _children
from test_trainer import Toy, make_trainer

from eat.data.synthetic import make_unlabelled_corpus
from eat.train import checkpoint as ckpt
from eat.train.dist import DistEnv

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "pretrain_as2m.py"
TINY = ROOT / "recipes" / "configs" / "tiny.yaml"
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
STEPS = 30  # long enough that a signal lands mid-run (~50-100 ms a step), short enough to stay cheap


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_unlabelled_corpus(tmp_path_factory.mktemp("corpus"), num_clips=24, duration=2.0, seed=0)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **extra}


def _args(out: Path, manifest: Path, *overrides: str) -> list[str]:
    return [str(RECIPE), "--config", str(TINY), f"data.train_manifest={manifest}", f"train.out_dir={out}",
            "train.log_every=1", "train.tensorboard=false", "train.keep_last=0", "train.cpu_threads=1",
            "data.num_workers=2", f"train.max_steps={STEPS}", "train.save_every=0", *overrides]


def _train_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return [r["step"] for r in rows if r.get("kind") == "train"]


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return {**{f"m/{k}": v for k, v in load_file(path / ckpt.MODEL_FILE).items()},
            **{f"o/{k}": v for k, v in load_file(path / ckpt.OPTIM_TENSORS).items()}}


def _assert_bitwise(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def _wait_for_step(out: Path, proc: subprocess.Popen, step: int) -> None:
    """Wait until the run has logged ``step``; a run that hangs instead has its stacks printed and is killed."""
    procs.wait_until(lambda: max(_train_steps(out), default=0) >= step, [proc], f"step {step} of {out}",
                     ended=lambda p: p.stdout.read()[-3000:])


def _torchrun(out: Path, manifest: Path, *overrides: str) -> subprocess.Popen:
    """Two ranks under ``torchrun --standalone`` (its rendezvous binds a port the OS picks at bind time), in
    a process group of their own as under a scheduler."""
    return subprocess.Popen([TORCHRUN, "--standalone", "--nproc_per_node=2", *_args(out, manifest, *overrides)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)


def _finish(procs_: list[subprocess.Popen], expect: int = 0) -> str:
    outs = procs.finish(procs_)
    for p, text in zip(procs_, outs, strict=True):
        assert p.returncode == expect, text[-3000:]
    return outs[0]


def _no_leftovers(out: Path) -> None:
    assert not list(out.glob(".tmp_step_*"))
    for step in out.glob("step_*"):
        ckpt.check_complete(step)


# ----------------------------------------------------------------------------- process-group SIGTERM


@pytest.mark.slow
def test_group_sigterm_with_loader_workers_one_process_resumes_bitwise(manifest, tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    reference = subprocess.Popen([PYTHON, *_args(ref, manifest, "data.num_workers=0")], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=_env(), start_new_session=True)
    proc = subprocess.Popen([PYTHON, *_args(cut, manifest)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env(), start_new_session=True)  # own process group, as under Slurm
    try:
        _wait_for_step(cut, proc, 3)
        os.killpg(proc.pid, signal.SIGTERM)  # main process and both loader workers
        output = procs.finish([proc])[0]
    finally:
        procs.kill(procs.run_of([proc]))
    assert proc.returncode == 75, output[-3000:]
    assert "killed by signal" not in output and "Traceback" not in output
    saved = ckpt.list_checkpoints(cut)
    assert len(saved) == 1 and int(saved[0].name[5:]) == max(_train_steps(cut)) < STEPS  # the current step
    _no_leftovers(cut)
    resumed = subprocess.Popen([PYTHON, *_args(cut, manifest)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=_env(), start_new_session=True)
    _finish([resumed, reference])
    assert _train_steps(cut) == list(range(1, STEPS + 1))  # no duplicate rows for re-run steps
    assert _losses(cut) == _losses(ref)
    _assert_bitwise(ref / f"step_{STEPS:06d}", cut / f"step_{STEPS:06d}")


@pytest.mark.slow
def test_group_sigterm_under_torchrun_two_ranks_resumes_bitwise(manifest, tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    reference = _torchrun(ref, manifest, "data.num_workers=0")  # batches do not depend on workers
    launcher = _torchrun(cut, manifest)
    try:
        _wait_for_step(cut, launcher, 3)
        os.killpg(launcher.pid, signal.SIGTERM)  # torchrun, both ranks and their 2 loader workers each
        output = procs.finish([launcher])[0]
    finally:
        procs.kill(procs.run_of([launcher]))
    # the ranks save and exit 75; torchrun itself was signalled too and reports that (non-zero), see docs
    assert "preemption signal" in output and "killed by signal" not in output, output[-3000:]
    assert launcher.returncode != 0
    saved = ckpt.list_checkpoints(cut)
    assert len(saved) == 1 and int(saved[0].name[5:]) == max(_train_steps(cut)) < STEPS, output[-3000:]
    assert {"rank_00000.pt", "rank_00001.pt"} <= {p.name for p in saved[0].iterdir()}
    _no_leftovers(cut)
    _finish([_torchrun(cut, manifest), reference])  # train.resume=auto is the default
    assert _train_steps(cut) == list(range(1, STEPS + 1))
    assert _losses(cut) == _losses(ref)
    _assert_bitwise(ref / f"step_{STEPS:06d}", cut / f"step_{STEPS:06d}")


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.2, "ready"])
def test_group_sigterm_during_start_up_exits_cleanly(manifest, tmp_path, delay):
    """At 0.2 s the interpreter is still importing (default action: killed, nothing written); once the
    trainer is built the signal is remembered and the run stops at its first step boundary with status 75:
    nothing, or (when the first step was already under way as the signal landed) a complete step-1 checkpoint."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([PYTHON, *_args(out, manifest)], stdout=sink, stderr=subprocess.STDOUT, text=True,
                                env=_env(), start_new_session=True)
    try:
        if delay == "ready":  # the recipe prints its summary line right before fit()
            procs.wait_until(lambda: "EAT tiny" in log.read_text(), [proc], "the run's summary line",
                             ended=lambda p: log.read_text()[-2000:])
        else:
            time.sleep(delay)
        os.killpg(proc.pid, signal.SIGTERM)
        procs.finish([proc])
    finally:
        procs.kill(procs.run_of([proc]))
    output = log.read_text()
    assert proc.returncode in ((-signal.SIGTERM, 75) if delay != "ready" else (75,)), output[-2000:]
    assert "Traceback" not in output
    if out.exists():
        _no_leftovers(out)
        saved = ckpt.list_checkpoints(out)
        if saved:  # only a signal that landed during the first step leaves one, and only that step
            assert delay == "ready" and [c.name for c in saved] == ["step_000001"]
        assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_ranks_stop_when_the_launcher_is_killed(manifest, tmp_path):
    out = tmp_path / "run"
    launcher = subprocess.Popen([TORCHRUN, "--standalone", "--nproc_per_node=2",
                                 *_args(out, manifest, "train.max_steps=100000")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                                start_new_session=True)
    try:
        _wait_for_step(out, launcher, 2)
        ranks = [int(p) for p in _children(launcher.pid)]
        assert len(ranks) == 2
        launcher.kill()  # SIGKILL: torchrun cannot forward anything
        launcher.wait()
        procs.wait_until(lambda: not any(procs.alive(p) for p in ranks), [], "the ranks' stop after their "
                         "launcher died", extra=ranks)
    finally:
        procs.kill(procs.run_of([launcher]) + [p for p in ranks if procs.alive(p)])
    saved = ckpt.list_checkpoints(out)  # the death signal turned the launcher's death into a preemption
    assert saved and int(saved[0].name[5:]) >= 2
    _no_leftovers(out)


# ------------------------------------------------------------------------------- damaged checkpoints

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _tiny_run(tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    run = tmp_path / "run"
    for step in (1, 2):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        ckpt.save_checkpoint(run, step, model, opt, ENV, {"epoch": 0}, {"data": {"pos": step}}, {"cfg": step})
    return run, model, opt


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random_bytes_same_size":
        path.write_bytes(os.urandom(len(data)))
    elif how == "foreign_pickle":
        path.write_bytes(pickle.dumps({"not": "ours", "x": object.__name__}))
    elif how == "one_flipped_byte":
        b = bytearray(data)
        b[len(b) // 2] ^= 0xFF
        path.write_bytes(bytes(b))


FILES = [ckpt.MODEL_FILE, ckpt.OPTIM_TENSORS, ckpt.OPTIM_META, ckpt.TRAINER_FILE, ckpt.CONFIG_FILE, "rank_00000.pt",
         ckpt.MARKER]


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("how", ["missing", "truncated", "random_bytes_same_size", "foreign_pickle",
                                 "one_flipped_byte"])
def test_any_damaged_file_of_the_newest_checkpoint_falls_back(tmp_path, caplog, name, how):
    run, model, opt = _tiny_run(tmp_path)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    _damage(run / "step_000002" / name, how)
    with caplog.at_level(logging.WARNING):
        loaded = ckpt.load_checkpoint(run, model, opt, ENV)
    assert loaded.path.name == "step_000001" and loaded.rank["data"] == {"pos": 1}
    assert "skipping checkpoint" in caplog.text and "step_000002" in caplog.text
    if name != ckpt.MARKER or how != "missing":
        assert name in caplog.text  # the warning names the damaged file
    assert not torch.equal(model.weight, good["weight"])  # step 1's weights, not step 2's


def test_a_named_damaged_checkpoint_is_an_error_naming_the_file(tmp_path):
    run, model, opt = _tiny_run(tmp_path)
    _damage(run / "step_000002" / "rank_00000.pt", "foreign_pickle")
    with pytest.raises(ckpt.CheckpointError, match="rank_00000.pt"):
        ckpt.load_checkpoint(run / "step_000002", model, opt, ENV)


def test_stale_temp_folders_are_removed_by_the_next_save(tmp_path):
    run, model, opt = _tiny_run(tmp_path)
    (run / ".tmp_step_000099").mkdir()
    (run / ".tmp_step_000099" / "model.safetensors").write_bytes(b"half")
    ckpt.save_checkpoint(run, 3, model, opt, ENV, {"epoch": 0}, {"data": {}})
    assert not list(run.glob(".tmp_step_*"))


def test_disk_full_while_saving_is_an_oserror_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    run, model, opt = _tiny_run(tmp_path)

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint(run, 3, model, opt, ENV, {"epoch": 0}, {"data": {}})
    assert info.value.errno == 28 and info.value.filename.endswith("model.safetensors")
    assert not list(run.glob(".tmp_step_*")) and [p.name for p in ckpt.list_checkpoints(run)] == [
        "step_000002", "step_000001"]


# ------------------------------------------------------------------------------------- divergence


def test_diverging_run_keeps_its_last_good_checkpoint_and_names_it(tmp_path):
    """Updates 5.. are non-finite; saves every step with keep_last=2 would delete step 4 by step 7."""
    t = make_trainer(tmp_path, model=Toy(nan_steps=set(range(5, 100))), max_steps=40, log_every=1,
                     save_every=1, keep_last=2, max_bad_steps=6)
    with pytest.raises(FloatingPointError) as info:
        t.fit()
    good = tmp_path / "run" / "step_000004"
    assert str(good) in str(info.value) and "6 updates in a row" in str(info.value)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "run")]
    assert names == ["step_000009", "step_000008", "step_000004"]  # the stop comes before step 10 is saved
    state = json.loads((good / ckpt.TRAINER_FILE).read_text())
    assert state["nonfinite_run"] == 0
    assert json.loads((tmp_path / "run" / "step_000009" / ckpt.TRAINER_FILE).read_text())["nonfinite_run"] == 5
    # the named checkpoint resumes
    again = make_trainer(tmp_path, model=Toy(), max_steps=6, log_every=1, resume=str(good))
    assert again.step == 4 and again.last_good_checkpoint == good


def test_resume_drops_metrics_rows_of_steps_it_redoes(tmp_path):
    make_trainer(tmp_path, max_steps=6, log_every=1, save_every=3).fit()
    run = tmp_path / "run"
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 7, "lo')  # a line torn by a kill
    import shutil

    shutil.rmtree(run / "step_000006")  # as if killed after step 6 was logged but before it was saved
    make_trainer(tmp_path, max_steps=6, log_every=1, save_every=3).fit()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
