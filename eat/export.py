"""Exported encoders and classifiers: a directory with ``config.json`` + ``model.safetensors``.

The export is the toolkit's stable interface to the outside: it needs neither fairseq nor transformers,
and loading it never unpickles anything (JSON and safetensors only). Layout::

    config.json        {"format": "eat-encoder", "format_version": 1,
                        "encoder": EncoderConfig fields, "frontend": FrontendConfig fields,
                        "head": null | {"num_classes", "prediction_mode", "head_norm_eps", "class_names"?,
                                 "layers"?, "pooling"? (the pooled head),
                                 "sed"? (a sound event detector: eat.model.sed.SEDConfig fields)},
                        "meta": {"source", "step", "created", "toolkit_version", ...}}
    model.safetensors  encoder.* (and fc_norm.*, head.* for classifiers), float32

``load_encoder`` gives a :class:`~eat.features.FeatureExtractor`; ``load_classifier`` an
:class:`AudioClassifier`. ``export_onnx`` writes the encoder (fbank in, all tokens out) as ONNX with a
dynamic batch and time axis.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from eat.audio.fbank import NORM_PRESETS, FrontendConfig
from eat.config import ConfigError, from_dict, to_dict
from eat.data.manifest import ManifestError, read_class_csv
from eat.features import FeatureExtractor
from eat.model.classifier import Classifier, ClassifierConfig, head_spec
from eat.model.sed import SEDConfig, SEDModel
from eat.model.vit import Encoder, EncoderConfig

FORMAT = "eat-encoder"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOP_KEYS = ("format", "format_version", "encoder", "frontend", "head", "meta")
HEAD_KEYS = ("num_classes", "prediction_mode", "head_norm_eps", "class_names", "layers", "pooling", "sed")
HEAD_PREFIXES = ("fc_norm.", "head.")

log = logging.getLogger(__name__)


class ExportError(ValueError):
    """An export directory is missing, malformed or does not match its weights; the message names it."""


@dataclass
class ExportConfig:
    """The parsed and checked ``config.json`` of an export."""

    encoder: EncoderConfig
    frontend: FrontendConfig
    head: dict[str, Any] | None
    meta: dict[str, Any]


# ---------------------------------------------------------------------------------------------- save


def save_export(
    out_dir: str | os.PathLike,
    encoder_cfg: dict | EncoderConfig,
    state_dict: Mapping[str, Tensor],
    frontend: dict | FrontendConfig,
    head: dict | None = None,
    meta: dict | None = None,
) -> Path:
    """Write an export directory atomically (a temporary sibling renamed into place); return its path.

    ``state_dict`` holds the encoder's tensors, either bare (``blocks.0.attn.qkv.weight``) or prefixed
    ``encoder.``, plus ``fc_norm.*``/``head.*`` when ``head`` is given. Everything is checked against a
    freshly built model before anything is written, and stored as float32. An existing export at
    ``out_dir`` is replaced; any other existing, non-empty directory is refused.
    """
    out = Path(out_dir)
    cfg = ExportConfig(
        encoder=_build(EncoderConfig, to_dict(encoder_cfg), "encoder", out),
        frontend=_build(FrontendConfig, to_dict(frontend), "frontend", out),
        head=_check_head(head, out),
        meta={"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "toolkit_version": _version(), **(meta or {})},
    )
    tensors = {}
    for key, value in state_dict.items():
        name = key if key.startswith(("encoder.", *HEAD_PREFIXES)) else f"encoder.{key}"
        tensors[name] = value.detach().to("cpu", torch.float32 if value.is_floating_point() else value.dtype)
    _check_tensors(_build_module(cfg), tensors, f"state dict for {out}")
    if out.exists() and not _is_export(out) and any(out.iterdir()):
        raise ExportError(f"{out}: exists and is not an eat export; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{out.name}_", dir=out.parent))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / WEIGHTS_FILE, metadata={"format": FORMAT})
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "encoder": to_dict(cfg.encoder),
               "frontend": to_dict(cfg.frontend), "head": cfg.head, "meta": cfg.meta}
        (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old_{out.name}_", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------- load


def read_export(path: str | os.PathLike) -> tuple[ExportConfig, dict[str, Tensor]]:
    """Parse and check ``config.json`` and read the tensors (safetensors: nothing is unpickled)."""
    root = Path(path)
    if root.is_file() and root.name == CONFIG_FILE:
        root = root.parent
    if not root.is_dir():
        raise ExportError(f"{root}: not found (expected an export directory with {CONFIG_FILE} and {WEIGHTS_FILE})")
    cfg_path, weights_path = root / CONFIG_FILE, root / WEIGHTS_FILE
    for f in (cfg_path, weights_path):
        if not f.is_file():
            raise ExportError(f"{f}: missing; is {root} an exported encoder (tools/export_encoder.py)?")
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{cfg_path}: not valid JSON ({e})") from None
    cfg = parse_config(doc, cfg_path)
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{weights_path}: unreadable safetensors file ({str(e).splitlines()[0]})") from None
    return cfg, tensors


def parse_config(doc: Any, where: str | os.PathLike = CONFIG_FILE) -> ExportConfig:
    """Check an export's config document; unknown or missing keys raise :class:`ExportError` naming them."""
    if not isinstance(doc, dict):
        raise ExportError(f"{where}: top level must be an object")
    unknown = [k for k in doc if k not in TOP_KEYS]
    if unknown:
        raise ExportError(f"{where}: unknown key '{unknown[0]}'; known: {', '.join(TOP_KEYS)}")
    missing = [k for k in ("format", "format_version", "encoder", "frontend") if k not in doc]
    if missing:
        raise ExportError(f"{where}: missing key '{missing[0]}'")
    if doc["format"] != FORMAT:
        raise ExportError(f"{where}: format is {doc['format']!r}, expected {FORMAT!r}")
    version = doc["format_version"]
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ExportError(f"{where}: format_version {version!r} is not supported (this toolkit reads 1..{FORMAT_VERSION})")
    meta = doc.get("meta") or {}
    if not isinstance(meta, dict):
        raise ExportError(f"{where}: 'meta' must be an object")
    return ExportConfig(
        encoder=_build(EncoderConfig, doc["encoder"], "encoder", where),
        frontend=_build(FrontendConfig, doc["frontend"], "frontend", where),
        head=_check_head(doc.get("head"), where),
        meta=meta,
    )


