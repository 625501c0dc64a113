"""Synthetic audio for demos and tests: an unlabelled corpus and an ESC-50-shaped labelled set.

What the clips hold (five families of classes that differ in temporal structure) is described in
``eat/data/synthetic.py``, which generates them.

    python tools/make_synthetic_data.py OUT [--what both|unlabelled|esc50] [--num-clips 200]
        [--num-classes 20] [--clips-per-class 40] [--duration 10] [--labelled-duration 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eat.cli import cli_main
from eat.data.synthetic import make_esc50_like, make_unlabelled_corpus


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder (gets unlabelled/ and esc50/)")
    ap.add_argument("--what", choices=("both", "unlabelled", "esc50"), default="both")
    ap.add_argument("--num-clips", type=int, default=200, help="unlabelled clips (default 200)")
    ap.add_argument("--duration", type=float, default=10.0, help="unlabelled clip length in seconds (default 10)")
    ap.add_argument("--num-classes", type=int, default=20, help="labelled classes (default 20)")
    ap.add_argument("--clips-per-class", type=int, default=40, help="labelled clips per class (default 40)")
    ap.add_argument("--labelled-duration", type=float, default=5.0, help="labelled clip length in s (default 5)")
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for key in ("num_clips", "num_classes", "clips_per_class", "sample_rate"):
        if getattr(args, key) <= 0:
            sys.exit(f"error: --{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    if args.duration <= 0 or args.labelled_duration <= 0:
        sys.exit("error: --duration and --labelled-duration must be positive")
    try:
        if args.what in ("both", "unlabelled"):
            m = make_unlabelled_corpus(args.out / "unlabelled", args.num_clips, args.duration, args.seed,
                                       args.sample_rate, progress=True)
            print(f"unlabelled: {args.num_clips} clips, manifest {m}")
        if args.what in ("both", "esc50"):
            r = make_esc50_like(args.out / "esc50", args.num_classes, args.clips_per_class, args.labelled_duration,
                                args.seed, args.sample_rate, progress=True)
            print(f"esc50-like: {args.num_classes} classes x {args.clips_per_class} clips, root {r}")
    except OSError as e:
        sys.exit(f"error: cannot write under {args.out}: {e}")


if __name__ == "__main__":
    main()
