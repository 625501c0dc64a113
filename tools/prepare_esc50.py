"""Check an ESC-50 folder and write manifests / per-fold csv files for it.

    python tools/prepare_esc50.py ESC50_ROOT OUT_DIR [--audio-dir audio] [--workers 8]

``recipes/finetune.py --task esc50 --esc50-root ESC50_ROOT`` reads the folder directly; this tool checks it
first (every listed clip present and readable, five folds, classes balanced) and writes what other tools
want: ``OUT_DIR/esc50.tsv`` (a manifest of every clip, e.g. for probing or pretraining) and
``OUT_DIR/fold{k}_train.csv`` / ``fold{k}_eval.csv`` (``path,label`` files for the ``generic`` task).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from eat.cli import cli_main
from eat.data.manifest import LabelSet, ManifestError, probe_audio, read_esc50, write_manifest

FOLDS = (1, 2, 3, 4, 5)


def write_csv(path: Path, labels: LabelSet) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows((str(it.path), labels.class_names[it.labels[0]]) for it in labels.items)


def prepare(root: Path, out: Path, audio_dir: str = "audio") -> dict[int, int]:
    """Check ``root`` and write the files; returns clips per fold. Raises ManifestError on problems."""
    folds = {k: read_esc50(root, [k], audio_dir) for k in FOLDS}
    everything = read_esc50(root, None, audio_dir)
    frames = {}
    for item in tqdm(everything.items, desc="checking clips", leave=False):
        result = probe_audio(item.path)
        if isinstance(result, str):
            raise ManifestError(f"{item.path}: {result}")
        frames[item.path] = result
    out.mkdir(parents=True, exist_ok=True)
    audio_root = (root / audio_dir).resolve()
    write_manifest(out / "esc50.tsv", audio_root,
                   [(Path(p).resolve().relative_to(audio_root).as_posix(), n) for p, n in frames.items()])
    for k in FOLDS:
        train = LabelSet([it for j in FOLDS if j != k for it in folds[j].items], everything.class_names, False)
        write_csv(out / f"fold{k}_train.csv", train)
        write_csv(out / f"fold{k}_eval.csv", folds[k])
    per_class = Counter(it.labels[0] for it in everything.items)
    if len(set(per_class.values())) > 1:
        print(f"warning: classes are not balanced (clips per class {min(per_class.values())}.."
              f"{max(per_class.values())})", file=sys.stderr)
    return {k: len(folds[k]) for k in FOLDS}


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("root", type=Path, help="ESC-50 folder (meta/esc50.csv + audio/)")
    ap.add_argument("out", type=Path, help="folder for esc50.tsv and the per-fold csv files")
    ap.add_argument("--audio-dir", default="audio", help="audio subfolder (default audio; e.g. audio_16k)")
    args = ap.parse_args(argv)
    try:
        counts = prepare(args.root, args.out, args.audio_dir)
    except ManifestError as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: cannot write under {args.out}: {e}")
    print("clips per fold: " + ", ".join(f"{k}: {n}" for k, n in counts.items()))
    print(f"wrote {args.out / 'esc50.tsv'} and fold1..5 _train/_eval csv files under {args.out}")


if __name__ == "__main__":
    main()
