"""Turn an AudioSet segment list and a folder of downloaded clips into EAT fine-tuning files.

    python tools/prepare_audioset.py SEGMENTS_CSV AUDIO_DIR OUT_PREFIX --class-csv class_labels_indices.csv
        [--ext wav,flac] [--weights] [--workers 8]

SEGMENTS_CSV is an official list (``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``,
``eval_segments.csv``: ``YTID, start_seconds, end_seconds, "mid1,mid2,..."``, ``#`` comment lines).
Clips are matched to files in AUDIO_DIR (searched recursively) by YouTube id: a file stem equal to the
id, the id with a leading ``Y`` (``Y<id>.wav``), or starting with the id (``<id>_30.000.wav``).
Writes ``OUT_PREFIX.tsv`` (manifest), ``OUT_PREFIX.lbl`` (``<id> <mid1,mid2>`` per manifest line, the
format ``recipes/configs/finetune_as*.yaml`` read) and, with ``--weights``, ``OUT_PREFIX_weights.csv``
(one AS-2M sampling weight per clip: the sum over its labels of 1000 / (class count + 100)). Segments
without a readable file are counted and left out.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from eat.cli import check_workers, cli_main
from eat.config import read_text
from eat.data.loaders import class_balanced_weights
from eat.data.manifest import LabelledItem, ManifestError, read_class_csv, scan_audio, write_manifest

YTID_LENGTH = 11


def read_segments(path: Path, known_mids: dict[str, int]) -> dict[str, list[str]]:
    """``{ytid: [mids]}`` from an AudioSet segments csv; unknown label ids raise ManifestError."""
    lines = read_text(path, ManifestError).splitlines()
    segments: dict[str, list[str]] = {}
    for lineno, row in enumerate(csv.reader(lines, skipinitialspace=True), start=1):
        if not row or row[0].startswith("#"):
            continue
        if len(row) < 4:
            raise ManifestError(f"{path}:{lineno}: expected 'YTID, start, end, \"labels\"', got {','.join(row)!r}")
        mids = [m.strip() for m in row[3].split(",") if m.strip()]
        unknown = [m for m in mids if m not in known_mids]
        if unknown or not mids:
            raise ManifestError(f"{path}:{lineno}: unknown or missing label id(s) {', '.join(unknown) or '(none)'}")
        segments[row[0].strip()] = mids
    if not segments:
        raise ManifestError(f"{path}: no segments listed")
    return segments


def clip_id(stem: str, ids: dict[str, list[str]]) -> str | None:
    """The YouTube id a file stem stands for, if it is one of ``ids``."""
    for candidate in (stem, stem[1:] if stem.startswith("Y") else "", stem[:YTID_LENGTH],
                      stem[1 : 1 + YTID_LENGTH] if stem.startswith("Y") else ""):
        if candidate in ids:
            return candidate
    return None


def prepare(segments_csv: Path, audio_dir: Path, out_prefix: Path, class_csv: Path, exts: list[str],
            weights: bool = False, workers: int = 8) -> tuple[int, int, int]:
    """Write the files; returns (clips written, segments without audio, unreadable files)."""
    mid_to_index, _ = read_class_csv(class_csv)
    segments = read_segments(segments_csv, mid_to_index)
    root = audio_dir.resolve()
    good, bad = scan_audio(root, exts, workers, progress=True)
    entries, lbl, items, seen = [], [], [], set()
    for rel, frames in good:
        ytid = clip_id(Path(rel).stem, segments)
        if ytid is None or ytid in seen:
            continue
        seen.add(ytid)
        entries.append((rel, frames))
        lbl.append(f"{ytid} {','.join(segments[ytid])}\n")
        items.append(LabelledItem(root / rel, tuple(sorted({mid_to_index[m] for m in segments[ytid]}))))
    if not entries:
        raise ManifestError(f"{root}: none of the {len(segments)} segments of {segments_csv} has an audio file")
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out_prefix.with_suffix(".tsv"), root, entries)
    out_prefix.with_suffix(".lbl").write_text("".join(lbl), encoding="utf-8")
    if weights:
        w = class_balanced_weights(items, len(mid_to_index))
        Path(f"{out_prefix}_weights.csv").write_text("".join(f"{x:.6f}\n" for x in w.tolist()), encoding="utf-8")
    return len(entries), len(segments) - len(seen), len(bad)


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("segments", type=Path, help="AudioSet segments csv (e.g. balanced_train_segments.csv)")
    ap.add_argument("audio_dir", type=Path, help="folder with the downloaded clips")
    ap.add_argument("out_prefix", type=Path, help="output path without extension, e.g. data/as/bal_train")
    ap.add_argument("--class-csv", type=Path, required=True, help="class_labels_indices.csv (index,mid,display_name)")
    ap.add_argument("--ext", default="wav,flac", help="audio extensions to match (default wav,flac)")
    ap.add_argument("--weights", action="store_true", help="also write the AS-2M sampling weights")
    ap.add_argument("--workers", type=int, default=8, help="threads reading audio headers (default 8; 0: none)")
    args = ap.parse_args(argv)
    check_workers(args.workers)
    if not args.audio_dir.is_dir():
        sys.exit(f"error: {args.audio_dir} is not a directory")
    exts = [e.strip() for e in args.ext.split(",") if e.strip()]
    try:
        written, missing, unreadable = prepare(args.segments, args.audio_dir, args.out_prefix, args.class_csv, exts,
                                               args.weights, args.workers)
    except ManifestError as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: cannot write {args.out_prefix}.*: {e}")
    print(f"wrote {written} clips to {args.out_prefix}.tsv / .lbl"
          + (f" and {args.out_prefix}_weights.csv" if args.weights else ""))
    if missing or unreadable:
        print(f"warning: {missing} segment(s) have no audio file; {unreadable} unreadable file(s) skipped",
              file=sys.stderr)


if __name__ == "__main__":
    main()
