import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from eat.audio.fbank import FrontendConfig
from eat.data.datasets import MaskConfig, PretrainDataset, Skipped
from eat.data.loaders import (
    ResumableDistributedSampler,
    SkippingLoader,
    WeightedSampler,
    build_loader,
    class_balanced_weights,
    collate,
)
from eat.data.manifest import LabelledItem, write_manifest


def _indices(sampler):
    return [i for i, _ in sampler]


@pytest.mark.parametrize("n, drop_last", [(20, True), (23, True), (23, False)])
def test_ranks_cover_each_epoch_once(n, drop_last):
    for epoch in range(3):
        parts = []
        for rank in range(2):
            s = ResumableDistributedSampler(n, num_replicas=2, rank=rank, seed=3, drop_last=drop_last)
            s.set_epoch(epoch)
            keys = list(s)
            assert all(e == epoch for _, e in keys) and len(keys) == len(s)
            parts.append([i for i, _ in keys])
        assert len(parts[0]) == len(parts[1])
        union = Counter(parts[0] + parts[1])
        if drop_last:
            assert len(union) == n // 2 * 2 and max(union.values()) == 1
        else:
            assert set(union) == set(range(n)) and sum(union.values()) == 24  # one index repeated to pad
        # both ranks take turns through one shared permutation
        order = ResumableDistributedSampler(n, seed=3)
        order.set_epoch(epoch)
        shared = _indices(order)
        shared += shared[: max(0, 2 * len(parts[0]) - n)]  # padding repeats the head of the order
        assert parts[0] == shared[0 : len(parts[0]) * 2 : 2] and parts[1] == shared[1 : len(parts[1]) * 2 : 2]


