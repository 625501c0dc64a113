"""Build the real-audio sound event detection benchmark: polyphonic soundscapes with known onsets/offsets.

    apt-get install -y $(python tools/make_real_benchmark.py --packages)
    python tools/make_sed_benchmark.py OUT [--seed 0] [--quick]

Six classes (speech, piano, violin, trumpet, flute, drums) from festival/flite voices and General-MIDI
soundfonts; training soundscapes use two source groups (train_groups.tsv, for validation by group), test
soundscapes a held-out group of voices and a held-out soundfont. Writes DESED-style tables OUT/train.tsv and
OUT/test.tsv with the audio in OUT/train/ and OUT/test/. Details: eat/apps/sed_benchmark.py. ``--quick``: a handful
of soundscapes, to check the installation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eat.apps.sed_benchmark import FULL, QUICK, build_sed
from eat.cli import UsageError, cli_main
from eat.data.real_benchmark import BenchmarkError


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder (created; must be empty or absent)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    ap.add_argument("--quick", action="store_true", help="a few soundscapes, to check the installation")
    args = ap.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise UsageError(f"{args.out}: exists and is not empty")
    try:
        info = build_sed(args.out, QUICK if args.quick else FULL, args.seed)
    except BenchmarkError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {args.out} in {info['seconds']} s: " + ", ".join(
        f"{s} {c['soundscapes']} soundscapes / {c['events']} events" for s, c in info["counts"].items()))


if __name__ == "__main__":
    main()
