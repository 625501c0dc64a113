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

This module is the format and its loaders only; it imports nothing from training. Turning a training
checkpoint (ours or an official one) into an export is :mod:`eat.checkpoint_export`, a layer above
training (see "Layers" in docs/design.md). Its names stay importable from here for old code
(``export_checkpoint``, ``export_official``, ``find_checkpoint``), with a ``DeprecationWarning``.
"""

from __future__ import annotations

import json
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from eat import __version__
from eat.audio.fbank import FrontendConfig
from eat.config import ConfigError, from_dict, read_json, to_dict
from eat.data.manifest import ManifestError, read_class_csv
from eat.features import FeatureExtractor
from eat.model.classifier import Classifier, ClassifierConfig
from eat.model.convert import read_tensor_file
from eat.model.sed import SEDConfig, SEDModel
from eat.model.vit import Encoder, EncoderConfig
from eat.utils.device import resolve_device

FORMAT = "eat-encoder"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOP_KEYS = ("format", "format_version", "encoder", "frontend", "head", "meta")
HEAD_KEYS = ("num_classes", "prediction_mode", "head_norm_eps", "class_names", "layers", "pooling", "sed")
HEAD_PREFIXES = ("fc_norm.", "head.")

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
    source: str | None = None,
) -> Path:
    """Write an export directory atomically (a temporary sibling renamed into place); return its path.

    ``state_dict`` holds the encoder's tensors, either bare (``blocks.0.attn.qkv.weight``) or prefixed
    ``encoder.``, plus ``fc_norm.*``/``head.*`` when ``head`` is given. Everything is checked against a
    freshly built model before anything is written, and stored as float32. An existing export at
    ``out_dir`` is replaced; any other existing, non-empty directory is refused. ``source`` names where the
    tensors and config came from in messages (default: the state dict for ``out_dir``).
    """
    out = Path(out_dir)
    cfg = ExportConfig(
        encoder=_build(EncoderConfig, to_dict(encoder_cfg), "encoder", out),
        frontend=_build(FrontendConfig, to_dict(frontend), "frontend", out),
        head=_check_head(head, out),
        meta={"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "toolkit_version": __version__, **(meta or {})},
    )
    tensors = {}
    for key, value in state_dict.items():
        name = key if key.startswith(("encoder.", *HEAD_PREFIXES)) else f"encoder.{key}"
        tensors[name] = value.detach().to("cpu", torch.float32 if value.is_floating_point() else value.dtype)
    _check_tensors(_build_module(cfg), tensors, source or f"state dict for {out}")
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


def read_export(path: str | os.PathLike, shapes_only: bool = False) -> tuple[ExportConfig, dict[str, Tensor]]:
    """Parse and check ``config.json`` and read the tensors (safetensors: nothing is unpickled);
    ``shapes_only``: meta tensors from the file's header, for checking shapes cheaply."""
    root = Path(path)
    if root.is_file() and root.name in (CONFIG_FILE, WEIGHTS_FILE):  # a file of the export: its folder
        root = root.parent
    if not root.is_dir():
        raise ExportError(f"{root}: not found (expected an export directory with {CONFIG_FILE} and {WEIGHTS_FILE})")
    cfg_path, weights_path = root / CONFIG_FILE, root / WEIGHTS_FILE
    for f in (cfg_path, weights_path):
        if not f.is_file():
            raise ExportError(f"{f}: missing; is {root} an exported encoder (tools/export_encoder.py)?")
    cfg = parse_config(read_json(cfg_path, ExportError), cfg_path)
    try:
        if shapes_only:
            tensors = read_tensor_file(weights_path, shapes_only=True)
        else:
            tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{weights_path}: unreadable safetensors file ({str(e).splitlines()[0]})") from None
    return cfg, tensors


def parse_config(doc: Any, where: str | os.PathLike = CONFIG_FILE) -> ExportConfig:
    """Check an export's config document; unknown or missing keys raise :class:`ExportError` naming them."""
    if not isinstance(doc, dict):
        raise ExportError(f"{where}: top level must be an object")
    if "format" not in doc and ("embed_dim" in doc or "model_type" in doc):
        raise ExportError(f"{where}: a Hugging Face EAT config.json, not an eat export; convert the snapshot first "
                          "(tools/convert_official.py SNAPSHOT OUT_DIR)")
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
    device = resolve_device(device, "device")
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
    device = resolve_device(device, "device")
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



# ---------------------------------------------------------------------------------------------- shared


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


# ---------------------------------------------------------------------------------------------- moved names

# Names that moved up to eat.checkpoint_export (converting checkpoints needs the training code, which this
# format layer must not import). Old imports keep working with a DeprecationWarning; the forwarding import
# is the one upward import the layer contract allows for this module (pyproject.toml, ignore_imports).
_MOVED = {"export_checkpoint": "eat.checkpoint_export", "export_official": "eat.checkpoint_export",
          "find_checkpoint": "eat.checkpoint_export"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"eat.export.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
        from eat import checkpoint_export  # deprecation shim: the upward import happens only for old code

        return getattr(checkpoint_export, name)
    raise AttributeError(f"module 'eat.export' has no attribute {name!r}")