def test_epochs_differ_and_repeat_under_a_seed():
    s, t = ResumableDistributedSampler(50, seed=7), ResumableDistributedSampler(50, seed=7)
    e0 = _indices(s)
    s.set_epoch(1)
    e1 = _indices(s)
    assert sorted(e0) == sorted(e1) == list(range(50)) and e0 != e1
    assert _indices(t) == e0
    assert _indices(ResumableDistributedSampler(50, seed=8)) != e0
    assert _indices(ResumableDistributedSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
    g = torch.Generator().manual_seed(7 + 1)
    assert e1 == torch.randperm(50, generator=g).tolist()


def test_restore_mid_epoch_continues_the_same_order():
    s = ResumableDistributedSampler(30, num_replicas=2, rank=1, seed=2)
    s.set_epoch(4)
    full = _indices(s)
    s.advance(6)
    state = s.state_dict()
    assert state["epoch"] == 4 and state["consumed"] == 6
    r = ResumableDistributedSampler(30, num_replicas=2, rank=1, seed=2)
    r.load_state_dict(state)
    r.set_epoch(4)  # the trainer's usual call for the restored epoch keeps the position
    assert len(r) == 9 and _indices(r) == full[6:]
    r.set_epoch(5)
    s.set_epoch(5)
    assert len(r) == 15 and _indices(r) == _indices(s)
    with pytest.raises(ValueError, match="num_replicas=2 but this sampler has 4"):
        ResumableDistributedSampler(30, num_replicas=4, seed=2).load_state_dict(state)


def test_weights_match_a_plain_count():
    items = [LabelledItem(f"{i}.wav", labels) for i, labels in enumerate([(0,), (0, 1), (0,), (2,), (1, 2), ()])]
    counts = {0: 3, 1: 2, 2: 2}
    expect = [sum(1000 / (counts[c] + 100) for c in it.labels) for it in items]
    torch.testing.assert_close(class_balanced_weights(items, 4), torch.tensor(expect, dtype=torch.float64))
    inv = class_balanced_weights(items, 3, scheme="inverse", eps=0.5)
    torch.testing.assert_close(inv, torch.tensor([sum(1 / (counts[c] + 0.5) for c in it.labels) for it in items],
                                                 dtype=torch.float64))


def test_weighted_sampler_favours_rare_classes_and_is_deterministic():
    items = [LabelledItem(f"{i}.wav", (0,) if i < 90 else (1,)) for i in range(100)]
    w = class_balanced_weights(items, 2, scheme="inverse")
    s = WeightedSampler(w, num_samples=20, seed=1)
    rare = []
    for epoch in range(40):
        s.set_epoch(epoch)
        keys = _indices(s)
        assert len(keys) == len(set(keys)) == 20  # without replacement
        rare.append(np.mean([k >= 90 for k in keys]))
    assert np.mean(rare) > 0.3  # 10 % of the clips, about 40 % of the draws
    again = WeightedSampler(w, num_samples=20, seed=1)
    again.set_epoch(39)
    assert _indices(again) == keys
    ranks = [WeightedSampler(w, num_samples=20, num_replicas=2, rank=r, seed=1) for r in range(2)]
    for r in ranks:
        r.set_epoch(39)
    assert sorted(_indices(ranks[0]) + _indices(ranks[1])) == sorted(keys)
    ranks[0].advance(4)
    resumed = WeightedSampler(w, num_samples=20, num_replicas=2, rank=0, seed=1)
    resumed.load_state_dict(ranks[0].state_dict())
    assert _indices(resumed) == _indices(ranks[0])[4:]
    with pytest.raises(ValueError, match="num_samples=101 must be in 1..100"):
        WeightedSampler(w, num_samples=101)


def test_collate_is_sample_major_and_drops_skipped():
    items = [
        {"source": torch.full((3, 2), float(b)), "mask": torch.arange(4).repeat(2, 1) + 10 * b > 10 * b + b,
         "index": b}
        for b in range(3)
    ]
    items.insert(1, Skipped("/x/bad.wav", "empty file (0 bytes)"))
    batch = collate(items)
    assert batch["num_drawn"] == 4 and batch["num_skipped"] == 1 and batch["skipped"][0].path == "/x/bad.wav"
    assert batch["source"].shape == (3, 3, 2) and batch["index"].tolist() == [0, 1, 2]
    assert batch["mask"].shape == (6, 4)
    good = [it for it in items if not isinstance(it, Skipped)]
    for b in range(3):
        for c in range(2):
            assert torch.equal(batch["mask"][b * 2 + c], good[b]["mask"][c])
    empty = collate([Skipped("a", "x"), Skipped("b", "y")])
    assert empty["index"].numel() == 0 and empty["num_skipped"] == 2 and "source" not in empty


def _clips(folder, count):
    rng = np.random.default_rng(0)
    entries = []
    for i in range(count):
        soundfile.write(folder / f"{i}.wav", 0.1 * rng.standard_normal(800 + 40 * i).astype(np.float32), 16000)
        entries.append((f"{i}.wav", 800 + 40 * i))
    return write_manifest(folder / "m.tsv", folder, entries)


def _pretrain(man):
    return PretrainDataset(man, FrontendConfig(target_length=32), mask_cfg=MaskConfig(clones=3, grid=(2, 8)), seed=9)


def _run(loader, stop_after=None):
    out = []
    for batch in loader:
        out.append(batch)
        if stop_after is not None and len(out) == stop_after:
            break
    return out


def test_resume_through_workers_gives_bitwise_identical_batches(tmp_path):
    man = _clips(tmp_path, 22)
    ref_loader = build_loader(_pretrain(man), ResumableDistributedSampler(22, seed=4), batch_size=4, num_workers=0)
    ref_loader.set_epoch(1)
    reference = _run(ref_loader)
    assert len(reference) == 5  # 22 clips, last incomplete batch dropped
    # Same loader with workers, uninterrupted: the order and masks are the same bitwise; the fbank may differ
    # in the last bits because workers run torch with one thread and the main process with several.
    uninterrupted = build_loader(_pretrain(man), ResumableDistributedSampler(22, seed=4), batch_size=4, num_workers=2)
    uninterrupted.set_epoch(1)
    with_workers = _run(uninterrupted)
    for got, want in zip(with_workers, reference, strict=True):
        assert torch.equal(got["index"], want["index"]) and torch.equal(got["mask"], want["mask"])
        torch.testing.assert_close(got["source"], want["source"], rtol=0, atol=1e-5)

    first = build_loader(_pretrain(man), ResumableDistributedSampler(22, seed=4), batch_size=4, num_workers=2)
    first.set_epoch(1)
    head = _run(first, stop_after=2)  # workers have prefetched further than this
    state = first.state_dict()
    assert state == {"epoch": 1, "consumed": 8, "seed": 4, "num_items": 22, "num_replicas": 1}

    second = build_loader(_pretrain(man), ResumableDistributedSampler(22, seed=4), batch_size=4, num_workers=2)
    second.load_state_dict(state)
    second.set_epoch(1)
    tail = _run(second)
    assert len(head) + len(tail) == 5
    for got, want in zip(head + tail, with_workers, strict=True):
        for key in ("index", "source", "mask"):
            assert torch.equal(got[key], want[key]), key
    second.set_epoch(2)
    assert len(_run(second)) == 5


def test_build_loader_defaults(tmp_path):
    ds = _pretrain(_clips(tmp_path, 6))
    train = build_loader(ds, ResumableDistributedSampler(6), batch_size=4, num_workers=1)
    assert isinstance(train, SkippingLoader) and train.loader.drop_last and train.loader.persistent_workers
    assert train.loader.pin_memory == torch.cuda.is_available() and train.max_bad_fraction == ds.max_bad_fraction
    evaluation = build_loader(ds, ResumableDistributedSampler(6, shuffle=False), batch_size=4, train=False)
    assert not evaluation.loader.drop_last and not evaluation.loader.persistent_workers
    assert [len(b["index"]) for b in evaluation] == [4, 2]
    with pytest.raises(ValueError, match="batch_size must be positive"):
        build_loader(ds, ResumableDistributedSampler(6), batch_size=0)


def test_all_bad_batch_is_not_yielded(tmp_path):
    man = _clips(tmp_path, 6)
    text = man.read_text().splitlines()
    man.write_text("\n".join(text[:1] + ["gone0.wav\t9", "gone1.wav\t9"] + text[1:]) + "\n")
    ds = _pretrain(man)
    loader = build_loader(ds, ResumableDistributedSampler(8, shuffle=False), batch_size=2, max_bad_fraction=0.5)
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[2, 3], [4, 5], [6, 7]]
    assert loader.state_dict()["consumed"] == 8


