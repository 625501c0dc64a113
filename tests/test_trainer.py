"""The generic training loop on a toy model (single process): updates, accumulation, resume, guards, logs."""

from __future__ import annotations

import copy
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from eat.config import ConfigError
from eat.train.checkpoint import MODEL_FILE, OPTIM_TENSORS, list_checkpoints
from eat.train.dist import DistEnv, configure_cpu_threads
from eat.train.optim import OptimConfig, lr_at, param_groups
from eat.train.trainer import TrainConfig, Trainer, check_sdpa_backend

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
TRUE_W = torch.tensor([1.5, -2.0, 0.5, 3.0])


class Toy(nn.Module):
    """Linear regression student with an EMA teacher and a noisy auxiliary term (uses the global RNG)."""

    def __init__(self, nan_steps: set[int] | None = None):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 8), nn.Linear(8, 1)])
        self.teacher = copy.deepcopy(self.blocks).requires_grad_(False)
        self.nan_steps = nan_steps or set()
        self.forwards = 0
        self.noise = True
        self.hook_steps: list[int] = []

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        self.forwards += 1
        h = self.blocks[1](torch.tanh(self.blocks[0](x))).squeeze(-1)
        noise = 1e-3 * torch.randn(()) if self.noise else 0.0
        loss = ((h - y) ** 2).mean() + noise * h.mean()
        if self.forwards in self.nan_steps:
            loss = loss * float("nan")
        return {"loss": loss, "mse": ((h - y) ** 2).mean().detach(), "sample_size": x.shape[0]}

    def after_optimizer_step(self, step: int) -> None:
        self.hook_steps.append(step)
        torch._foreach_lerp_(list(self.teacher.parameters()), list(self.blocks.parameters()), 0.1)


class ToyData:
    """``per_epoch`` batches per epoch, each keyed by (epoch, batch index); resumable like SkippingLoader."""

    def __init__(self, batch: int = 16, per_epoch: int = 5):
        self.batch, self.per_epoch = batch, per_epoch
        self.epoch, self.consumed = 0, 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = state["epoch"], state["consumed"]

    def batch_at(self, epoch: int, i: int) -> dict:
        g = torch.Generator().manual_seed(1000 * epoch + i)
        x = torch.randn(self.batch, 4, generator=g)
        return {"x": x, "y": x @ TRUE_W}

    def __iter__(self):
        while self.consumed < self.per_epoch:
            self.consumed += 1
            yield self.batch_at(self.epoch, self.consumed - 1)


def make_trainer(tmp_path, name="run", model=None, data=None, optim=None, **train):
    torch.manual_seed(0)
    model = model if model is not None else Toy()
    settings = dict(max_steps=8, log_every=2, save_every=0, keep_last=0, tensorboard=False, device="cpu")
    cfg = TrainConfig(out_dir=str(tmp_path / name), **{**settings, **train})
    optim = optim or OptimConfig(lr=0.05, warmup_steps=2, weight_decay=0.01, clip_grad=1.0)
    groups = lambda m: param_groups(m, optim.weight_decay, optim.decay_all)  # noqa: E731
    return Trainer(model, data or ToyData(), cfg, optim, ENV, groups, config={"toy": True})


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_trains_logs_and_calls_hook(tmp_path):
    t = make_trainer(tmp_path, max_steps=30, log_every=5, eval_every=10)
    calls = []
    t.eval_fn = lambda model, step: calls.append(step) or {"mse_eval": 0.5}
    result = t.fit()
    assert result.status == "done" and result.step == 30
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.25 * losses[0]
    assert t.module.hook_steps == list(range(1, 31))
    assert calls == [10, 20, 30]
    # LR of the last update, scaled per group
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(30, 0.05, 2, 30))
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert {"loss", "mse", "lr", "grad_norm", "clips_per_s", "sample_size"} <= set(train[0])
    assert train[0]["clips"] == 5 * 16
    assert [r["step"] for r in records if r["kind"] == "eval"] == [10, 20, 30]
    assert [r for r in records if r["kind"] == "weights"][0]["ranks_agree"]
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000030"]
    assert (tmp_path / "run" / "config.yaml").read_text().strip() == "toy: true"


