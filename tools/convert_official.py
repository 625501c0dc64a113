"""Convert an official EAT checkpoint into this toolkit's export format (config.json + model.safetensors).

    python tools/convert_official.py SRC OUT_DIR [--teacher] [--frontend-preset audioset|esc50|spc2]
        [--class-names FILE]

SRC is a fairseq checkpoint (``EAT-base_epoch10_pt.pt``, a fine-tuned ``..._AS2M.pt``, ...) or a Hugging
Face snapshot directory / ``model.safetensors`` with its ``config.json``. A pretraining checkpoint gives
the student encoder (``--teacher``: the EMA teacher); a fine-tuned one gives the classifier (encoder +
``fc_norm`` + ``head``). Files are read with ``torch.load(weights_only=True)``; a checkpoint that pickles
other objects is refused with instructions (see ``eat/model/convert.py``).

The front-end defaults to the official AudioSet recipe (normalisation -4.268 / 4.569) at the model's own
training length; pass ``--frontend-preset esc50`` or ``spc2`` for models fine-tuned on those sets.
Load the result with ``eat.load_encoder(OUT_DIR)`` / ``eat.load_classifier(OUT_DIR)``.
``tools/export_encoder.py`` does the same for official checkpoints (one shared function,
``eat.checkpoint_export.export_official``) and also exports this toolkit's own runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eat.checkpoint_export import export_official
from eat.cli import cli_main
from eat.export import ExportError, read_class_names


@cli_main
def main(argv: list[str] | None = None) -> None:
    doc_head, doc_rest = __doc__.split("\n\n", 1)
    ap = argparse.ArgumentParser(description=doc_head, epilog=doc_rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="official fairseq checkpoint, or Hugging Face snapshot / safetensors file")
    ap.add_argument("out_dir", type=Path, help="export directory to write (an existing export is replaced)")
    ap.add_argument("--teacher", action="store_true", help="export the EMA teacher of a pretraining checkpoint")
    ap.add_argument("--frontend-preset", choices=("audioset", "esc50", "spc2"), help="normalisation and length")
    ap.add_argument("--class-names", type=Path,
                    help="class names for a classifier: text file (one per line) or class csv")
    args = ap.parse_args(argv)
    try:
        names = read_class_names(args.class_names) if args.class_names is not None else None
        _, what = export_official(args.src, args.out_dir, args.teacher, args.frontend_preset, class_names=names)
    except ExportError as e:
        sys.exit(f"error: {e}")
    print(f"wrote the {what} to {args.out_dir}")


if __name__ == "__main__":
    main()
