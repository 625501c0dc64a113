"""Benchmark the input pipeline per CPU core: tar shards (FLAC, WAV) against one file per clip.

Makes ``--clips`` synthetic clips of ``--seconds`` (band-limited noise with tones and a loudness
envelope, so FLAC compresses it as it does field recordings, not as white noise), stores them as WAV
and FLAC files and as WAV and FLAC shards (timing the shard writer), then runs the pretraining loader
(no worker processes: one process, one torch thread, so clips/s is per core) over every source in two
modes, each with the files in the page cache (``warm``) and dropped from it first (``cold``, read from the
disk; only this benchmark's files are dropped):

* ``worker-fbank``: decode, fbank, normalise and the 16 inverse block masks in the loader, as
  ``data.fbank_on_device=false``;
* ``device-fbank``: decode, crop/pad and masks in the loader; the batched fbank (``waveform_to_input``)
  is the device's work. It is timed here separately on this CPU as a stand-in (one thread); on a GPU it
  costs the cores nothing.

It also reads and decodes the FLAC clips without the model-side work four ways: this project's reader (index +
``os.pread`` in the sampler's order), Python's ``tarfile`` streamed in order, the ``webdataset``
package when it can be imported, and the FLAC files in the sampler's order. Example:

    nice -n 10 python tools/bench_shards.py --clips 256 --seconds 10 --json bench_shards.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from eat.apps.bench_common import machine
from eat.audio.fbank import FrontendConfig, waveform_to_input
from eat.cli import UsageError, cli_main
from eat.data import MaskConfig, PretrainDataset, ResumableDistributedSampler, build_loader
from eat.data.manifest import write_manifest
from eat.data.shards import (
    ShardPretrainDataset,
    ShardSampler,
    ShardSet,
    clips_from_manifest,
    iter_tar_members,
    write_shards,
)

SR = 16000


def synth_clip(rng: np.random.Generator, n: int) -> np.ndarray:
    """Low-passed noise + two tones under a slow loudness envelope, peak ~0.5."""
    noise = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")
    t = np.arange(n) / SR
    tones = sum(0.2 * np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 3000, 2))
    env = 0.3 + 0.7 * np.abs(np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t))
    x = env * (noise + tones)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def make_sources(root: Path, clips: int, seconds: float) -> dict:
    rng = np.random.default_rng(0)
    n = int(seconds * SR)
    for kind in ("wav", "flac"):
        (root / kind).mkdir(parents=True)
    for i in range(clips):
        x = synth_clip(rng, n)
        for kind, fmt in (("wav", "WAV"), ("flac", "FLAC")):
            soundfile.write(root / kind / f"c{i:05d}.{kind}", x, SR, format=fmt, subtype="PCM_16")
    info = {}
    for kind in ("wav", "flac"):
        write_manifest(root / f"{kind}.tsv", root / kind, [(f"c{i:05d}.{kind}", n) for i in range(clips)])
        info[f"{kind}_file_mb"] = sum(p.stat().st_size for p in (root / kind).iterdir()) / 2**20
    for audio in ("wav", "flac"):
        start = time.perf_counter()
        write_shards(clips_from_manifest(root / "wav.tsv"), root / f"shards_{audio}", audio=audio,
                     target_bytes=64 << 20, workers=1)
        info[f"write_{audio}_shards_clips_per_s"] = clips / (time.perf_counter() - start)
        info[f"{audio}_shards_mb"] = sum(p.stat().st_size for p in (root / f"shards_{audio}").glob("*.tar")) / 2**20
    return info


def evict(folder: Path) -> None:
    """Drop this folder's files from the page cache (``POSIX_FADV_DONTNEED``; other files are untouched),
    so the next pass reads them from the disk."""
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


class Clock:
    """Wall time and this process's CPU time (user + system) since start: on a shared machine the CPU
    time is the per-core cost, the wall time adds waiting for the disk (and for other jobs)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, clips: int) -> dict[str, float]:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return {"clips_per_cpu_s": clips / cpu, "clips_per_wall_s": clips / wall}


def time_loader(dataset, sampler, batch: int, frontend: FrontendConfig | None) -> dict[str, float]:
    """Loader clips per CPU second and per wall second over one epoch in this process; with ``frontend``
    also the batched fbank on this CPU (the device's work, timed apart and left out of the loader's)."""
    loader = build_loader(dataset, sampler, batch, num_workers=0, pin_memory=False)
    clips, fbank_cpu, fbank_wall = 0, 0.0, 0.0
    clock = Clock()
    for b in loader:
        clips += b["index"].numel()
        if frontend is not None:
            c0, w0 = time.process_time(), time.perf_counter()
            waveform_to_input(b["wave"], frontend, lengths=b["length"])
            fbank_cpu += time.process_time() - c0
            fbank_wall += time.perf_counter() - w0
    clock.cpu += fbank_cpu
    clock.wall += fbank_wall
    out = clock.rates(clips)
    if frontend is not None:
        out["fbank_cpu_stand_in_clips_per_cpu_s"] = clips / fbank_cpu
    return out