def test_teacher_stays_out_of_the_optimizer(tmp_path):
    t = make_trainer(tmp_path, max_steps=3)
    before = [p.clone() for p in t.module.teacher.parameters()]
    t.fit()
    optimised = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in t.module.teacher.parameters()}
    # the teacher moved only through the hook: 3 lerps towards the student
    assert not all(torch.equal(a, b) for a, b in zip(before, t.module.teacher.parameters(), strict=True))


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    big = make_trainer(tmp_path, "big", data=ToyData(batch=16), max_steps=4)
    small = make_trainer(tmp_path, "small", data=ToyData(batch=8, per_epoch=10), max_steps=4, grad_accum=2)

    # feed "small" the two halves of each of "big"'s batches
    def halves(epoch, i):
        batch = ToyData(batch=16).batch_at(epoch, i // 2)
        return {k: (v[:8] if i % 2 == 0 else v[8:]) for k, v in batch.items()}

    small.data.batch_at = halves
    for t in (big, small):
        t.module.noise = False
    losses = [[h["loss"] for h in t.fit().history] for t in (big, small)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # logged per update, not per micro-batch
    for a, b in zip(big.module.parameters(), small.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _tensors(run_dir, step):
    path = run_dir / f"step_{step:06d}"
    return load_file(path / MODEL_FILE), load_file(path / OPTIM_TENSORS)


def test_resume_is_bitwise_exact_across_an_epoch_boundary(tmp_path):
    make_trainer(tmp_path, "full", max_steps=8, save_every=3).fit()
    resumed = make_trainer(tmp_path, "resumed", max_steps=8, resume=str(tmp_path / "full" / "step_000003"))
    assert (resumed.step, resumed.epoch, resumed.data.state_dict()) == (3, 0, {"epoch": 0, "consumed": 3})
    resumed.fit()
    full_model, full_optim = _tensors(tmp_path / "full", 8)
    res_model, res_optim = _tensors(tmp_path / "resumed", 8)
    assert full_model.keys() == res_model.keys() and full_optim.keys() == res_optim.keys()
    for k in full_model:
        assert torch.equal(full_model[k], res_model[k]), k
    for k in full_optim:
        assert torch.equal(full_optim[k], res_optim[k]), k
    assert any(k.startswith("teacher.") for k in full_model)


def test_resume_auto_continues_the_same_run(tmp_path):
    make_trainer(tmp_path, "run", max_steps=8, save_every=4).fit()
    again = make_trainer(tmp_path, "run", max_steps=12)
    assert again.step == 8 and again.epoch == 1 and again.data.state_dict() == {"epoch": 1, "consumed": 3}
    assert again.fit().step == 12
    fresh = make_trainer(tmp_path, "other", max_steps=2, resume="none")
    assert fresh.step == 0


@pytest.mark.parametrize("fused", ["foreach", "fused"])
def test_non_finite_update_is_skipped_and_counted(tmp_path, fused):
    optim = OptimConfig(lr=0.05, warmup_steps=2, weight_decay=0.01, clip_grad=1.0, implementation=fused)
    t = make_trainer(tmp_path, model=Toy(nan_steps={3}), optim=optim, max_steps=4, log_every=4)
    snapshots = []
    real_step = t.optimizer.step

    def spy(*a, **k):
        out = real_step(*a, **k)
        snapshots.append([p.detach().clone() for p in t.module.blocks.parameters()])
        return out

    t.optimizer.step = spy
    result = t.fit()
    if fused == "fused":  # the kernel ran but changed nothing at step 3
        assert len(snapshots) == 4
        assert all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2], strict=True))
        steps = {int(s["step"]) for s in t.optimizer.state.values()}
        assert steps == {3}  # the skipped update did not advance Adam's step count
    else:
        assert len(snapshots) == 3
        assert t.module.hook_steps == [1, 2, 4]
    assert result.history[-1]["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in t.module.parameters())


def test_too_many_non_finite_updates_stop_the_run(tmp_path):
    t = make_trainer(tmp_path, model=Toy(nan_steps={2, 3, 4}), max_steps=8, log_every=1, max_bad_steps=3)
    with pytest.raises(FloatingPointError, match="3 updates in a row"):
        t.fit()


def test_preemption_signal_saves_and_resume_matches(tmp_path):
    make_trainer(tmp_path, "full", max_steps=6).fit()
    t = make_trainer(tmp_path, "cut", max_steps=6)
    real_prepare = t.prepare
    seen = []

    def prepare(batch, device):
        seen.append(1)
        if len(seen) == 3:  # signal arrives during update 3
            os.kill(os.getpid(), signal.SIGTERM)
        return real_prepare(batch, device)

    t.prepare = prepare
    result = t.fit()
    assert result.status == "preempted" and result.step == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler removed again
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step_000003"]
    assert make_trainer(tmp_path, "cut", max_steps=6).fit().status == "done"
    full, _ = _tensors(tmp_path / "full", 6)
    cut, _ = _tensors(tmp_path / "cut", 6)
    for k in full:
        assert torch.equal(full[k], cut[k]), k


def test_train_step_is_the_update_fit_runs(tmp_path):
    """A hand-written loop over the public step API ends with the weights of fit() (bitwise)."""
    ref = make_trainer(tmp_path, "fit", max_steps=6, grad_accum=2)
    ref.fit()
    t = make_trainer(tmp_path, "manual", max_steps=6, grad_accum=2)
    batches = t.batches()
    for step in range(1, 7):
        out = t.train_step(next(batches), next(batches))
        assert t.step == step and set(out) == {"loss", "mse", "sample_size", "grad_norm", "skipped"}
        assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in out.values())
        assert out["skipped"] == 0 and out["sample_size"] == 16  # mean over the micro-batches
    for a, b in zip(ref.module.parameters(), t.module.parameters(), strict=True):
        assert torch.equal(a, b)
    assert t.module.hook_steps == list(range(1, 7)) and t.epoch == 2  # 12 batches of 5 per epoch
    logged = t.metrics.reduce(ENV)
    assert logged["clips"] == 6 * 2 * 16 and logged["mse"] > 0
    with pytest.raises(ValueError, match="grad_accum=2 micro-batches, got 1"):
        t.train_step(next(batches))


