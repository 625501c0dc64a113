"""Pack a clip list into tar shards + index.json for the shard loader (data.format=shards).

    python tools/make_shards.py train.tsv shards/train/ [--audio flac] [--shard-size 1G] [--workers 16]
    python tools/make_shards.py train.tsv shards/train/ --labels train.lbl --class-csv classes.csv
    python tools/make_shards.py train.json shards/train/ --class-csv class_labels_indices.csv   # AST json
    python tools/make_shards.py train.csv shards/train/                # path,label csv (--classes-from for valid)

The input kind follows the suffix: ``.tsv`` manifest (unlabelled, or EAT ``.lbl`` labels with
``--labels``), ``.json`` AST-style labels, ``.csv`` ``path,label``. The clip order is shuffled once
(``--seed``; ``--no-shuffle`` keeps it), every clip is decoded once and stored as 16-bit FLAC or WAV at
``--sample-rate``, or as the original file bytes (``--audio original``). Clips that cannot be read are
left out and listed at the end (exit status 0). Running the same command again after an interruption
continues with the missing shards; a different command on the same OUT_DIR is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from eat.cli import UsageError, about, check_workers, cli_main
from eat.data.loaders import available_cores
from eat.data.manifest import ManifestError, read_ast_json, read_eat_labels, read_path_label_csv
from eat.data.shards import (
    ShardSet,
    clips_from_labels,
    clips_from_manifest,
    parse_size,
    write_shards,
)


def load_clips(args: argparse.Namespace):
    """(clips, class names or None, multi_label) from the input file and label options."""
    src: Path = args.source
    suffix = src.suffix.lower()
    if suffix == ".tsv":
        if args.labels:
            if not args.class_csv:
                raise ManifestError("--labels needs --class-csv (index,mid,display_name)")
            labels = read_eat_labels(src, args.labels, args.class_csv)
        else:
            return clips_from_manifest(src), None, False
    elif suffix == ".json":
        if not args.class_csv:
            raise ManifestError(f"{src}: an AST json needs --class-csv (class_labels_indices.csv)")
        labels = read_ast_json(src, args.class_csv)
    elif suffix == ".csv":
        names = ShardSet(args.classes_from).classes if args.classes_from else None
        labels = read_path_label_csv(src, class_names=names)
    elif not src.is_file():
        raise ManifestError(f"{src}: {'is a folder, not a clip list' if src.is_dir() else 'no such file'}")
    else:
        raise ManifestError(f"{src}: unknown input kind {suffix or '(no suffix)'!r}; expected .tsv, .json or .csv")
    return clips_from_labels(labels), labels.class_names, labels.multi_label


def _close(bars: list[tqdm]) -> None:
    for bar in bars:
        bar.close()


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="clip list: .tsv manifest, .json (AST) or .csv (path,label)")
    ap.add_argument("out_dir", type=Path, help="folder for shard-*.tar and index.json")
    ap.add_argument("--labels", type=Path, help="EAT .lbl file for a .tsv manifest")
    ap.add_argument("--class-csv", type=Path, help="index,mid,display_name csv (for --labels and .json)")
    ap.add_argument("--classes-from", type=Path, help="shard folder whose classes a .csv split must use")
    ap.add_argument("--audio", choices=("flac", "wav", "original"), default="flac",
                    help="stored audio: 16-bit FLAC/WAV at --sample-rate, or the original bytes (default flac)")
    ap.add_argument("--sample-rate", type=int, default=16000, help="rate clips are decoded/stored at (16000)")
    ap.add_argument("--shard-size", default="1G", help="target shard size, e.g. 1G, 500M (default 1G)")
    ap.add_argument("--clips-per-shard", type=int, default=0, help="fixed clips per shard (overrides --shard-size)")
    ap.add_argument("--workers", type=int, default=available_cores(),
                    help="parallel writer processes (default: the CPU cores available to this process; 0: none)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the clip order (default 0)")
    ap.add_argument("--no-shuffle", action="store_true", help="keep the input order")
    args = ap.parse_args(argv)
    check_workers(args.workers)
    bars: list[tqdm] = []  # made at the first report, after the folder's plan was checked

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="clip", desc="sharding", smoothing=0.1))
        bars[0].update(done - bars[0].n)

    if args.clips_per_shard < 0 or args.sample_rate <= 0:
        raise UsageError("--clips-per-shard must be >= 0 and --sample-rate > 0")
    with about("--shard-size"):
        target = parse_size(args.shard_size)
    clips, classes, multi = load_clips(args)
    try:
        result = write_shards(clips, args.out_dir, args.audio, args.sample_rate, target, args.clips_per_shard,
                              args.workers, args.seed, not args.no_shuffle, classes, multi, str(args.source),
                              progress)
    except KeyboardInterrupt:
        _close(bars)
        print(f"error: interrupted; finished shards are kept, run the same command again to continue "
              f"{args.out_dir}", file=sys.stderr)
        sys.exit(130)
    finally:
        _close(bars)
    again = f" ({result.resumed_shards} shards kept from an earlier run)" if result.resumed_shards else ""
    print(f"wrote {result.clips} clips in {result.shards} shards to {result.index_path}{again}")
    if result.skipped:
        lines = "".join(f"\n  {name}: {reason}" for name, reason in result.skipped)
        print(f"warning: {len(result.skipped)} unreadable clip(s) left out:{lines}", file=sys.stderr)


if __name__ == "__main__":
    main()
