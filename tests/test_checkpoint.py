"""Checkpoint files: round trip, RNG restore, atomic layout, pruning, and fallback past broken checkpoints."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from torch import nn

from eat.train import checkpoint as ckpt
from eat.train.dist import DistEnv
from eat.train.optim import OptimConfig, build_optimizer, param_groups

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.student = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5))
        self.teacher = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5)).requires_grad_(False)
        self.register_buffer("table", torch.arange(6.0).reshape(2, 3))


def setup(seed=0, fused="foreach"):
    torch.manual_seed(seed)
    net = Net()
    opt = build_optimizer(param_groups(net, 0.05), OptimConfig(lr=0.1, implementation=fused), ENV.device)
    for _ in range(2):
        net.student(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    return net, opt


def save(run_dir, step, net, opt, **kw):
    return ckpt.save_checkpoint(run_dir, step, net, opt, ENV, {"epoch": 1}, {"data": {"consumed": step}},
                                {"model": {"name": "x"}}, **kw)


def test_round_trip_restores_model_optimizer_rng_and_state(tmp_path):
    net, opt = setup()
    random.seed(3)
    np.random.seed(3)
    path = save(tmp_path, 7, net, opt)
    after_save = (torch.rand(3), np.random.rand(2), random.random())
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["complete", "config.yaml", "model.safetensors", "optimizer.json", "optimizer.safetensors",
         "rank_00000.pt", "trainer.json"])
    fresh, fresh_opt = setup(seed=1)
    loaded = ckpt.load_checkpoint(tmp_path, fresh, fresh_opt, ENV)
    assert loaded.path == path and loaded.trainer == {"epoch": 1, "step": 7, "world_size": 1}
    assert loaded.rank["data"] == {"consumed": 7}
    for k, v in net.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    a, b = opt.state_dict(), fresh_opt.state_dict()
    for pid, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["state"][pid][key]), (pid, key)
    assert [g["lr"] for g in a["param_groups"]] == [g["lr"] for g in b["param_groups"]]
    after_load = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(after_save[0], after_load[0])
    assert np.array_equal(after_save[1], after_load[1]) and after_save[2] == after_load[2]


def test_implementation_switches_follow_the_running_optimizer(tmp_path):
    net, opt = setup(fused="fused")
    save(tmp_path, 1, net, opt)
    fresh, fresh_opt = setup(seed=1, fused="foreach")
    ckpt.load_checkpoint(tmp_path, fresh, fresh_opt, ENV)
    assert not fresh_opt.param_groups[0]["fused"] and fresh_opt.param_groups[0]["foreach"]


def test_tensors_sharing_storage_are_saved(tmp_path):
    net, opt = setup()
    net.teacher[0].weight = net.student[0].weight  # tied: the same storage twice in the state dict
    save(tmp_path, 1, net, opt)
    fresh, fresh_opt = setup(seed=1)
    fresh.teacher[0].weight = fresh.student[0].weight
    ckpt.load_checkpoint(tmp_path, fresh, fresh_opt, ENV)
    assert torch.equal(fresh.teacher[0].weight, net.student[0].weight)


def test_keep_last_prunes_and_temp_dirs_are_ignored(tmp_path):
    net, opt = setup()
    for step in (1, 2, 3, 4):
        save(tmp_path, step, net, opt, keep_last=2)
    (tmp_path / ".tmp_step_000009").mkdir()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000004", "step_000003"]


def _broken_cases():
    def truncate(path):
        f = path / ckpt.MODEL_FILE
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    def no_marker(path):
        (path / ckpt.MARKER).unlink()

    def missing_file(path):
        (path / ckpt.OPTIM_TENSORS).unlink()

    def garbage_same_size(path):  # sizes match the marker, but the content does not load
        f = path / ckpt.MODEL_FILE
        f.write_bytes(b"\0" * f.stat().st_size)

    return [truncate, no_marker, missing_file, garbage_same_size]


@pytest.mark.parametrize("breaker", _broken_cases(), ids=lambda f: f.__name__)
def test_broken_latest_falls_back_to_previous_with_a_warning(tmp_path, caplog, breaker):
    net, opt = setup()
    save(tmp_path, 1, net, opt)
    first = {k: v.clone() for k, v in net.state_dict().items()}
    net.student[0].weight.data += 1
    latest = save(tmp_path, 2, net, opt)
    breaker(latest)
    fresh, fresh_opt = setup(seed=1)
    with caplog.at_level(logging.WARNING):
        loaded = ckpt.load_checkpoint(tmp_path, fresh, fresh_opt, ENV)
    assert loaded.trainer["step"] == 1
    assert "skipping checkpoint" in caplog.text and "step_000002" in caplog.text
    assert torch.equal(fresh.student[0].weight, first["student.0.weight"])
    with pytest.raises(ckpt.CheckpointError, match="step_000002"):  # asked for explicitly: no fallback
        ckpt.load_checkpoint(latest, fresh, fresh_opt, ENV)


def test_no_usable_checkpoint_is_an_error_and_an_empty_dir_is_none(tmp_path):
    net, opt = setup()
    assert ckpt.load_checkpoint(tmp_path, net, opt, ENV) is None
    path = save(tmp_path, 1, net, opt)
    (path / ckpt.MARKER).write_text(json.dumps({"files": {"model.safetensors": 1}}))
    with pytest.raises(ckpt.CheckpointError, match="no usable checkpoint"):
        ckpt.load_checkpoint(tmp_path, net, opt, ENV)


def test_checkpoint_loads_with_safe_loaders_only(tmp_path):
    net, opt = setup()
    path = save(tmp_path, 3, net, opt)
    rank = torch.load(path / ckpt.rank_file(0), weights_only=True)
    assert set(rank) == {"data", "rng"} and set(rank["rng"]) == {"torch", "numpy", "python"}
    meta = json.loads((path / ckpt.OPTIM_META).read_text())
    assert meta["param_groups"][0]["params"][0].startswith("student.")


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    net, opt = setup()
    save(tmp_path, 1, net, opt)
    other = nn.Module()
    other.student = nn.Sequential(nn.Linear(3, 7))
    other_opt = build_optimizer(param_groups(other, 0.05), OptimConfig(), ENV.device)
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model"):
        ckpt.load_checkpoint(tmp_path, other, other_opt, ENV)
