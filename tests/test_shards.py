"""Tar shards: the writer (library and tools/make_shards.py), the reader, and the streaming loader's
guarantees (every clip once per epoch over ranks x workers, exact resume, bad members skipped)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
import torch

from eat.audio.fbank import FrontendConfig
from eat.audio.io import load_audio
from eat.data import BadDataError, read_path_label_csv
from eat.data.manifest import ManifestError, write_manifest
from eat.data.shards import (
    ShardError,
    ShardLabelledDataset,
    ShardPretrainDataset,
    ShardSampler,
    ShardSet,
    build_shard_loader,
    clips_from_manifest,
    iter_tar_members,
    parse_size,
    write_shards,
)

REPO = Path(__file__).resolve().parents[1]
SR = 16000
FRONT = FrontendConfig(target_length=8)  # 8 frames: 1520 samples per item; clips are 800 samples


def wav_bytes(samples: np.ndarray, sr: int = SR) -> bytes:
    """A 16-bit mono PCM wav file (written by hand: 20,000 soundfile.write calls take a minute)."""
    data = samples.astype("<i2").tobytes()
    fmt = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + sr.to_bytes(4, "little")
    fmt += (2 * sr).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + len(data).to_bytes(4, "little") + data
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def make_corpus(root: Path, n: int, length: int = 800, seed: int = 0) -> Path:
    """``n`` clips of random 16-bit noise under ``root/wav`` and their manifest ``root/train.tsv``."""
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    audio = rng.integers(-3000, 3000, size=(n, length), dtype=np.int16)
    for i in range(n):
        (root / "wav" / f"c{i:05d}.wav").write_bytes(wav_bytes(audio[i]))
    return write_manifest(root / "train.tsv", root / "wav", [(f"c{i:05d}.wav", length) for i in range(n)])


def source_of(shards: ShardSet) -> list[str]:
    """The source name of every clip of the set, from the json members in the tars."""
    by_key: dict[str, str] = {}
    for f in shards.files:
        for name, data in iter_tar_members(shards.root / f):
            if name.endswith(".json"):
                by_key[name.split(".")[0]] = json.loads(data)["source"]
    return [by_key[shards.key(i).split(".")[0]] for i in range(len(shards))]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, ShardSet]:
    """The acceptance corpus: 20,000 clips of 50 ms, sharded (original bytes, 500 clips per shard)."""
    root = tmp_path_factory.mktemp("big")
    manifest = make_corpus(root, 20_000)
    write_shards(clips_from_manifest(manifest), root / "shards", audio="original", clips_per_shard=500, workers=2)
    return manifest, ShardSet(root / "shards")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    """300 clips as FLAC shards of 40 clips (the last shard holds 20)."""
    root = tmp_path_factory.mktemp("small")
    manifest = make_corpus(root, 300, seed=1)
    write_shards(clips_from_manifest(manifest), root / "shards", clips_per_shard=40)
    return manifest, root / "shards"


def stream(shards: ShardSet, rank: int, world: int = 2, workers: int = 2, batch: int = 50, epoch: int = 0,
           state: dict | None = None, stop_after: int | None = None, **kw) -> tuple[list[list[int]], dict, int]:
    """Indices of the batches one rank gets in ``epoch`` (from ``state``, up to ``stop_after`` batches);
    returns (batches, the loader's state after them, skipped clips)."""
    max_bad_clips = kw.pop("max_bad_clips", 10)
    ds = ShardPretrainDataset(shards, FRONT, return_waveform=True, seed=3, **kw)
    loader = build_shard_loader(ds, batch, world, rank, seed=5, num_workers=workers, window=700,
                                max_bad_clips=max_bad_clips)
    if state is not None:
        loader.load_state_dict(state)
    loader.set_epoch(epoch)
    out, skipped = [], 0
    for b in loader:
        out.append(b["index"].tolist())
        skipped += b["num_skipped"]
        if stop_after is not None and len(out) == stop_after:
            break
    return out, loader.state_dict(), skipped


@pytest.fixture(scope="module")
def unbroken(big) -> dict[int, list[list[int]]]:
    _, shards = big
    return {rank: stream(shards, rank)[0] for rank in (0, 1)}


def test_every_clip_exactly_once_per_epoch_over_2_ranks_x_2_workers(big, unbroken):
    _, shards = big
    assert len(shards) == 20_000 and len(shards.files) == 40
    index = json.loads(shards.index_path.read_text())
    assert [sh["clips"] for sh in index["shards"]] == [500] * 40 and index["clips"] == 20_000
    assert [sh["samples"] for sh in index["shards"]] == [500 * 800] * 40 and int(shards.samples.sum()) == 16_000_000
    assert [len(b) for b in unbroken[0]] == [len(b) for b in unbroken[1]] == [50] * 200  # equal steps per rank
    seen = sorted(i for rank in (0, 1) for b in unbroken[rank] for i in b)
    assert seen == list(range(20_000))
    # a new epoch is a new order of the same clips
    nxt = stream(shards, 0, epoch=1, stop_after=3)[0]
    assert nxt != unbroken[0][:3]


def test_items_are_the_source_clips(big):
    manifest, shards = big
    names = source_of(shards)
    assert sorted(names) == sorted(rel for rel, _ in clips_manifest_entries(manifest))
    for i in (0, 1, 777, 19_999):
        assert torch.equal(shards.read(i, FRONT), load_audio(manifest.parent / "wav" / names[i]))


def clips_manifest_entries(manifest: Path) -> list[tuple[str, int]]:
    from eat.data.manifest import read_manifest

    return read_manifest(manifest).entries


def test_stop_mid_epoch_and_resume_gives_the_unbroken_sequence(big, unbroken):
    _, shards = big
    for rank, stop in ((0, 37), (1, 120)):
        head, state, _ = stream(shards, rank, stop_after=stop)
        assert state["consumed"] == stop * 50 and state["epoch"] == 0
        # resumed in a fresh loader, with another worker count (the workers hold no position)
        tail, end, _ = stream(shards, rank, workers=1, state=json.loads(json.dumps(state)))
        assert head + tail == unbroken[rank]
        assert end["consumed"] == 10_000


def test_resume_position_refuses_a_different_layout(big, small):
    _, shards = big
    _, state, _ = stream(shards, 0, stop_after=1)
    other = ShardSampler(ShardSet(small[1]), 2, 0, seed=5, window=700)
    with pytest.raises(ValueError, match="shards=40 but this sampler has 8"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="window"):
        ShardSampler(shards, 2, 0, seed=5, window=64).load_state_dict(state)
    with pytest.raises(ValueError, match="file loader"):
        ShardSampler(shards, 2, 0, seed=5, window=700).load_state_dict(
            {"epoch": 0, "consumed": 0, "seed": 5, "num_items": 20_000, "num_replicas": 2})


def test_window_shuffle_is_a_pure_bounded_function_of_seed_and_epoch(big):
    _, shards = big
    s = ShardSampler(shards, 1, 0, seed=9, window=300)
    order = s.epoch_order()
    assert torch.equal(order, ShardSampler(shards, 1, 0, seed=9, window=300).epoch_order())
    assert sorted(order.tolist()) == list(range(len(shards)))
    # recover the shard order of this epoch, then check no clip moved `window` places or more
    first_seen = dict.fromkeys(int(shards.shard_of[i]) for i in order.tolist())
    starts = np.concatenate([[0], np.cumsum(shards.shard_clips)[:-1]])
    unshuffled = np.concatenate([np.arange(starts[k], starts[k] + shards.shard_clips[k]) for k in first_seen])
    where = np.empty(len(shards), dtype=np.int64)
    where[unshuffled] = np.arange(len(shards))
    moved = np.abs(np.arange(len(shards)) - where[order.numpy()])
    assert moved.max() < 300 and moved.mean() > 50
    s.set_epoch(1)
    assert not torch.equal(s.epoch_order(), order)


def test_shard_items_equal_file_items(small):
    """Same clip, same (seed, epoch, index): same item as the file dataset (FLAC of 16-bit audio is lossless)."""
    from eat.data import MaskConfig, PretrainDataset

    manifest, folder = small
    shards = ShardSet(folder)
    names = source_of(shards)
    from eat.data.manifest import Manifest

    man = Manifest(manifest.parent / "wav", [(n, 800) for n in names])
    mask = MaskConfig(clones=2, grid=(2, 8))
    fe = FrontendConfig(target_length=32, crop="random")
    a = ShardPretrainDataset(shards, fe, mask, seed=4)[(17, 3)]
    b = PretrainDataset(man, fe, mask, seed=4)[(17, 3)]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


def corrupt_copy(folder: Path, dest: Path) -> tuple[ShardSet, int, int]:
    """Copy the shards; overwrite one member's audio with random bytes and cut the last shard inside its
    last member. Returns (set, garbled clip, truncated clip)."""
    dest.mkdir()
    for p in folder.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    shards = ShardSet(dest)
    garbled = 45
    with open(dest / shards.files[shards.shard_of[garbled]], "r+b") as f:
        f.seek(int(shards.offsets[garbled]))
        f.write(np.random.default_rng(0).integers(0, 256, int(shards.sizes[garbled]), dtype=np.uint8).tobytes())
    cut = len(shards) - 1
    os.truncate(dest / shards.files[-1], int(shards.offsets[cut] + shards.sizes[cut] // 2))
    return ShardSet(dest), garbled, cut


def test_corrupt_members_are_skipped_counted_and_limited(small, tmp_path, caplog):
    shards, garbled, cut = corrupt_copy(small[1], tmp_path / "bad")
    assert "cannot decode" in shards.read(garbled, FRONT).reason
    assert "truncated" in shards.read(cut, FRONT).reason
    with caplog.at_level(logging.WARNING):
        batches, _, skipped = stream(shards, 0, world=1, workers=2, batch=20, max_bad_fraction=0.01)
    seen = sorted(i for b in batches for i in b)
    assert skipped == 2 and seen == sorted(set(range(300)) - {garbled, cut})
    assert sum("skipping unreadable clip" in r.message for r in caplog.records) == 2
    with pytest.raises(BadDataError, match="data.max_bad_fraction=0.005"):
        stream(shards, 0, world=1, workers=0, batch=20, max_bad_fraction=0.005, max_bad_clips=0)


def test_labelled_shards_keep_the_labels(tmp_path):
    manifest = make_corpus(tmp_path, 30, seed=2)
    rows = "".join(f"wav/c{i:05d}.wav,{['dog', 'cat', 'bird'][i % 3]}\n" for i in range(30))
    (tmp_path / "train.csv").write_text("path,label\n" + rows)
    labels = read_path_label_csv(tmp_path / "train.csv")
    from eat.data.shards import clips_from_labels

    write_shards(clips_from_labels(labels), tmp_path / "sh", audio="wav", clips_per_shard=7,
                 classes=labels.class_names, multi_label=labels.multi_label)
    shards = ShardSet(tmp_path / "sh")
    want = {str(it.path): it.labels for it in labels.items}
    assert [want[s] for s in source_of(shards)] == [shards.labels(i) for i in range(len(shards))]
    ds = ShardLabelledDataset(shards, FRONT, train=True, return_waveform=True)
    assert ds.num_classes == 3 and not ds.multi_label
    item = ds[(4, 0)]
    assert item["target"] == shards.labels(4)[0]
    with pytest.raises(ShardError, match="no labels"):
        ShardSet(write_shards(clips_from_manifest(manifest), tmp_path / "u", clips_per_shard=50).index_path
                 ).label_set()


def test_parse_size():
    assert parse_size("1G") == 1 << 30 and parse_size("500M") == 500 << 20 and parse_size("4096") == 4096
    with pytest.raises(ValueError, match="cannot read size"):
        parse_size("lots")


# ------------------------------------------------------------------------------------ the CLI


def _cmd(tool: str, *args) -> list[str]:
    return [sys.executable, str(REPO / tool), *map(str, args)]


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def make_shards(*args) -> subprocess.CompletedProcess:
    """tools/make_shards.py as the user runs it."""
    return procs.run(_cmd("tools/make_shards.py", *args), env=ENV, capture_output=True, text=True)


def run_all(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Run independent commands at once (each process mostly imports torch) and wait for all."""
    runs = [subprocess.Popen(c, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    outs = [p.communicate(timeout=procs.DEADLINE_S) for p in runs]
    return [subprocess.CompletedProcess(c, p.returncode, o, e) for c, p, (o, e) in zip(commands, runs, outs,
                                                                                         strict=True)]


def test_make_shards_skips_and_lists_bad_files(tmp_path):
    manifest = make_corpus(tmp_path, 12, seed=3)
    wav = tmp_path / "wav"
    good = (wav / "c00000.wav").read_bytes()
    (wav / "c00001.wav").write_bytes(good[: len(good) // 3])  # truncated (the header promises more)
    (wav / "c00002.wav").write_bytes(np.random.default_rng(1).bytes(2000))  # random bytes
    (wav / "c00003.wav").write_bytes(b"FAKE" + good[4:])  # wrong header
    (wav / "c00004.wav").write_bytes(b"")  # empty
    (wav / "c00005.wav").unlink()  # missing
    out = make_shards(manifest, tmp_path / "sh", "--clips-per-shard", 5, "--workers", 2)
    assert out.returncode == 0, out.stderr
    assert "wrote 7 clips in 3 shards" in out.stdout
    assert "5 unreadable clip(s) left out" in out.stderr and "truncated" in out.stderr
    for name in ("c00001.wav", "c00002.wav", "c00003.wav", "c00004.wav", "c00005.wav"):
        assert name in out.stderr
    shards = ShardSet(tmp_path / "sh")
    assert len(shards) == 7 and len(shards.skipped_when_written) == 5
    assert sorted(source_of(shards)) == [f"c{i:05d}.wav" for i in (0, 6, 7, 8, 9, 10, 11)]


def test_make_shards_user_errors_are_one_line(tmp_path):
    manifest = make_corpus(tmp_path, 3, seed=4)
    tool = "tools/make_shards.py"
    missing, ast_json, good, helped = run_all(
        _cmd(tool, tmp_path / "nope.tsv", tmp_path / "a"), _cmd(tool, tmp_path / "x.json", tmp_path / "b"),
        _cmd(tool, manifest, tmp_path / "sh", "--clips-per-shard", 2), _cmd(tool, "--help"))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "nope.tsv" in missing.stderr
    assert ast_json.returncode == 1 and ast_json.stderr.count("\n") == 1 and "--class-csv" in ast_json.stderr
    assert good.returncode == 0, good.stderr
    assert helped.returncode == 0 and "--shard-size" in helped.stdout
    for path in (tmp_path / "wav").iterdir():
        path.write_bytes(b"junk")
    other, junk = run_all(_cmd(tool, manifest, tmp_path / "sh", "--audio", "wav"), _cmd(tool, manifest, tmp_path / "c"))
    assert other.returncode == 1 and other.stderr.count("\n") == 1 and "'flac' -> 'wav'" in other.stderr
    assert junk.returncode == 1 and junk.stderr.count("\n") == 1 and "could be read" in junk.stderr


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored (no
    # KeyboardInterrupt): a suite launched with `cmd &` would see the Ctrl-C drill run to the end. Give the
    # tool the disposition a terminal gives it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_writer(manifest: Path, out: Path, *args) -> subprocess.Popen:
    return subprocess.Popen(_cmd("tools/make_shards.py", manifest, out, *args), env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _wait_for_shards(out: Path, count: int, proc: subprocess.Popen) -> None:
    procs.wait_until(lambda: len(list(out.glob("shard-*.tar.json"))) >= count, [proc], f"{count} shards in {out}",
                     ended=lambda p: p.stderr.read()[-2000:])


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


@pytest.mark.slow
def test_make_shards_resumes_after_being_killed_or_interrupted(tmp_path):
    manifest = make_corpus(tmp_path, 400, seed=5)
    args = ("--clips-per-shard", 10, "--audio", "flac")
    write_shards(clips_from_manifest(manifest), tmp_path / "clean", clips_per_shard=10, source=str(manifest))
    clean = sorted((tmp_path / "clean").glob("shard-*.tar")) + [tmp_path / "clean" / "index.json"]

    # the whole process group SIGKILLed (what a scheduler does), one writer process
    proc = _start_writer(manifest, tmp_path / "cut", *args, "--workers", 1)
    _wait_for_shards(tmp_path / "cut", 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    # Ctrl-C (SIGINT to the group) with two writer processes: one line, status 130
    proc = _start_writer(manifest, tmp_path / "int", *args, "--workers", 2)
    _wait_for_shards(tmp_path / "int", 3, proc)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=procs.DEADLINE_S)[1]
    assert proc.returncode == 130 and "error: interrupted; finished shards are kept" in err and "Traceback" not in err
    # one writer process killed (e.g. by the OOM killer): a one-line error, not a hang
    proc = _start_writer(manifest, tmp_path / "oom", *args, "--workers", 2)
    _wait_for_shards(tmp_path / "oom", 2, proc)
    os.kill(_children(proc.pid)[0], signal.SIGKILL)
    err = proc.communicate(timeout=procs.DEADLINE_S)[1]
    assert proc.returncode == 1 and "a writer process died" in err and "Traceback" not in err

    record = sorted((tmp_path / "cut").glob("shard-*.tar.json"))[0]
    record.write_text(record.read_text()[:20])  # a record cut short by a crash: that shard is written again

    for name in ("cut", "int", "oom"):
        before = len(list((tmp_path / name).glob("shard-*.tar.json"))) - (name == "cut")
        assert 2 <= before < 40 and not (tmp_path / name / "index.json").exists()
        out = make_shards(manifest, tmp_path / name, *args, "--workers", 2)
        assert out.returncode == 0, out.stderr
        assert f"({before} shards kept from an earlier run)" in out.stdout
        assert not list((tmp_path / name).glob("*.partial"))
        for f in clean:  # byte-identical to the uninterrupted run
            assert (tmp_path / name / f.name).read_bytes() == f.read_bytes(), (name, f.name)


# ------------------------------------------------------------------------- the recipes, from shards


def _metrics(out: Path) -> dict[int, float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


@pytest.mark.slow
def test_pretraining_from_shards_on_two_ranks_resumes_exactly(tmp_path):
    """torchrun, 2 CPU ranks: stopped at step 3 and resumed (with another worker count), steps 4-8 (across
    the epoch boundary: 20 clips per rank, batch 4) have bitwise the losses of the unbroken run."""
    manifest = make_corpus(tmp_path, 40, length=16000, seed=6)
    write_shards(clips_from_manifest(manifest), tmp_path / "sh", clips_per_shard=7)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def run(out: Path, *extra: str) -> None:
        cmd = [torchrun, "--standalone", "--nproc_per_node=2", str(REPO / "recipes" / "pretrain_as2m.py"),
               "--config", str(REPO / "recipes/configs/tiny.yaml"), "data.format=shards",
               f"data.train_shards={tmp_path / 'sh'}", f"train.out_dir={out}", "train.log_every=1",
               "train.tensorboard=false", "train.keep_last=0", "train.cpu_threads=1", "train.max_steps=8",
               "data.shard_window=9", "model.encoder.target_length=96", *extra]
        proc = procs.run(cmd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    run(tmp_path / "a", "train.save_every=3")
    run(tmp_path / "b", "data.num_workers=2", "--resume", str(tmp_path / "a" / "step_000003"))
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert sorted(a) == list(range(1, 9)) and sorted(b) == [4, 5, 6, 7, 8]
    assert [b[s] for s in b] == [a[s] for s in b]  # bitwise: same clips, masks and crops on both ranks
    for rank in (0, 1):
        state = torch.load(tmp_path / "a" / "step_000003" / f"rank_{rank:05d}.pt", weights_only=True)["data"]
        assert state["consumed"] == 12 and state["num_replicas"] == 2 and state["shards"] == 6


def test_pretraining_config_errors_for_shards(tmp_path):
    from eat.config import ConfigError, load_config
    from eat.train.pretrain import PretrainConfig, run

    def config(*overrides: str) -> PretrainConfig:
        return load_config(PretrainConfig, REPO / "recipes/configs/tiny.yaml",
                           ["data.format=shards", f"train.out_dir={tmp_path / 'o'}", "train.device=cpu", *overrides])

    with pytest.raises(ConfigError, match="data.train_shards is not set"):
        run(config())
    with pytest.raises(ManifestError, match="data.train_shards: .*: no such folder"):
        run(config(f"data.train_shards={tmp_path / 'nope'}"))
    with pytest.raises(ShardError, match="index.json: file not found"):
        run(config(f"data.train_shards={tmp_path}"))


@pytest.mark.slow
def test_finetuning_from_shards(tmp_path):
    make_corpus(tmp_path, 24, length=16000, seed=7)
    rows = [f"wav/c{i:05d}.wav,{['dog', 'cat'][i % 2]}\n" for i in range(24)]
    (tmp_path / "train.csv").write_text("".join(rows[:16]))
    (tmp_path / "valid.csv").write_text("".join(rows[16:]))
    made = make_shards(tmp_path / "train.csv", tmp_path / "sh_train", "--clips-per-shard", 5)
    assert made.returncode == 0, made.stderr
    made = make_shards(tmp_path / "valid.csv", tmp_path / "sh_valid", "--classes-from", tmp_path / "sh_train")
    assert made.returncode == 0, made.stderr
    base = ["--task", "generic", "--preset", "tiny", "data.format=shards", f"data.train={tmp_path / 'sh_train'}",
            f"data.valid={tmp_path / 'sh_valid'}", "data.frontend.target_length=96", "data.batch_size=4",
            "train.tensorboard=false", "train.cpu_threads=1", "data.shard_window=3"]
    # shuffled epochs; class-weighted epochs (AS-2M style); a weights file in manifest order is refused
    weighted = ["data.weighted_sampling=true", "data.epoch_samples=12", "train.max_steps=2", "data.num_workers=0"]
    (tmp_path / "weights.csv").write_text("1\n" * 16)
    recipe = "recipes/finetune.py"
    plain, sampled, refused = run_all(
        _cmd(recipe, *base, "--out", tmp_path / "ft", "data.num_workers=1", "train.max_steps=5", "train.log_every=1"),
        _cmd(recipe, *base, *weighted, "--out", tmp_path / "w"),
        _cmd(recipe, *base, *weighted, "--out", tmp_path / "w2", f"data.sample_weights={tmp_path / 'weights.csv'}"))
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "generic: 2 classes (single-label), train 16 clips, evaluate 8" in plain.stdout
    summary = json.loads((tmp_path / "ft" / "generic_summary.json").read_text())
    assert summary["last"]["step"] == 5 and 0.0 <= summary["last"][summary["metric"]] <= 1.0
    assert summary["config"]["data"]["format"] == "shards"
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert json.loads((tmp_path / "w" / "generic_summary.json").read_text())["last"]["step"] == 2
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "data.sample_weights lists weights in the original clip order" in refused.stderr


def test_open_shards_are_capped(small, monkeypatch):
    import eat.data.shards as mod

    monkeypatch.setattr(mod, "MAX_OPEN_SHARDS", 3)
    shards = ShardSet(small[1])
    first = [shards.read_bytes(i) for i in range(len(shards))]
    assert len(shards._fds) == 3
    assert [shards.read_bytes(i) for i in reversed(range(len(shards)))][::-1] == first
    assert shards.key(0).endswith(".flac") and shards.path(0).endswith(f"shard-000000.tar:{shards.key(0)}")


def test_bad_index_is_one_clear_error(small, tmp_path):
    with pytest.raises(ShardError, match="index.json: file not found"):
        ShardSet(tmp_path)
    text = (small[1] / "index.json").read_text()
    (tmp_path / "index.json").write_text(text[: len(text) // 2])
    with pytest.raises(ShardError, match="index.json: cannot read"):
        ShardSet(tmp_path)
    idx = json.loads(text)
    idx["shards"][0]["offsets"].pop()
    (tmp_path / "index.json").write_text(json.dumps(idx))
    with pytest.raises(ShardError, match="per-clip tables disagree"):
        ShardSet(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(ShardError, match="make_shards"):
        ShardSet(tmp_path)


def test_bench_shards_runs_and_reports_every_source(tmp_path):
    ran, refused = run_all(
        _cmd("tools/bench_shards.py", "--clips", 8, "--seconds", 0.5, "--batch", 4, "--target-length", 48, "--json",
             tmp_path / "b.json"),
        _cmd("tools/bench_shards.py", "--clips", 2, "--batch", 4))
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads((tmp_path / "b.json").read_text())
    rows = {(r["source"], r["mode"], r["cache"]) for r in result["loader"]}
    assert len(rows) == 16 and all(r["clips_per_cpu_s"] > 0 for r in result["loader"])
    assert {"own_reader_pread", "tarfile_stream", "files_flac_same_order"} <= set(result["read_decode_only"])
    assert refused.returncode == 1 and "--clips must be" in refused.stderr