def test_hook_replaced_on_the_module_is_used(tmp_path):
    t = make_trainer(tmp_path, max_steps=2)
    calls = []
    t.module.after_optimizer_step = calls.append
    t.fit()
    assert calls == [1, 2] and t.module.hook_steps == []


class AttentionToy(Toy):
    """Toy whose forward runs SDPA and records which attention kernels were allowed, forward and backward."""

    def __init__(self):
        super().__init__()
        self.noise = False
        self.allowed: list[tuple[str, bool, bool]] = []

    def _record(self, phase: str) -> None:
        self.allowed.append((phase, torch.backends.cuda.math_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        self._record("forward")
        q = torch.tanh(self.blocks[0](x)).view(x.shape[0], 1, 2, 4)  # (batch, heads, tokens, dim)
        q.register_hook(lambda grad: self._record("backward"))  # runs after the attention's backward
        a = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        pred = self.blocks[1](a.reshape(x.shape[0], 8)).squeeze(-1)
        return {"loss": ((pred - y) ** 2).mean()}


def test_sdpa_backend_pins_the_kernel_and_is_validated(tmp_path):
    runs = {}
    for backend in ("auto", "math", "flash"):
        torch.manual_seed(0)
        t = make_trainer(tmp_path, backend, model=AttentionToy(), max_steps=2, sdpa_backend=backend)
        runs[backend] = [h["loss"] for h in t.fit().history]
        phases = {phase for phase, _, _ in t.module.allowed}
        assert phases == {"forward", "backward"}
        for _, math_on, flash_on in t.module.allowed:
            assert (math_on, flash_on) == {"auto": (True, True), "math": (True, False), "flash": (False, True)}[backend]
    assert runs["math"] == pytest.approx(runs["auto"], rel=1e-5)
    assert runs["flash"] == pytest.approx(runs["auto"], rel=1e-5)
    for backend in ("cudnn", "efficient"):
        with pytest.raises(ConfigError, match=f"train.sdpa_backend={backend} needs a CUDA device"):
            make_trainer(tmp_path, backend, sdpa_backend=backend)
    cuda = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cuda"))
    with pytest.raises(ConfigError, match="needs half precision on CUDA"):
        check_sdpa_backend("flash", cuda.device, bf16=False)
    check_sdpa_backend("efficient", cuda.device, bf16=False)  # has an fp32 kernel


def test_cudnn_benchmark_and_cpu_threads_follow_the_config(tmp_path, monkeypatch):
    before = (torch.backends.cudnn.benchmark, torch.get_num_threads())
    try:
        make_trainer(tmp_path, "a", cudnn_benchmark=True, cpu_threads=1)
        assert torch.backends.cudnn.benchmark and torch.get_num_threads() == 1
        make_trainer(tmp_path, "b", cudnn_benchmark=False)
        assert not torch.backends.cudnn.benchmark
        # two CPU ranks on this machine under torchrun (which exports OMP_NUM_THREADS=1): a fair share each
        two = DistEnv(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        cores = len(os.sched_getaffinity(0))
        assert configure_cpu_threads(two) == max(1, cores // 2)
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting is kept
        assert configure_cpu_threads(two) == 1
        assert configure_cpu_threads(two, threads=2) == 2
        torch.set_num_threads(1)
        assert configure_cpu_threads(ENV) == 1  # one process: torch's choice stays
    finally:
        torch.backends.cudnn.benchmark = before[0]
        torch.set_num_threads(before[1])
