"""Training checkpoints (ours and official EAT ones) turned into export directories.

This is the layer above training: it reads a run's ``config.yaml`` with the recipes' own config classes
(:class:`eat.train.pretrain.DataConfig`, :class:`eat.train.finetune.FinetuneConfig`) and writes the
format of :mod:`eat.export`, which itself knows nothing of training. ``tools/export_encoder.py`` calls
:func:`export_checkpoint`, ``tools/convert_official.py`` :func:`export_official`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from eat.audio.fbank import NORM_PRESETS, FrontendConfig
from eat.config import ConfigError, from_dict, read_yaml_mapping, to_dict
from eat.export import ExportError, is_export_dir, save_export
from eat.model.classifier import ClassifierConfig, head_spec
from eat.model.convert import ConversionError, load_official
from eat.model.vit import EncoderConfig
from eat.train import checkpoint
from eat.train.finetune import FinetuneConfig, build_classifier
from eat.train.pretrain import DataConfig, frontend_for

log = logging.getLogger(__name__)


def find_checkpoint(src: Path) -> Path | None:
    """:func:`eat.train.checkpoint.find_checkpoint` with its problems as :class:`ExportError`."""
    try:
        return checkpoint.find_checkpoint(src)
    except checkpoint.CheckpointError as e:
        raise ExportError(str(e)) from None


# ---------------------------------------------------------------------------------------------- checkpoints -> export


def export_checkpoint(
    src: Path, out: Path, teacher: bool = False, preset: str | None = None, target_length: int | None = None,
    class_names: list[str] | None = None,
) -> tuple[Path, str]:
    """Export a training checkpoint ``src`` to ``out`` (``tools/export_encoder.py``); returns the export path
    and a one-line description of what was exported.

    ``src`` is one of our pretraining / fine-tuning run directories or ``step_*`` checkpoints (a run
    directory gives its newest complete checkpoint; pretraining exports the student encoder, or the EMA
    teacher with ``teacher``), or an official EAT checkpoint (:func:`export_official`). The front-end
    settings come from the run's config (ours) or default to the official AudioSet recipe (official);
    ``preset`` (``audioset`` / ``esc50`` / ``spc2``) and ``target_length`` override them. Problems raise
    :class:`ExportError` with a one-line message naming the file.
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise ExportError(f"{src}: no such file or directory")
    if is_export_dir(src):
        raise ExportError(f"{src}: already an exported encoder; load it with eat.load_encoder")
    step_dir = find_checkpoint(src)
    if step_dir is not None:
        return _export_ours(step_dir, out, teacher, preset, target_length, class_names)
    return export_official(src, out, teacher, preset, target_length, class_names)


# ---------------------------------------------------------------------------------------------- ours


