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
import dataclasses
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from eat.audio.fbank import NORM_PRESETS, FrontendConfig
from eat.cli import cli_main
from eat.config import ConfigError, from_dict, to_dict
from eat.data.manifest import ManifestError, read_class_csv
from eat.export import CONFIG_FILE as EXPORT_CONFIG
from eat.export import FORMAT, ExportError, save_export
from eat.model.classifier import ClassifierConfig
from eat.model.vit import EncoderConfig


class ToolError(Exception):
    """A user-facing problem with the inputs of this tool."""


def export_checkpoint(
    src: Path, out: Path, teacher: bool = False, preset: str | None = None, target_length: int | None = None,
    class_names: list[str] | None = None,
) -> tuple[Path, str]:
    """Export ``src`` to ``out``; returns the export path and a one-line description of what was exported."""
    if not src.exists():
        raise ToolError(f"{src}: no such file or directory")
    if src.is_dir() and (src / EXPORT_CONFIG).is_file() and _is_our_export(src / EXPORT_CONFIG):
        raise ToolError(f"{src}: already an exported encoder; load it with eat.load_encoder")
    step_dir = _our_checkpoint(src)
    if step_dir is not None:
        return _export_ours(step_dir, out, teacher, preset, target_length, class_names)
    return export_official(src, out, teacher, preset, target_length, class_names)


# ---------------------------------------------------------------------------------------------- ours


def _our_checkpoint(src: Path) -> Path | None:
    """The ``step_*`` directory to read when ``src`` is one of our checkpoints or run directories."""
    from eat.train.checkpoint import CheckpointError, check_complete, list_checkpoints

    if not src.is_dir():
        return None
    if (src / "trainer.json").is_file() or (src / "complete").is_file():
        candidates = [src]
    else:
        candidates = list_checkpoints(src)
        if not candidates:
            return None
    errors = []
    for path in candidates:
        try:
            check_complete(path)
            return path
        except CheckpointError as e:
            errors.append(str(e))
    raise ToolError(errors[0] if len(candidates) == 1 else f"{src}: no complete checkpoint ({errors[0]})")


