"""Build the real-audio benchmark (festival/flite voices, General-MIDI soundfonts) with held-out sources.

    apt-get install -y festival festvox-kallpc16k ... (the list: --packages)
    python tools/make_real_benchmark.py OUT [--seed 0] [--quick]

Four labelled tasks (keywords, language, instruments, drums) whose test split holds speakers or a
soundfont never used in training, plus an unlabelled pretraining manifest ``OUT/unlabelled/train.tsv``
made from the training sources only. Layout, splits and variation: ``eat/apps/real_benchmark.py``;
``OUT/benchmark.json`` records the seed, the counts and the Debian package versions. The same seed and
package versions give the same clips. ``--quick`` builds a tiny version (a few clips per class) to check
the installation. About 5 minutes on one core for the full build.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eat.apps.real_benchmark import FULL, PACKAGES, QUICK, BenchmarkError, build


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, nargs="?", help="output folder (created; must be empty or absent)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    ap.add_argument("--quick", action="store_true", help="a few clips per class, to check the installation")
    ap.add_argument("--packages", action="store_true", help="print the Debian packages needed and exit")
    args = ap.parse_args(argv)
    if args.packages:
        print(" ".join(PACKAGES))
        return
    if args.out is None:
        sys.exit("error: give an output folder (or --packages)")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        sys.exit(f"error: {args.out}: exists and is not an empty folder; choose another output folder")
    try:
        info = build(args.out, QUICK if args.quick else FULL, args.seed, log=lambda m: print(m, flush=True))
    except BenchmarkError as e:
        sys.exit(f"error: {e}")
    c = info["counts"]
    print(f"done in {info['seconds']:.0f} s: {c['unlabelled']} unlabelled clips; "
          + ", ".join(f"{t} {c[t]['train']}/{c[t]['test']}" for t in ("keywords", "language", "instruments", "drums"))
          + f" train/test clips under {args.out}")


if __name__ == "__main__":
    main()
