"""Benchmark the audio front-end.

(a) ``eat.audio.fbank`` on a batch of clips against a per-clip loop over
    ``torchaudio.compliance.kaldi.fbank`` (the call EAT and AST make), same thread count.
(b) Loader throughput: decode + fbank + normalise through ``eat.data.PretrainDataset`` and the project
    loader, over a temporary directory of synthetic wav files, for each ``--workers`` count. With
    ``--wave-mode`` it also times the trainer's path: workers only decode and pad, and the main process
    runs ``waveform_to_input`` on the whole batch.

Example: ``python tools/bench_frontend.py --threads 1 --workers 0 2 --json bench.json``
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
import torch

from eat.apps.bench_common import machine
from eat.audio.fbank import FrontendConfig, fbank
from eat.cli import check_workers, cli_main
from eat.data.batch import model_input
from eat.data.datasets import PretrainDataset
from eat.data.loaders import ResumableDistributedSampler, build_loader
from eat.data.manifest import write_manifest
from eat.utils.device import resolve_device

KALDI_ARGS = dict(htk_compat=True, use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
                  frame_shift=10)


def median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_fbank(clips: int, seconds: float, repeats: int, device: str) -> dict:
    """(a): batched fbank vs the torchaudio per-clip loop on the same synthetic clips."""
    import torchaudio.compliance.kaldi as kaldi

    sr = 16000
    g = torch.Generator().manual_seed(0)
    waves = 0.1 * torch.randn(clips, int(seconds * sr), generator=g)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    on_device = waves.to(device)
    ours_times, loop_times = [], []
    for _ in range(repeats):  # interleaved, so a busy machine slows both sides alike
        ours_times.append(median_time(lambda: fbank(on_device, sample_rate=sr), 1, sync))
        loop_times.append(median_time(
            lambda: [kaldi.fbank(w[None], sample_frequency=sr, **KALDI_ARGS) for w in on_device], 1, sync
        ))
    ours, loop = statistics.median(ours_times), statistics.median(loop_times)
    return {"clips": clips, "seconds": seconds, "device": device, "eat_batched_s": ours,
            "torchaudio_loop_s": loop, "speedup": loop / ours}


def write_clips(folder: Path, clips: int, seconds: float, sr: int) -> list[tuple[str, int]]:
    """Synthetic 16-bit wav clips (tone + noise), the format of most corpora."""
    rng = np.random.default_rng(0)
    n = int(seconds * sr)
    entries = []
    t = np.arange(n) / sr
    for i in range(clips):
        x = 0.3 * np.sin(2 * np.pi * (200 + 10 * i) * t) + 0.05 * rng.standard_normal(n)
        soundfile.write(folder / f"clip{i:04d}.wav", x.astype(np.float32), sr, subtype="PCM_16")
        entries.append((f"clip{i:04d}.wav", n))
    return entries


def loader_pass(loader, cfg: FrontendConfig) -> int:
    """One epoch; batches of padded waveforms get the batched front-end here, as in the trainer."""
    seen = 0
    for batch in loader:
        seen += model_input(batch, cfg, torch.device("cpu")).shape[0]
    return seen


def bench_loader(
    clips: int, seconds: float, workers: list[int], batch_size: int, wave_mode: bool, repeats: int
) -> list[dict]:
    """(b): clips/s of a full pass (median of ``repeats``) of the project loader over synthetic wav files."""
    cfg = FrontendConfig()
    results = []
    with tempfile.TemporaryDirectory(prefix="eat-bench-") as tmp:
        root = Path(tmp)
        manifest = write_manifest(root / "train.tsv", root, write_clips(root, clips, seconds, cfg.sample_rate))
        modes = [False, True] if wave_mode else [False]
        for return_waveform in modes:
            for n_workers in workers:
                ds = PretrainDataset(manifest, cfg, return_waveform=return_waveform)
                sampler = ResumableDistributedSampler(len(ds), shuffle=False, drop_last=False)
                loader = build_loader(ds, sampler, batch_size, num_workers=n_workers, train=False,
                                      pin_memory=False)

                seen = loader_pass(loader, cfg)  # counts the clips
                # the warm-up pass inside median_time starts the persistent workers, fills the page cache
                elapsed = median_time(functools.partial(loader_pass, loader, cfg), repeats, lambda: None)
                results.append({"workers": n_workers, "mode": "wave+batched fbank" if return_waveform else
                                "fbank in dataset", "clips": seen, "seconds": elapsed, "clips_per_s": seen / elapsed})
    return results


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=32, help="clips in the fbank batch (a)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="device for (a), e.g. cpu or cuda")
    p.add_argument("--workers", type=int, nargs="*", default=[0, 2], help="loader worker counts for (b)")
    p.add_argument("--loader-clips", type=int, default=64, help="synthetic files for (b)")
    p.add_argument("--batch-size", type=int, default=16, help="loader batch size for (b)")
    p.add_argument("--wave-mode", action="store_true", help="also time decode-in-workers + batched fbank (b)")
    p.add_argument("--skip-loader", action="store_true", help="only run (a)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.clips <= 0 or args.seconds < 0.025 or args.repeats <= 0 or args.loader_clips <= 0 or args.batch_size <= 0:
        sys.exit("error: --clips, --repeats, --loader-clips and --batch-size must be positive and --seconds >= 0.025")
    for n in args.workers:
        check_workers(n)
    if args.threads is not None and args.threads < 1:
        sys.exit(f"error: --threads must be >= 1, got {args.threads}")
    args.device = str(resolve_device(args.device))
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    info = machine(args.device)
    print(f"# {info['cpu']} | torch {info['torch']} | {info['threads']} threads | python {info['python']}")
    out: dict = {"machine": info, "command": " ".join(["python", "tools/bench_frontend.py", *sys.argv[1:]])}
    a = bench_fbank(args.clips, args.seconds, args.repeats, args.device)
    out["fbank"] = a
    print(f"(a) fbank, {a['clips']} clips x {a['seconds']:g} s on {a['device']}: eat batched "
          f"{a['eat_batched_s'] * 1e3:.1f} ms, torchaudio per-clip loop {a['torchaudio_loop_s'] * 1e3:.1f} ms, "
          f"speed-up {a['speedup']:.2f}x")
    if not args.skip_loader:
        out["loader"] = bench_loader(
            args.loader_clips, args.seconds, args.workers, args.batch_size, args.wave_mode, args.repeats
        )
        for r in out["loader"]:
            print(f"(b) loader, {r['mode']}, {r['workers']} workers: {r['clips']} clips in {r['seconds']:.2f} s "
                  f"= {r['clips_per_s']:.1f} clips/s")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