def source_names(shards: ShardSet) -> list[str]:
    """Each clip's source file name (from the json members), to read the same clips as files."""
    by_key = {}
    for f in shards.files:
        for name, data in iter_tar_members(shards.root / f):
            if name.endswith(".json"):
                by_key[name.split(".")[0]] = Path(json.loads(data)["source"]).with_suffix(".flac").name
    return [by_key[shards.key(i).split(".")[0]] for i in range(len(shards))]


def read_only(root: Path, window: int) -> dict:
    """Clips/s reading + decoding the FLAC shards (no fbank), three readers."""
    out = {}
    shards = ShardSet(root / "shards_flac")
    order = ShardSampler(shards, window=window).rank_order().tolist()
    clock = Clock()
    for i in order:
        soundfile.read(io.BytesIO(shards.read_bytes(i)), dtype="float32")
    out["own_reader_pread"] = clock.rates(len(order))
    clock, n = Clock(), 0
    for f in shards.files:
        with tarfile.open(shards.root / f, "r") as tar:
            for info in tar:
                if info.name.endswith(".flac"):
                    soundfile.read(io.BytesIO(tar.extractfile(info).read()), dtype="float32")
                    n += 1
    out["tarfile_stream"] = clock.rates(n)
    names = [root / "flac" / Path(name).name for name in source_names(shards)]
    clock = Clock()
    for i in order:
        soundfile.read(names[i], dtype="float32")
    out["files_flac_same_order"] = clock.rates(len(order))
    try:
        import webdataset as wds
    except ImportError:
        out["webdataset"] = "not installed"
        return out
    urls = [str(shards.root / f) for f in shards.files]
    ds = wds.WebDataset(urls, shardshuffle=False).shuffle(window)
    clock, n = Clock(), 0
    for sample in ds:
        soundfile.read(io.BytesIO(sample["flac"]), dtype="float32")
        n += 1
    out["webdataset"] = clock.rates(n)
    out["webdataset_version"] = getattr(wds, "__version__", "?")
    return out


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=256, help="synthetic clips (default 256)")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds (default 10)")
    ap.add_argument("--batch", type=int, default=16, help="clips per batch (default 16)")
    ap.add_argument("--target-length", type=int, default=1024, help="fbank frames per clip (default 1024)")
    ap.add_argument("--window", type=int, default=1024, help="shuffle window of the shard readers")
    ap.add_argument("--gpu-clips-per-s", type=float, default=350.0, help="what one GPU trains on (350)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.clips < args.batch or args.seconds <= 0:
        raise UsageError("--clips must be >= --batch and --seconds > 0")
    torch.set_num_threads(1)
    frontend = FrontendConfig(target_length=args.target_length)
    mask = MaskConfig()
    result: dict = {"machine": machine(), "command": " ".join(["python", "tools/bench_shards.py", *sys.argv[1:]]),
                    "clips": args.clips, "seconds": args.seconds, "target_length": frontend.target_length}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"making {args.clips} clips of {args.seconds} s and their shards ...", flush=True)
        result["sources"] = make_sources(root, args.clips, args.seconds)
        print(json.dumps(result["sources"], indent=1), flush=True)
        for source in ("files-wav", "files-flac", "shards-wav", "shards-flac"):
            kind, fmt = source.split("-")
            folder = root / (fmt if kind == "files" else f"shards_{fmt}")
            for mode in ("worker-fbank", "device-fbank"):
                wave = mode == "device-fbank"
                for cache in ("warm", "cold"):
                    if kind == "files":
                        ds = PretrainDataset(root / f"{fmt}.tsv", frontend, mask, return_waveform=wave)
                        sampler = ResumableDistributedSampler(len(ds), seed=1)
                    else:
                        ds = ShardPretrainDataset(folder, frontend, mask, return_waveform=wave)
                        sampler = ShardSampler(ds.shards, seed=1, window=args.window)
                    if cache == "cold":
                        evict(folder)
                    row = {"source": source, "mode": mode, "cache": cache,
                           **time_loader(ds, sampler, args.batch, frontend if wave else None)}
                    rate = row["clips_per_cpu_s"]
                    row["cores_per_gpu"] = args.gpu_clips_per_s / rate
                    row["clips_per_s_16_cores"] = 16 * rate
                    rows.append(row)
                    print(f"{source:12s} {mode:13s} {cache} {rate:7.1f} clips/CPU-s ({row['clips_per_wall_s']:6.1f} "
                          f"per wall s) -> {row['cores_per_gpu']:.2f} cores per GPU at {args.gpu_clips_per_s:.0f} "
                          f"clips/s, 16 cores: {16 * rate:.0f} clips/s" + (
                              f" (fbank on this CPU: {row['fbank_cpu_stand_in_clips_per_cpu_s']:.0f} clips/CPU-s)"
                              if wave else ""), flush=True)
        result["loader"] = rows
        result["read_decode_only"] = read_only(root, args.window)
        print("read + decode only, clips/s:", json.dumps(result["read_decode_only"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