def load_encoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The encoder of an export (a classifier export's head is ignored) as a :class:`FeatureExtractor`
    in eval mode on ``device``."""
    cfg, tensors = read_export(path)
    encoder = Encoder(cfg.encoder)
    enc_tensors = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    extra = [k for k in tensors if not k.startswith(("encoder.", *HEAD_PREFIXES))]
    if extra:
        raise ExportError(f"{Path(path) / WEIGHTS_FILE}: unexpected tensor(s) {', '.join(sorted(extra))}")
    _check_tensors(encoder, enc_tensors, str(Path(path) / WEIGHTS_FILE))
    encoder.load_state_dict(enc_tensors)
    return FeatureExtractor(encoder, cfg.frontend).to(device).eval()


class AudioClassifier(nn.Module):
    """An exported classifier: :class:`~eat.model.classifier.Classifier` plus its front-end and class names.

    ``forward(fbank, padding_mask=None)`` gives logits from normalised fbanks; ``predict(audio,
    sample_rate)`` goes from waveforms (each clip's fbank padded or cropped to the front-end's training
    length, as in fine-tuning) to logits.
    """

    def __init__(self, classifier: Classifier, frontend: FrontendConfig, class_names: list[str] | None):
        super().__init__()
        self.classifier = classifier
        self.frontend = frontend
        self.class_names = class_names
        self.eval()

    def forward(self, fbank: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.classifier(fbank, padding_mask)

    @torch.no_grad()
    def predict(self, audio: Tensor | list, sample_rate: int | None = None, lengths: Tensor | None = None) -> Tensor:
        """Logits ``(B, num_classes)`` for waveforms (a 1-D clip, a padded batch + ``lengths``, or a list)."""
        extractor = FeatureExtractor(self.classifier.encoder, self.frontend)
        fb, frames = extractor.fbank(audio, sample_rate, lengths)  # frames past a clip's end hold the pad value
        short = self.frontend.target_length - fb.shape[1]
        if short > 0:
            fb = torch.nn.functional.pad(fb, (0, 0, 0, short), value=extractor.pad_value)
        fb = fb[:, : self.frontend.target_length]
        mask = None  # the pooled head was fitted on each clip's own columns (as fine-tuning feeds it)
        if self.classifier.cfg.prediction_mode == "pooled":
            mask = self.classifier.padding_mask(frames, fb.shape[1])
        return self.classifier(fb, mask)


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> AudioClassifier:
    """The classifier of an export that has a head, as an :class:`AudioClassifier` in eval mode."""
    cfg, tensors = read_export(path)
    if cfg.head is None:
        raise ExportError(f"{path}: this export has no classifier head (use load_encoder)")
    if "sed" in cfg.head:
        raise ExportError(f"{path}: this export is a sound event detector (load it with eat.load_detector)")
    model = _build_module(cfg)
    _check_tensors(model, tensors, str(Path(path) / WEIGHTS_FILE))
    model.load_state_dict(tensors)
    return AudioClassifier(model, cfg.frontend, cfg.head.get("class_names")).to(device).eval()


def load_module(path: str | os.PathLike) -> tuple[ExportConfig, nn.Module]:
    """The bare module an export describes (encoder holder, :class:`Classifier` or a sound event detector's
    :class:`~eat.model.sed.SEDModel`) with its weights loaded and checked, and the export's config."""
    cfg, tensors = read_export(path)
    model = _build_module(cfg)
    _check_tensors(model, tensors, str(Path(path) / WEIGHTS_FILE))
    model.load_state_dict(tensors)
    return cfg, model


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


def find_checkpoint(src: Path) -> Path | None:
    """The ``step_*`` directory to read when ``src`` is one of our checkpoints or run directories (the
    newest complete checkpoint of a run directory); ``None`` when ``src`` is neither."""
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
    raise ExportError(errors[0] if len(candidates) == 1 else f"{src}: no complete checkpoint ({errors[0]})")


def _export_ours(step: Path, out: Path, teacher: bool, preset: str | None, target_length: int | None,
                 class_names: list[str] | None) -> tuple[Path, str]:
    try:
        state = load_file(step / "model.safetensors")
    except (SafetensorError, OSError) as e:
        raise ExportError(f"{step / 'model.safetensors'}: unreadable ({str(e).splitlines()[0]})") from None
    cfg = _read_run_config(step)
    meta: dict[str, Any] = {"source": str(step.resolve()), "step": _step_of(step)}
    if any(k.startswith("student.") for k in state):
        return _export_pretrain(step, out, state, cfg, teacher, preset, target_length, meta)
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
        from eat.train.pretrain import DataConfig, frontend_for

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
        raise ExportError(f"{step}/config.yaml: {e}") from None
    return classifier.cfg, ft.data.frontend


def _read_run_config(step: Path) -> dict:
    for path in (step / "config.yaml", step.parent / "config.yaml"):
        if path.is_file():
            try:
                cfg = yaml.safe_load(path.read_text())
            except yaml.YAMLError as e:
                raise ExportError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
            if not isinstance(cfg, dict):
                raise ExportError(f"{path}: top level must be a mapping")
            return cfg
    raise ExportError(f"{step}: no config.yaml (in the checkpoint or its run directory); cannot tell the encoder's shape")


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
    from eat.model.convert import ConversionError, load_official

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
        path = save_export(out, conv.encoder_cfg, conv.teacher, frontend, meta={**meta, "kind": meta["kind"] + "-teacher"})
        return path, f"EMA teacher of {origin}"
    if conv.head is None:
        path = save_export(out, conv.encoder_cfg, conv.encoder, frontend, meta=meta)
        return path, f"encoder of {origin} (its student)"
    if class_names is not None and len(class_names) != conv.num_classes:
        raise ExportError(f"{len(class_names)} class names given, the head of {src} has {conv.num_classes} classes")
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
        raise ExportError(f"{where}: {e}") from None


def is_export_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory whose ``config.json`` says it is one of our exports (a Hugging Face
    snapshot also has a ``config.json`` and a ``model.safetensors``)."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_class_names(path: Path) -> list[str]:
    """Class names from a text file (one per line) or a class csv (``index,mid,display_name``)."""
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        try:
            return read_class_csv(path)[1]
        except ManifestError as e:
            raise ExportError(str(e)) from None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ExportError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ExportError(f"{path}: no class names")
    return names


# ---------------------------------------------------------------------------------------------- ONNX


class _TokensOnly(nn.Module):
    """Encoder with a single fbank input, for tracing."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, fbank: Tensor) -> Tensor:
        return self.encoder(fbank)


def export_onnx(extractor: FeatureExtractor, path: str | os.PathLike, num_frames: int | None = None,
                opset: int = 17) -> Path:
    """Write the encoder as ONNX: input ``fbank`` (B, T, F) normalised, output ``tokens`` (B, E + T'*F', D).

    Batch and time are dynamic axes. The front-end (fbank) stays outside the graph: compute it with
    :meth:`FeatureExtractor.fbank`. **T must give a whole patch grid**: ``(T - patch) % stride == 0``
    (a multiple of 16 for EAT), and at most the positional table's length; pad with
    :attr:`FeatureExtractor.pad_value`. ``num_frames`` is the example length traced (default: the
    training length). Needs the ``onnx`` package (the ``onnx`` extra).

    This uses PyTorch's TorchScript-based exporter (``dynamo=False``): it needs only ``onnx``, and tracing
    records the positional-table slice as a function of the input length, so the time axis really is
    dynamic (checked against onnxruntime in ``tests/test_onnx.py``). The newer ``torch.export`` exporter
    would additionally need ``onnxscript`` and a ``16 * k`` shape constraint.
    """
    enc = extractor.encoder
    frames = num_frames or extractor.frontend.target_length
    if (frames - enc.cfg.patch_size) % enc.cfg.patch_stride[0]:
        raise ValueError(f"num_frames {frames} does not give a whole patch grid (patch {enc.cfg.patch_size}, "
                         f"stride {enc.cfg.patch_stride[0]})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, frames, enc.cfg.num_mel_bins, device=extractor.device)
    model = _TokensOnly(enc).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # the shape checks in Encoder.embed are Python ifs: the tracer warns that they are frozen (expected);
        # the TorchScript exporter is used on purpose (see the docstring), so its deprecation notice is noise
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (example,), str(path), input_names=["fbank"], output_names=["tokens"],
            dynamic_axes={"fbank": {0: "batch", 1: "frames"}, "tokens": {0: "batch", 1: "tokens"}},
            opset_version=opset, dynamo=False,
        )
    return path


# ---------------------------------------------------------------------------------------------- helpers


def _build(cls: type, data: Any, key: str, where: str | os.PathLike) -> Any:
    if not isinstance(data, dict):
        raise ExportError(f"{where}: '{key}' must be an object")
    try:
        return from_dict(cls, data, prefix=key)
    except (ConfigError, TypeError, ValueError) as e:
        raise ExportError(f"{where}: {e}") from None


def _check_head(head: Any, where: str | os.PathLike) -> dict[str, Any] | None:
    if head is None:
        return None
    if not isinstance(head, dict):
        raise ExportError(f"{where}: 'head' must be an object or null")
    for k in head:
        if k not in HEAD_KEYS:
            raise ExportError(f"{where}: unknown key 'head.{k}'; known: {', '.join(HEAD_KEYS)}")
    if "num_classes" not in head:
        raise ExportError(f"{where}: missing key 'head.num_classes'")
    out = {"num_classes": head["num_classes"], "prediction_mode": head.get("prediction_mode", "cls"),
           "head_norm_eps": head.get("head_norm_eps", 1e-6)}
    for key in ("layers", "pooling"):  # the pooled head's blocks and pooling
        if key in head:
            if not isinstance(head[key], str):
                raise ExportError(f"{where}: head.{key} must be a string")
            out[key] = head[key]
    names = head.get("class_names")
    if names is not None:
        if not isinstance(names, list) or len(names) != head["num_classes"]:
            raise ExportError(f"{where}: head.class_names must list {head['num_classes']} names")
        out["class_names"] = [str(n) for n in names]
    if head.get("sed") is not None:  # a frame-level detector (eat.model.sed)
        if not isinstance(head["sed"], dict):
            raise ExportError(f"{where}: head.sed must be an object")
        out["sed"], out["prediction_mode"] = dict(head["sed"]), "sed"
    return out


def _build_module(cfg: ExportConfig) -> nn.Module:
    """The bare module an export describes, with keys ``encoder.*`` (+ ``fc_norm.*``, ``head.*``)."""
    if cfg.head is None:
        holder = nn.Module()
        holder.encoder = Encoder(cfg.encoder)
        return holder
    if "sed" in cfg.head:
        try:
            sed = from_dict(SEDConfig, {**cfg.head["sed"], "num_classes": cfg.head["num_classes"]}, "head.sed")
        except ConfigError as e:
            raise ExportError(f"head: {e}") from None
        return SEDModel(sed, Encoder(cfg.encoder))
    head = {k: v for k, v in cfg.head.items() if k != "class_names"}
    try:
        ccfg = from_dict(ClassifierConfig, {**head, "encoder": to_dict(cfg.encoder)})
    except ConfigError as e:
        raise ExportError(f"head: {e}") from None
    return Classifier(ccfg)


def _check_tensors(module: nn.Module, tensors: Mapping[str, Tensor], where: str) -> None:
    """Raise :class:`ExportError` listing missing, unexpected and wrongly shaped tensors."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(f"{k} {tuple(tensors[k].shape)} != {tuple(expected[k].shape)}"
                    for k in set(expected) & set(tensors) if tensors[k].shape != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    if shapes:
        problems.append(f"wrong shape {', '.join(shapes)}")
    if problems:
        raise ExportError(f"{where}: tensors do not match the config: {'; '.join(problems)}")


def _is_export(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and {p.name for p in path.iterdir()} <= {CONFIG_FILE, WEIGHTS_FILE}


def _version() -> str:
    from eat import __version__

    return __version__
