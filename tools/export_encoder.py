"""Export an encoder (or a fine-tuned classifier) as ``config.json`` + ``model.safetensors``.

    python tools/export_encoder.py CHECKPOINT OUT_DIR [--teacher] [--frontend-preset audioset|esc50|spc2]
        [--target-length N] [--class-names FILE]

CHECKPOINT is any of:

* a pretraining run directory or one of its ``step_000123/``-style checkpoints (the newest complete one is used
  for a run directory): exports the student encoder, or the EMA teacher with ``--teacher``;
* a fine-tuning run / checkpoint: exports the classifier (encoder + ``fc_norm`` + ``head``);
* an official EAT checkpoint: a fairseq ``.pt`` (pretrained or fine-tuned) or a Hugging Face snapshot
  directory / ``.safetensors`` file with its ``config.json``.

The front-end settings come from the run's config (our checkpoints) or default to the official AudioSet
recipe (official checkpoints); ``--frontend-preset`` / ``--target-length`` override them, e.g.
``--frontend-preset esc50`` for a model fine-tuned on ESC-50. Load the result with
``eat.load_encoder(OUT_DIR)`` or ``eat.load_classifier(OUT_DIR)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eat.checkpoint_export import export_checkpoint
from eat.cli import cli_main
from eat.export import ExportError, read_class_names


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="our run/checkpoint directory or an official EAT checkpoint")
    ap.add_argument("out_dir", type=Path, help="export directory to write (an existing export is replaced)")
    ap.add_argument("--teacher", action="store_true", help="export the EMA teacher instead of the student")
    ap.add_argument("--frontend-preset", choices=("audioset", "esc50", "spc2"),
                    help="normalisation and training length of an official recipe (overrides the checkpoint's)")
    ap.add_argument("--target-length", type=int, help="training length in frames (window for long audio)")
    ap.add_argument("--class-names", type=Path, help="class names for a classifier: text (one per line) or class csv")
    args = ap.parse_args(argv)
    if args.target_length is not None and args.target_length <= 0:
        sys.exit(f"error: --target-length must be positive, got {args.target_length}")
    try:
        names = read_class_names(args.class_names) if args.class_names else None
        path, what = export_checkpoint(args.checkpoint, args.out_dir, args.teacher, args.frontend_preset,
                                       args.target_length, names)
    except ExportError as e:
        sys.exit(f"error: {e}")
    print(f"exported {what} -> {path}")


if __name__ == "__main__":
    main()
