"""Write ``path,label`` csv files for the three Speech Commands v2 splits.

    python tools/prepare_spc2.py SPEECH_COMMANDS_ROOT OUT_DIR

``recipes/finetune.py --task spc2 data.root=SPEECH_COMMANDS_ROOT`` reads the folder directly (word folders,
``validation_list.txt``, ``testing_list.txt``; training = every clip in neither list, background noise
excluded). This tool writes the same splits as ``OUT_DIR/{train,valid,test}.csv`` for the ``generic`` task
or other tools, and prints the counts (v0.02: 84,843 / 9,981 / 11,005 clips, 35 words).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from eat.cli import cli_main
from eat.data.manifest import ManifestError
from eat.train.finetune_data import read_speech_commands

SPLITS = ("train", "valid", "test")


def prepare(root: Path, out: Path) -> dict[str, int]:
    """Write the csv files; returns clips per split. Raises ManifestError on a broken layout."""
    sets = {s: read_speech_commands(root, s) for s in SPLITS}
    out.mkdir(parents=True, exist_ok=True)
    for split, labels in sets.items():
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows((str(it.path.resolve()), labels.class_names[it.labels[0]]) for it in labels.items)
    return {s: len(v) for s, v in sets.items()}


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("root", type=Path, help="extracted speech_commands_v0.02 folder")
    ap.add_argument("out", type=Path, help="folder for train.csv, valid.csv, test.csv")
    args = ap.parse_args(argv)
    try:
        counts = prepare(args.root, args.out)
    except ManifestError as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: cannot write under {args.out}: {e}")
    print(", ".join(f"{s}: {n} clips" for s, n in counts.items()) + f" -> {args.out}")


if __name__ == "__main__":
    main()
