"""Sound event detection on audio files of any length with an exported detector.

    python tools/sed_infer.py DETECTOR AUDIO [AUDIO ...] --out DIR [--postprocess FILE.json] \\
        [--median-filter SECONDS] [--threshold T] [--context COLUMNS] [--batch-size 8] [--scores] [--device cpu]

DETECTOR is the export a SED fine-tuning wrote (``recipes/finetune.py --task sed``: ``best/``). AUDIO are files
or folders (searched for wav/flac/ogg). Writes ``DIR/events.tsv`` (``filename onset offset event_label score``)
and, with ``--scores``, the frame scores of each file as ``DIR/scores/<name>.tsv`` (sed_scores_eval's format).
Files are read window by window (memory does not grow with the file; an hour works), stitched without seams
(see eat.detect). Post-processing: ``--postprocess`` (the ``postprocess.json`` the fine-tuning chose on
validation) or ``--median-filter`` / ``--threshold`` for every class. Unreadable files are skipped and counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from eat.cli import UsageError, cli_main
from eat.detect import PostProcess, load_detector, read_postprocess, run_detection

AUDIO_EXTS = (".wav", ".flac", ".ogg")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("detector", type=Path, help="exported detector directory (config.json + model.safetensors)")
    ap.add_argument("audio", nargs="+", type=Path, help="audio files or folders")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--postprocess", type=Path, help="post-processing JSON (median_filter, thresholds per class)")
    ap.add_argument("--median-filter", type=float, help="median filter window in seconds for every class")
    ap.add_argument("--threshold", type=float, help="decision threshold for every class")
    ap.add_argument("--context", type=int, help="columns of context kept on each side of a window (default W/8)")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    ap.add_argument("--scores", action="store_true", help="also write the frame scores of every file")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def audio_files(paths: list[Path]) -> tuple[list[Path], list[str]]:
    files, names = [], []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTS and f.is_file())
            files += found
            names += [f.relative_to(p).as_posix() for f in found]
        elif p.is_file():
            files.append(p)
            names.append(p.name)
        else:
            raise UsageError(f"{p}: no such file or folder")
    if not files:
        raise UsageError(f"no audio files ({', '.join(AUDIO_EXTS)}) in {', '.join(map(str, paths))}")
    return files, names


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    detector = load_detector(args.detector, args.device)
    post = read_postprocess(args.postprocess, detector.class_names) if args.postprocess else PostProcess(0.0, 0.5)
    if args.median_filter is not None:
        post.median_filter = args.median_filter
    if args.threshold is not None:
        post.thresholds = args.threshold
    files, names = audio_files(args.audio)
    totals = run_detection(detector, files, args.out, post, names, args.context, args.batch_size, args.scores,
                           progress=not args.no_progress)
    (args.out / "summary.json").write_text(json.dumps(totals, indent=1) + "\n")
    print(f"{totals['files']} files, {totals['audio_seconds']:.1f} s of audio in {totals['wall_seconds']:.1f} s "
          f"({totals['x_real_time']:.1f}x real time); events in {args.out / 'events.tsv'}"
          + (f"; {len(totals['bad_files'])} unreadable file(s) skipped" if totals["bad_files"] else ""))
    if not totals["files"]:
        raise UsageError("no file could be read")


if __name__ == "__main__":
    main()