def _export_ours(step: Path, out: Path, teacher: bool, preset: str | None, target_length: int | None,
                 class_names: list[str] | None) -> tuple[Path, str]:
    try:
        state = load_file(step / "model.safetensors")
    except (SafetensorError, OSError) as e:
        raise ExportError(f"{step / 'model.safetensors'}: unreadable ({str(e).splitlines()[0]})") from None
    cfg = _read_run_config(step)
    meta: dict[str, Any] = {"source": str(step.resolve()), "step": _step_of(step)}
    source = f"{step / 'model.safetensors'} (against {_run_config_file(step)})"
    if any(k.startswith("student.") for k in state):
        return _export_pretrain(step, out, state, cfg, teacher, preset, target_length, meta, source)
    if teacher:
        raise ExportError(f"{step}: only pretraining checkpoints have an EMA teacher; drop --teacher")
    if "classifier.head.weight" in state:  # recipes/finetune.py: FinetuneModel(classifier=...)
        state = {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
        ccfg, frontend = _finetune_configs(cfg, int(state["head.weight"].shape[0]), step)
    elif "head.weight" in state and any(k.startswith("encoder.") for k in state):  # a bare Classifier
        model_cfg = _find_model_config(cfg, step)
        try:
            ccfg = from_dict(ClassifierConfig, {k: v for k, v in model_cfg.items() if k != "preset"}, "model")
        except ConfigError as e:
            raise ExportError(f"{step}/config.yaml: {e}") from None
        frontend = _find_mapping(cfg, "frontend")
    else:
        raise ExportError(f"{step / 'model.safetensors'}: neither a pretraining (student.*) nor a fine-tuning "
                        "(classifier.* or encoder.* + head.*) state dict")
    frontend = _frontend(to_dict(frontend), preset, target_length, step, ccfg.encoder.target_length)
    head = head_spec(ccfg)
    if class_names is not None:
        head["class_names"] = class_names
    path = save_export(out, ccfg.encoder, state, frontend, head=head, meta={**meta, "kind": "finetune"}, source=source)
    return path, f"fine-tuned classifier ({ccfg.num_classes} classes) from {step}"


def _export_pretrain(step: Path, out: Path, state: dict, cfg: dict, teacher: bool, preset: str | None,
                     target_length: int | None, meta: dict, source: str) -> tuple[Path, str]:
    """recipes/pretrain_as2m.py runs: ``model`` holds the EATConfig (with ``encoder``), ``data.norm`` the
    normalisation preset; the front-end's length is the encoder's."""
    model_cfg = _find_model_config(cfg, step)
    enc_cfg = _encoder_config(model_cfg["encoder"], step)
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    frontend = _find_mapping(cfg, "frontend")
    if frontend is None and data.get("norm") in NORM_PRESETS:
        try:  # the run's own front-end, incl. the statistics of its data (data.norm_mean / norm_std)
            frontend = to_dict(frontend_for(from_dict(DataConfig, data, "data"), enc_cfg))
        except ConfigError as e:
            raise ExportError(f"{step}/config.yaml: {e}") from None
    elif frontend is None and preset is None:
        log.warning("note: %s names no front-end; using the AudioSet recipe (pass --frontend-preset to choose)", step)
    part = "teacher" if teacher else "student"
    sd = {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(f"{part}.")}
    if not sd:
        raise ExportError(f"{step}: the checkpoint has no {part} weights")
    frontend_cfg = _frontend(frontend, preset, target_length, step, enc_cfg.target_length)
    path = save_export(out, enc_cfg, sd, frontend_cfg, meta={**meta, "kind": f"pretrain-{part}"}, source=source)
    return path, f"pretraining {part} encoder from {step}"


def _finetune_configs(cfg: dict, num_classes: int, step: Path) -> tuple[ClassifierConfig, FrontendConfig]:
    """The classifier and front-end of a recipes/finetune.py run, rebuilt the way the recipe builds them
    (an ``--init`` export must still exist: the architecture is read from it)."""
    try:
        ft = from_dict(FinetuneConfig, cfg)
        section = dataclasses.replace(ft.model, imagenet="")  # the shape is all we need, not the init weights
        with torch.device("meta"), warnings.catch_warnings():  # built for its config only: no real weights
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
            classifier = build_classifier(section, num_classes, ft.data.frontend.target_length)
    except ConfigError as e:
        raise ExportError(f"{step}/config.yaml: {e}") from None
    return classifier.cfg, ft.data.frontend


def _run_config_file(step: Path) -> Path | None:
    """The ``config.yaml`` describing checkpoint ``step``: its own, else its run directory's."""
    return next((p for p in (step / "config.yaml", step.parent / "config.yaml") if p.is_file()), None)


def _read_run_config(step: Path) -> dict:
    path = _run_config_file(step)
    if path is None:
        raise ExportError(f"{step}: no config.yaml (in the checkpoint or its run directory); cannot tell the "
                          "encoder's shape")
    cfg = read_yaml_mapping(path, ExportError, "YAML config")
    if cfg is None:
        raise ExportError(f"{path}: empty; cannot tell the encoder's shape")
    return cfg


def _find_model_config(cfg: dict, where: Path) -> dict:
    """The model section: ``cfg["model"]`` when it has an ``encoder`` mapping, else the first such mapping."""
    model = cfg.get("model")
    if isinstance(model, dict) and isinstance(model.get("encoder"), dict):
        return model
    found = _find_mapping(cfg, "encoder", parent=True)
    if found is None:
        raise ExportError(f"{where}/config.yaml: no model section with an 'encoder' mapping")
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
        raise ExportError(f"{where}/config.yaml: {e}") from None


def _step_of(step: Path) -> int | None:
    try:
        return int(json.loads((step / "trainer.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------- official


def export_official(src: Path, out: Path, teacher: bool = False, preset: str | None = None,
                    target_length: int | None = None, class_names: list[str] | None = None) -> tuple[Path, str]:
    """An official fairseq / Hugging Face checkpoint as an export directory (``tools/convert_official.py``).

    Loaded with :func:`eat.model.convert.load_official` (weights only); a pretraining checkpoint gives its
    student encoder (``teacher``: the EMA teacher), a fine-tuned one the classifier. The front-end is the
    official AudioSet recipe at the model's training length unless ``preset`` / ``target_length`` say
    otherwise. Returns the export path and a one-line description.
    """
    src, out = Path(src), Path(out)
    try:
        conv = load_official(src)
    except ConversionError as e:
        raise ExportError(str(e)) from None
    frontend = _frontend(None, preset, target_length, src, conv.encoder_cfg.target_length)
    meta = {"source": str(src.resolve()), "step": None, "kind": f"official-{conv.source_format}", "notes": conv.notes}
    origin = f"the {conv.source_format} checkpoint {src}"
    if teacher:
        if conv.teacher is None:
            raise ExportError(f"{src}: this {conv.source_format} checkpoint has no EMA teacher (_ema); drop --teacher")
        path = save_export(out, conv.encoder_cfg, conv.teacher, frontend, meta={**meta, "kind": meta["kind"] + "-teacher"},
                           source=str(src))
        return path, f"EMA teacher of {origin}"
    if conv.head is None:
        path = save_export(out, conv.encoder_cfg, conv.encoder, frontend, meta=meta, source=str(src))
        return path, f"encoder of {origin} (its student)"
    if class_names is not None and len(class_names) != conv.num_classes:
        raise ExportError(f"{len(class_names)} class names given, the head of {src} has {conv.num_classes} classes")
    head = {"num_classes": conv.num_classes, "prediction_mode": conv.prediction_mode or "cls",
            "head_norm_eps": conv.head_norm_eps or 1e-6}
    if class_names is not None:
        head["class_names"] = class_names
    path = save_export(out, conv.encoder_cfg, conv.classifier_state_dict(), frontend, head=head, meta=meta,
                       source=str(src))
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
        raise ExportError(f"{where}: {e}") from None