RANK_SCRIPT = r'''
import json, os, sys, threading, time
import torch
from torch.utils.tensorboard import SummaryWriter
from eat.audio.fbank import FrontendConfig
from eat.data.datasets import MaskConfig, PretrainDataset
from eat.data.loaders import ResumableDistributedSampler, build_loader
from eat.train.dist import install_preemption_handler

if __name__ == "__main__":
    manifest, tb, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    install_preemption_handler()  # as a rank under torchrun does first thing
    own_threads = threading.active_count()
    writer = SummaryWriter(tb)  # the trainer's TensorBoard writer thread
    stop = threading.Event()

    def busy():  # a thread that takes and releases locks all the time, as logging and writers do
        while not stop.wait(0.0005):
            writer.add_scalar("x", time.time())

    threading.Thread(target=busy, daemon=True).start()
    parents, batches = set(), []
    for r in range(rounds):
        ds = PretrainDataset(manifest, FrontendConfig(target_length=32), mask_cfg=MaskConfig(clones=2, grid=(2, 8)))
        loader = build_loader(ds, ResumableDistributedSampler(len(ds), seed=r), batch_size=2, num_workers=2)
        batches.append(sum(1 for _ in loader))
        parents |= {int(open(f"/proc/{w.pid}/stat").read().rsplit(")", 1)[1].split()[1])
                    for w in loader.loader._iterator._workers}
        del loader
    stop.set()
    print(json.dumps({"own_threads": own_threads, "threads_at_fork": threading.active_count(),
                      "worker_parents": sorted(parents), "me": os.getpid(), "batches": batches}))
'''


def test_a_rank_with_background_threads_never_forks_its_loader_workers(tmp_path):
    """Issue 21: a rank that runs other Python threads forked its loader workers, and one worker hung forever
    inside ``os.fork`` on a lock another thread held at that instant. The precondition, reproduced: a rank
    (launcher-death signal armed, TensorBoard writer, a thread busy taking locks) builds loaders with workers
    many times; every loader delivers, no worker is a child of the rank itself (they come from the fork
    server), and arming the launcher-death check started no thread."""
    import json
    import subprocess
    import sys

    import procs

    man = _clips(tmp_path, 8)
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "drill", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script), str(man), str(tmp_path / "tb"), "8"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    out = procs.finish([proc])[0]
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    got = json.loads(out.splitlines()[-1])
    assert got["own_threads"] == 1  # the launcher-death check is a kernel signal, not a thread
    assert got["threads_at_fork"] >= 3  # main, TensorBoard's writer, the busy thread: the hazardous setup
    assert got["batches"] == [4] * 8
    assert got["me"] not in got["worker_parents"] and len(got["worker_parents"]) == 1  # one fork server


def test_the_fork_server_survives_a_process_group_sigterm():
    """The server is started with SIGTERM/SIGUSR1 blocked: a preemption signal to the whole group (as clusters
    send it) must not kill it, or the workers it serves would stop before the trainer checkpoints."""
    import signal
    import time
    from multiprocessing import forkserver

    import procs

    from eat.data.loaders import worker_context

    worker_context()
    server = forkserver._forkserver._forkserver_pid
    blocked = int([line for line in open(f"/proc/{server}/status") if line.startswith("SigBlk")][0].split()[1], 16)
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        assert blocked & (1 << (sig - 1)), sig
    os.kill(server, signal.SIGTERM)
    time.sleep(0.2)
    assert procs.alive(server)
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, [])  # this process blocks nothing afterwards
