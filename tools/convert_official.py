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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eat.audio.fbank import FrontendConfig
from eat.config import ConfigError
from eat.export import ExportError, save_export
from eat.model.convert import ConversionError, load_official


def convert(
    src: Path, out: Path, teacher: bool = False, preset: str | None = None, class_names: list[str] | None = None
) -> str:
    """Convert ``src`` into the export directory ``out``; returns a one-line description."""
    conv = load_official(src)
    if preset is None:
        frontend = FrontendConfig.from_preset("audioset", target_length=conv.encoder_cfg.target_length)
    else:
        frontend = FrontendConfig.from_preset(preset)
    meta = {"source": str(src), "kind": f"official-{conv.source_format}", "notes": conv.notes}
    if teacher:
        if conv.teacher is None:
            raise ConversionError(f"{src}: this {conv.source_format} checkpoint has no EMA teacher; drop --teacher")
        save_export(out, conv.encoder_cfg, conv.teacher, frontend, meta={**meta, "kind": meta["kind"] + "-teacher"})
        return f"EMA teacher of the {conv.source_format} checkpoint"
    if conv.head is None:
        save_export(out, conv.encoder_cfg, conv.encoder, frontend, meta=meta)
        return f"encoder of the {conv.source_format} checkpoint"
    if class_names is not None and len(class_names) != conv.num_classes:
        raise ConversionError(f"{len(class_names)} class names given, the head has {conv.num_classes} classes")
    head = {"num_classes": conv.num_classes, "prediction_mode": conv.prediction_mode, "head_norm_eps": conv.head_norm_eps}
    if class_names is not None:
        head["class_names"] = class_names
    save_export(out, conv.encoder_cfg, conv.classifier_state_dict(), frontend, head=head, meta=meta)
    return f"classifier ({conv.num_classes} classes) of the {conv.source_format} checkpoint"


def main(argv: list[str] | None = None) -> None:
    doc_head, doc_rest = __doc__.split("\n\n", 1)
    ap = argparse.ArgumentParser(description=doc_head, epilog=doc_rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="official fairseq checkpoint, or Hugging Face snapshot / safetensors file")
    ap.add_argument("out_dir", type=Path, help="export directory to write (an existing export is replaced)")
    ap.add_argument("--teacher", action="store_true", help="export the EMA teacher of a pretraining checkpoint")
    ap.add_argument("--frontend-preset", choices=("audioset", "esc50", "spc2"), help="normalisation and length")
    ap.add_argument("--class-names", type=Path, help="text file with one class name per line (classifiers)")
    args = ap.parse_args(argv)
    try:
        names = None
        if args.class_names is not None:
            if not args.class_names.is_file():
                raise ConversionError(f"{args.class_names}: no such file")
            names = [s.strip() for s in args.class_names.read_text(encoding="utf-8").splitlines() if s.strip()]
        what = convert(args.src, args.out_dir, args.teacher, args.frontend_preset, names)
    except (ConversionError, ExportError, ConfigError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote the {what} to {args.out_dir}")


if __name__ == "__main__":
    main()