def _export_ours(step: Path, out: Path, teacher: bool, preset: str | None, target_length: int | None,
                 class_names: list[str] | None) -> tuple[Path, str]:
    try:
        state = load_file(step / "model.safetensors")
    except (SafetensorError, OSError) as e:
        raise ToolError(f"{step / 'model.safetensors'}: unreadable ({str(e).splitlines()[0]})") from None
    cfg = _read_run_config(step)
    meta: dict[str, Any] = {"source": str(step.resolve()), "step": _step_of(step)}
    if any(k.startswith("student.") for k in state):
        return _export_pretrain(step, out, state, cfg, teacher, preset, target_length, meta)
    if teacher:
        raise ToolError(f"{step}: only pretraining checkpoints have an EMA teacher; drop --teacher")
    if "classifier.head.weight" in state:  # recipes/finetune.py: FinetuneModel(classifier=...)
        state = {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
        ccfg, frontend = _finetune_configs(cfg, int(state["head.weight"].shape[0]), step)
    elif "head.weight" in state and any(k.startswith("encoder.") for k in state):  # a bare Classifier
        model_cfg = _find_model_config(cfg, step)
        try:
            ccfg = from_dict(ClassifierConfig, {k: v for k, v in model_cfg.items() if k != "preset"}, "model")
        except ConfigError as e:
            raise ToolError(f"{step}/config.yaml: {e}") from None
        frontend = _find_mapping(cfg, "frontend")
    else:
        raise ToolError(f"{step / 'model.safetensors'}: neither a pretraining (student.*) nor a fine-tuning "
                        "(classifier.* or encoder.* + head.*) state dict")
    frontend = _frontend(to_dict(frontend), preset, target_length, step, ccfg.encoder.target_length)
    head = {"num_classes": ccfg.num_classes, "prediction_mode": ccfg.prediction_mode,
            "head_norm_eps": ccfg.head_norm_eps}
    if class_names is not None:
        head["class_names"] = class_names
    path = save_export(out, ccfg.encoder, state, frontend, head=head, meta={**meta, "kind": "finetune"})
    return path, f"fine-tuned classifier ({ccfg.num_classes} classes) from {step}"


def _export_pretrain(step: Path, out: Path, state: dict, cfg: dict, teacher: bool, preset: str | None,
                     target_length: int | None, meta: dict) -> tuple[Path, str]:
    """recipes/pretrain_as2m.py runs: ``model`` holds the EATConfig (with ``encoder``), ``data.norm`` the
    normalisation preset; the front-end's length is the encoder's."""
    model_cfg = _find_model_config(cfg, step)
    enc_cfg = _encoder_config(model_cfg["encoder"], step)
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    frontend = _find_mapping(cfg, "frontend")
    if frontend is None and data.get("norm") in NORM_PRESETS:
        frontend = to_dict(FrontendConfig.from_preset(data["norm"], target_length=enc_cfg.target_length,
                                                      num_mel_bins=enc_cfg.num_mel_bins))
        frontend["crop"] = data.get("crop", "head")
    elif frontend is None and preset is None:
        print(f"note: {step} names no front-end; using the AudioSet recipe (pass --frontend-preset to choose)",
              file=sys.stderr)
    part = "teacher" if teacher else "student"
    sd = {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(f"{part}.")}
    if not sd:
        raise ToolError(f"{step}: the checkpoint has no {part} weights")
    frontend_cfg = _frontend(frontend, preset, target_length, step, enc_cfg.target_length)
    path = save_export(out, enc_cfg, sd, frontend_cfg, meta={**meta, "kind": f"pretrain-{part}"})
    return path, f"pretraining {part} encoder from {step}"


def _finetune_configs(cfg: dict, num_classes: int, step: Path) -> tuple[ClassifierConfig, FrontendConfig]:
    """The classifier and front-end of a recipes/finetune.py run, rebuilt the way the recipe builds them
    (an ``--init`` export must still exist: the architecture is read from it)."""
    from eat.train.finetune import FinetuneConfig, build_classifier

    try:
        ft = from_dict(FinetuneConfig, cfg)
        section = dataclasses.replace(ft.model, imagenet="")  # the shape is all we need, not the init weights
        with torch.device("meta"), warnings.catch_warnings():  # built for its config only: no real weights
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
            classifier = build_classifier(section, num_classes, ft.data.frontend.target_length)
    except ConfigError as e:
        raise ToolError(f"{step}/config.yaml: {e}") from None
    return classifier.cfg, ft.data.frontend


def _read_run_config(step: Path) -> dict:
    for path in (step / "config.yaml", step.parent / "config.yaml"):
        if path.is_file():
            try:
                cfg = yaml.safe_load(path.read_text())
            except yaml.YAMLError as e:
                raise ToolError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
            if not isinstance(cfg, dict):
                raise ToolError(f"{path}: top level must be a mapping")
            return cfg
    raise ToolError(f"{step}: no config.yaml (in the checkpoint or its run directory); cannot tell the encoder's shape")


def _find_model_config(cfg: dict, where: Path) -> dict:
    """The model section: ``cfg["model"]`` when it has an ``encoder`` mapping, else the first such mapping."""
    model = cfg.get("model")
    if isinstance(model, dict) and isinstance(model.get("encoder"), dict):
        return model
    found = _find_mapping(cfg, "encoder", parent=True)
    if found is None:
        raise ToolError(f"{where}/config.yaml: no model section with an 'encoder' mapping")
    return found


def _find_mapping(cfg: Any, key: str, parent: bool = False) -> dict | None:
    """Breadth-first search for a mapping stored under ``key`` (or, with ``parent``, the mapping holding it)."""
    queue = [cfg]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            if isinstance(node.get(key), dict):
                return node if parent else node[key]
            queue.extend(v for v in node.values() if isinstance(v, dict))
    return None


def _encoder_config(data: Any, where: Path) -> EncoderConfig:
    try:
        return from_dict(EncoderConfig, data, prefix="encoder")
    except ConfigError as e:
        raise ToolError(f"{where}/config.yaml: {e}") from None


def _step_of(step: Path) -> int | None:
    try:
        return int(json.loads((step / "trainer.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------- official


def export_official(src: Path, out: Path, teacher: bool = False, preset: str | None = None,
                    target_length: int | None = None, class_names: list[str] | None = None) -> tuple[Path, str]:
    """An official fairseq / Hugging Face checkpoint as an export directory (also ``tools/convert_official.py``).

    Loaded with :func:`eat.model.convert.load_official` (weights only); a pretraining checkpoint gives its
    student encoder (``teacher``: the EMA teacher), a fine-tuned one the classifier. The front-end is the
    official AudioSet recipe at the model's training length unless ``preset`` / ``target_length`` say
    otherwise. Returns the export path and a one-line description.
    """
    from eat.model.convert import ConversionError, load_official

    try:
        conv = load_official(src)
    except ConversionError as e:
        raise ToolError(str(e)) from None
    frontend = _frontend(None, preset, target_length, src, conv.encoder_cfg.target_length)
    meta = {"source": str(src.resolve()), "step": None, "kind": f"official-{conv.source_format}", "notes": conv.notes}
    origin = f"the {conv.source_format} checkpoint {src}"
    if teacher:
        if conv.teacher is None:
            raise ToolError(f"{src}: this {conv.source_format} checkpoint has no EMA teacher (_ema); drop --teacher")
        path = save_export(out, conv.encoder_cfg, conv.teacher, frontend, meta={**meta, "kind": meta["kind"] + "-teacher"})
        return path, f"EMA teacher of {origin}"
    if conv.head is None:
        path = save_export(out, conv.encoder_cfg, conv.encoder, frontend, meta=meta)
        return path, f"encoder of {origin} (its student)"
    if class_names is not None and len(class_names) != conv.num_classes:
        raise ToolError(f"{len(class_names)} class names given, the head of {src} has {conv.num_classes} classes")
    head = {"num_classes": conv.num_classes, "prediction_mode": conv.prediction_mode or "cls",
            "head_norm_eps": conv.head_norm_eps or 1e-6}
    if class_names is not None:
        head["class_names"] = class_names
    path = save_export(out, conv.encoder_cfg, conv.classifier_state_dict(), frontend, head=head, meta=meta)
    return path, f"classifier ({conv.num_classes} classes) of {origin}"


# ---------------------------------------------------------------------------------------------- shared


def _frontend(data: dict | None, preset: str | None, target_length: int | None, where: Path,
              default_length: int | None = None) -> FrontendConfig:
    """Front-end settings: the default length, then the checkpoint's, then the preset's, then ``--target-length``."""
    merged: dict[str, Any] = {"target_length": default_length} if default_length else {}
    merged |= data or {}
    try:
        if preset is not None:
            base = to_dict(FrontendConfig.from_preset(preset))
            merged |= {k: base[k] for k in ("norm_mean", "norm_std", "target_length")}
        if target_length is not None:
            merged["target_length"] = target_length
        return from_dict(FrontendConfig, merged, prefix="frontend")
    except ConfigError as e:
        raise ToolError(f"{where}: {e}") from None


def _is_our_export(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_class_names(path: Path) -> list[str]:
    """Class names from a text file (one per line) or a class csv (``index,mid,display_name``)."""
    if not path.is_file():
        raise ToolError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        try:
            return read_class_csv(path)[1]
        except ManifestError as e:
            raise ToolError(str(e)) from None
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ToolError(f"{path}: no class names")
    return names


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
    except (ToolError, ExportError) as e:
        sys.exit(f"error: {e}")
    print(f"exported {what} -> {path}")


if __name__ == "__main__":
    main()
