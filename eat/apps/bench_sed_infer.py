"""Sound event detection inference on an hour-long file: speed (x real time on CPU), memory, timestamps.

    python tools/bench_sed_infer.py [--detector DIR] [--minutes 60] [--threads 1] [--json out.json]

Writes a ``--minutes``-long 16 kHz file in chunks (light noise with 1 kHz tone bursts at known times on the
160 ms column grid), then

1. runs the detector (``--detector``, or a randomly initialised one of the ``small_cpu`` encoder's shape with
   the default SED head: speed does not depend on the weights) over a one-minute file and the long file
   through :func:`eat.detect.detect_file`, reporting x real time and the process's peak resident memory
   after each (a file that were decoded whole would add its 230 MB of float32 samples per hour);
2. replaces the network by a level detector (column logits from the loudest bin of the column's mean
   log-mel; the long file must use the default front-end) and checks that
   the events found in the long file are exactly the planted bursts: windowing, stitching, interpolation and
   event extraction over the whole hour add no drift.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from eat.audio.fbank import FrontendConfig
from eat.cli import cli_main
from eat.detect import PostProcess, SoundEventDetector, detect_file, load_detector
from eat.model.sed import SEDConfig, SEDModel
from eat.model.vit import EncoderConfig

SR = 16000


def write_long(path: Path, seconds: float, bursts: list[tuple[float, float]], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    with soundfile.SoundFile(str(path), "w", SR, 1, subtype="PCM_16") as f:
        for a in range(0, n, 60 * SR):
            b = min(n, a + 60 * SR)
            x = (0.003 * rng.standard_normal(b - a)).astype(np.float32)
            for on, off in bursts:
                s, e = max(int(on * SR), a), min(int(off * SR), b)
                if s < e:
                    t = np.arange(s, e) - int(on * SR)
                    x[s - a : e - a] += 0.3 * np.sin(2 * np.pi * 1000 * t / SR).astype(np.float32)
            f.write(x)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def small_cpu_detector() -> SoundEventDetector:
    torch.manual_seed(0)
    enc = EncoderConfig(embed_dim=192, depth=4, num_heads=6, target_length=256)
    model = SEDModel(SEDConfig(num_classes=6, hop=0.04, layers="all", gru_hidden=64), enc)
    return SoundEventDetector(model, FrontendConfig(target_length=256), None)


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", type=Path, help="exported detector (default: small_cpu shape, random weights)")
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the long file")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seconds = args.minutes * 60 + 0.015  # whole fbank frames: no padded frame at the end
    bursts = [(round(0.16 * k, 2), round(0.16 * (k + 5 + k % 7), 2)) for k in range(100, int(seconds / 0.16) - 20, 1250)]
    det = load_detector(args.detector) if args.detector else small_cpu_detector()
    out: dict = {"threads": args.threads, "minutes": args.minutes, "detector": str(args.detector or "small_cpu random")}
    with tempfile.TemporaryDirectory(prefix="eat-sedbench-") as tmp:
        short, long = Path(tmp) / "short.wav", Path(tmp) / "long.wav"
        write_long(short, 60.015, [(10.24, 11.2)])
        write_long(long, seconds, bursts)
        out["rss_before_mb"] = peak_rss_mb()
        for name, path in (("one_minute", short), ("long", long)):
            t0 = time.perf_counter()
            _, events, dur = detect_file(det, path, batch_size=args.batch_size)
            dt = time.perf_counter() - t0
            out[name] = {"audio_s": dur, "wall_s": round(dt, 2), "x_real_time": round(dur / dt, 1),
                         "peak_rss_mb": round(peak_rss_mb(), 1)}
            print(f"{name}: {dur:.0f} s of audio in {dt:.1f} s = {dur / dt:.1f}x real time, "
                  f"peak RSS {peak_rss_mb():.0f} MB", flush=True)
        # timestamps: a level detector through the same streaming path
        # the loudest mel bin of the column's mean spectrum: about 0.1 for the noise, 0.97 for the tone
        det.column_logits = lambda fb: torch.stack(
            [(fb.reshape(fb.shape[0], -1, 16, fb.shape[-1]).mean(2).amax(-1) - 0.4) * 20] * len(det.class_names), -1)
        det.first_centre = det.col_hop / 2  # frames of the column grid: frame j = column j
        det.model.cfg.hop = det.col_hop
        _, events, _ = detect_file(det, long, batch_size=args.batch_size, post=PostProcess(0.0, 0.5))
        found = [(round(a, 2), round(b, 2)) for a, b, c, _ in events if c == det.class_names[0]]
        out["timestamps"] = {"planted": len(bursts), "found": len(found), "exact": found == bursts,
                             "first_differences": [(p, f) for p, f in zip(bursts, found, strict=False) if p != f][:3]}
        print(f"timestamps: {len(bursts)} bursts planted over {args.minutes:g} min, {len(found)} found, "
              f"all exact: {found == bursts}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
