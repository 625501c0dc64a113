"""Official EAT checkpoints (fairseq and Hugging Face layouts) <-> this package's state dicts.

Accepted inputs:

* **fairseq pretraining** checkpoint: ``{"cfg": {...}, "model": state_dict, ...}`` with
  ``cfg["model"]["_name"] == "data2vec_multi"``. The student is the canonical encoder (downstream code
  uses it); the teacher comes from ``model["_ema"]`` (a nested dict, or flattened ``_ema.*`` keys), the
  decoder from ``modality_encoders.IMAGE.decoder.*``.
* **fairseq fine-tuned** checkpoint: ``cfg["model"]["_name"] == "mae_image_classification"``, encoder keys
  prefixed ``model.``, plus ``fc_norm`` (LayerNorm eps 1e-6) and ``head``; the encoder's settings are
  in ``cfg["model"]["pretrained_model_args"]["model"]``.
* **Hugging Face** port (``worstchan/EAT-*``): keys ``model.*`` with ``model.pre_norm`` for the context
  LayerNorm, and its ``config.json`` (the weights alone do not give the number of heads). Its
  ``fc_norm`` is a default LayerNorm (eps 1e-5).

Every key must be known and every expected key present; otherwise :class:`ConversionError` lists them.
Shapes are checked against an encoder built (on the meta device) from the converted config.

Files are read with ``torch.load(weights_only=True)`` (or safetensors). A fairseq checkpoint that
pickles other objects (old numpy scalars, argparse Namespaces, ...) is refused with a message naming
them; if you trust the file, re-save its ``cfg`` and ``model`` entries as plain tensors/dicts in an
environment with fairseq and convert that. Nothing is unpickled silently.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eat.config import ConfigError, check_value, json_type, read_json
from eat.model.eat import EATConfig
from eat.model.vit import Encoder, EncoderConfig

IMAGE = "modality_encoders.IMAGE."
BLOCK_PARAMS = tuple(
    f"{m}.{p}"
    for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    for p in ("weight", "bias")
)
HEAD_KEYS = ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")
_PREDICTION_MODES = {"CLS_TOKEN": "cls", "MEAN_POOLING": "mean"}


class ConversionError(ValueError):
    """A checkpoint cannot be converted (unknown layout, unknown or missing keys, unsupported settings)."""


@dataclass
class Converted:
    """An official checkpoint in this package's names.

    ``encoder``/``teacher`` use :class:`~eat.model.vit.Encoder` names, ``decoder`` the
    :class:`~eat.model.decoder.CNNDecoder` names, ``head`` the :class:`~eat.model.classifier.Classifier`
    names (``fc_norm.*``, ``head.*``). All tensors are float32.
    """

    source_format: str  # fairseq-pretrain | fairseq-finetune | hf-pretrain | hf-finetune
    encoder_cfg: EncoderConfig
    encoder: dict[str, Tensor]
    teacher: dict[str, Tensor] | None = None
    decoder: dict[str, Tensor] | None = None
    head: dict[str, Tensor] | None = None
    head_norm_eps: float | None = None
    prediction_mode: str | None = None
    eat_cfg: EATConfig | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int | None:
        return None if self.head is None else int(self.head["head.weight"].shape[0])

    def eat_state_dict(self) -> dict[str, Tensor]:
        """State dict for :class:`~eat.model.eat.EATModel` (needs a pretraining checkpoint)."""
        if self.teacher is None or self.decoder is None:
            raise ConversionError(f"a {self.source_format} checkpoint has no teacher/decoder to build EATModel from")
        out = {f"student.{k}": v for k, v in self.encoder.items()}
        out |= {f"teacher.{k}": v for k, v in self.teacher.items()}
        return out | {f"decoder.{k}": v for k, v in self.decoder.items()}

    def classifier_state_dict(self) -> dict[str, Tensor]:
        """State dict for :class:`~eat.model.classifier.Classifier` (needs a fine-tuned checkpoint)."""
        if self.head is None:
            raise ConversionError(f"a {self.source_format} checkpoint has no classification head")
        return {f"encoder.{k}": v for k, v in self.encoder.items()} | dict(self.head)


# ---------------------------------------------------------------------------------------------- key maps
def encoder_key_map(depth: int, layout: str = "fairseq") -> dict[str, str]:
    """Official encoder key -> our key. ``layout``: ``fairseq`` (also the fine-tuned layout after
    stripping its ``model.`` prefix) or ``hf``."""
    if layout == "fairseq":
        top = {
            f"{IMAGE}extra_tokens": "extra_tokens",
            f"{IMAGE}local_encoder.proj.weight": "patch_embed.weight",
            f"{IMAGE}local_encoder.proj.bias": "patch_embed.bias",
            f"{IMAGE}fixed_positional_encoder.positions": "pos_embed",
            f"{IMAGE}context_encoder.norm.weight": "pre_norm.weight",
            f"{IMAGE}context_encoder.norm.bias": "pre_norm.bias",
        }
        blocks = "blocks."
    elif layout == "hf":
        top = {
            "model.extra_tokens": "extra_tokens",
            "model.local_encoder.proj.weight": "patch_embed.weight",
            "model.local_encoder.proj.bias": "patch_embed.bias",
            "model.fixed_positional_encoder.positions": "pos_embed",
            "model.pre_norm.weight": "pre_norm.weight",
            "model.pre_norm.bias": "pre_norm.bias",
        }
        blocks = "model.blocks."
    else:
        raise ValueError(f"layout must be 'fairseq' or 'hf', got {layout!r}")
    top |= {f"{blocks}{i}.{p}": f"blocks.{i}.{p}" for i in range(depth) for p in BLOCK_PARAMS}
    return top


def decoder_key_map(layers: int) -> dict[str, str]:
    """Official decoder key -> our :class:`CNNDecoder` key (the names are the same below the prefix)."""
    names = [f"blocks.{i}.0.{p}" for i in range(layers) for p in ("weight", "bias")]
    return {f"{IMAGE}decoder.{n}": n for n in names + ["proj.weight", "proj.bias"]}


def _rename(sd: dict[str, Tensor], mapping: dict[str, str], what: str) -> dict[str, Tensor]:
    unknown = sorted(set(sd) - set(mapping))
    missing = sorted(set(mapping) - set(sd))
    if unknown or missing:
        parts = [f"unknown keys: {', '.join(unknown)}"] if unknown else []
        parts += [f"missing keys: {', '.join(missing)}"] if missing else []
        raise ConversionError(f"{what}: {'; '.join(parts)}")
    return {mapping[k]: v.detach().float() for k, v in sd.items()}


def _split(sd: dict[str, Tensor], prefix: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    inside = {k: v for k, v in sd.items() if k.startswith(prefix)}
    return inside, {k: v for k, v in sd.items() if k not in inside}


def _num_blocks(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


def _check_shapes(cfg: EncoderConfig, sd: dict[str, Tensor], what: str) -> None:
    with torch.device("meta"):
        expected = Encoder(cfg).state_dict()
    bad = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in sd.items() if v.shape != expected[k].shape]
    if bad:
        raise ConversionError(f"{what}: shapes do not match the encoder config: {'; '.join(bad)}")


# ---------------------------------------------------------------------------------------------- configs
def _need(d: dict, key: str, where: str, tp: Any = None) -> Any:
    """``d[key]`` of the checkpoint's config ``where``, checked as type ``tp`` when given (a mapping when
    ``tp`` is dict); missing or wrongly typed is a :class:`ConversionError` naming ``where.key``."""
    if not isinstance(d, dict) or key not in d or d[key] is None:
        raise ConversionError(f"checkpoint config has no '{where}.{key}'")
    return _typed(d[key], tp, f"{where}.{key}")


def _get(d: dict, key: str, where: str, tp: Any, default: Any) -> Any:
    """``d.get(key, default)`` checked as type ``tp`` (see :func:`_need`)."""
    value = d.get(key)
    return default if value is None else _typed(value, tp, f"{where}.{key}")


def _typed(value: Any, tp: Any, key: str) -> Any:
    if tp is None:
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConversionError(f"checkpoint config {key}: expected a mapping, got {value!r:.60}")
        return value
    try:
        return check_value(tp, value, key)
    except ConfigError as e:
        raise ConversionError(f"checkpoint config {e}") from None


def encoder_config_from_fairseq(model_cfg: dict, positions_rows: int, where: str = "cfg.model") -> EncoderConfig:
    """EncoderConfig from an official ``data2vec_multi`` model config (``cfg["model"]``).

    ``positions_rows`` is the row count of the stored positional table; it fixes ``max_time_patches``
    (768 * 8 rows since April 2024, 512 rows in older checkpoints).
    """
    image = _need(_need(model_cfg, "modalities", where, dict), "image", f"{where}.modalities", dict)
    iwhere = f"{where}.modalities.image"
    dim = _need(model_cfg, "embed_dim", where, int)
    problems = []
    if model_cfg.get("layer_norm_first", False):
        problems.append(
            "layer_norm_first=True (the official pre-LN block adds the MLP output twice; this package's "
            "pre-LN block is the standard one, so the numbers would differ)"
        )
    if image.get("prenet_depth", 0):
        problems.append(f"prenet_depth={image['prenet_depth']} (only 0 is supported)")
    if image.get("use_alibi_encoder", False):
        problems.append("use_alibi_encoder=True")
    if image.get("embed_dim", dim) != dim:
        problems.append(f"modality embed_dim {image['embed_dim']} != model embed_dim {dim}")
    if not image.get("fixed_positions", True):
        problems.append("fixed_positions=False")
    if problems:
        raise ConversionError("unsupported official settings: " + "; ".join(problems))
    patch = _need(image, "patch_size", iwhere, int)
    in_chans = _need(image, "in_chans", iwhere, int)
    if patch < 1 or patch > 128:
        raise ConversionError(f"checkpoint config {iwhere}.patch_size: must be in 1..128, got {patch}")
    if in_chans != 1:
        raise ConversionError(f"{iwhere}.in_chans is {in_chans}; only spectrogram models (1 channel) are supported")
    freq_patches = 128 // patch  # the official audio model always uses 128 mel bins
    if positions_rows % freq_patches:
        raise ConversionError(f"positional table has {positions_rows} rows, not a multiple of {freq_patches}")
    try:
        return EncoderConfig(
            embed_dim=dim,
            depth=_need(model_cfg, "depth", where, int),
            num_heads=_need(model_cfg, "num_heads", where, int),
            mlp_ratio=_get(model_cfg, "mlp_ratio", where, float, 4.0),
            patch_size=patch,
            patch_stride=(patch, patch),
            in_chans=1,
            num_mel_bins=128,
            target_length=_get(image, "target_length", iwhere, int, 1024),
            pos_embed="sincos",
            max_time_patches=positions_rows // freq_patches,
            num_extra_tokens=_get(image, "num_extra_tokens", iwhere, int, 1),
            layer_norm_first=False,
            pre_norm=True,
            final_norm=False,
            norm_eps=_need(model_cfg, "norm_eps", where, float),
        )
    except ConfigError as e:
        raise ConversionError(f"checkpoint config {where}: {e}") from None


def eat_config_from_fairseq(model_cfg: dict, encoder_cfg: EncoderConfig) -> tuple[EATConfig | None, list[str]]:
    """EATConfig from an official pretraining config, or None plus the reasons when it uses options this
    package does not implement (the encoder conversion is unaffected)."""
    image = model_cfg["modalities"]["image"]
    decoder = image.get("decoder") or {}
    if not isinstance(decoder, dict):
        return None, [f"cfg.model.modalities.image.decoder is a {type(decoder).__name__}, not a mapping"]
    off = ("layer_norm_target_layer", "batch_norm_target_layer", "instance_norm_targets", "end_of_block_targets",
           "loss_beta", "recon_loss", "shared_decoder")
    notes = [f"{k}={model_cfg[k]!r} is not implemented" for k in off if model_cfg.get(k)]
    if not image.get("inverse_mask", True):
        notes.append("inverse_mask=False is not implemented (EATModel.make_masks draws inverse block masks)")
    if decoder.get("transformer_decoder") or image.get("transformer_decoder"):
        notes.append("transformer decoders are not implemented")
    if notes:
        return None, notes
    try:
        return EATConfig(
            encoder=encoder_cfg,
            decoder_dim=int(decoder.get("decoder_dim", 384)),
            decoder_groups=int(decoder.get("decoder_groups", 16)),
            decoder_kernel=int(decoder.get("decoder_kernel", 5)),
            decoder_layers=int(decoder.get("decoder_layers", 5)),
            clone_batch=int(model_cfg.get("clone_batch", 1)),
            mask_ratio=float(image.get("mask_prob", 0.7)),
            mask_block=int(image.get("mask_length", 5)),
            mask_adjust=float(image.get("mask_prob_adjust", 0.0)),
            mask_noise_std=float(image.get("mask_noise_std", 0.01)),
            average_top_k_layers=int(model_cfg.get("average_top_k_layers", encoder_cfg.depth)),
            instance_norm_target_layer=bool(model_cfg.get("instance_norm_target_layer", False)),
            layer_norm_targets=bool(model_cfg.get("layer_norm_targets", False)),
            cls_loss_weight=float(model_cfg.get("cls_loss", 0.0)),
            frame_loss_weight=float(model_cfg.get("d2v_loss", 1.0)),
            ema_decay=float(model_cfg.get("ema_decay", 0.999)),
            ema_end_decay=float(model_cfg.get("ema_end_decay", 0.9999)),
            ema_anneal_end_step=int(model_cfg.get("ema_anneal_end_step", 0)),
            loss_scale=model_cfg.get("loss_scale"),
        ), []
    except (ValueError, TypeError, AttributeError) as e:  # a wrongly typed field: no pretraining config
        return None, [str(e)]


_REQUIRED = object()
# The fields of the Hugging Face port's config.json that the conversion reads: key -> (type, default).
# Other keys (architectures, model_type, num_classes, ...) are not used and not checked.
HF_FIELDS: dict[str, tuple[Any, Any]] = {
    "embed_dim": (int, _REQUIRED), "depth": (int, _REQUIRED), "num_heads": (int, _REQUIRED),
    "mlp_ratio": (float, 4.0), "patch_size": (int, 16), "stride": (int, None), "in_chans": (int, 1),
    "mel_bins": (int, 128), "img_size": (tuple[int, int], None), "max_length": (int, 768),
    "qkv_bias": (bool, True), "norm_eps": (float, 1e-6), "layer_norm_first": (bool, False),
}


def check_hf_config(doc: Any, where: str | Path = "config.json") -> dict[str, Any]:
    """The fields of a Hugging Face ``config.json`` document this converter uses (:data:`HF_FIELDS`),
    typed and checked; anything else is one :class:`ConversionError` naming ``where`` and the key.

    A missing or ``null`` optional field takes its default; numbers must be finite and positive."""
    if not isinstance(doc, dict):
        raise ConversionError(f"{where}: top level must be a JSON object, got {json_type(doc)}")
    out: dict[str, Any] = {}
    for key, (tp, default) in HF_FIELDS.items():
        value = doc.get(key)
        if value is None:
            if default is _REQUIRED:
                raise ConversionError(f"{where}: missing key '{key}' (the weights alone do not give it)")
            out[key] = default
            continue
        try:
            value = check_value(tp, value, key)
        except ConfigError as e:
            raise ConversionError(f"{where}: {e}") from None
        numbers = value if isinstance(value, tuple) else (value,)
        if tp is not bool and not all(math.isfinite(v) and v > 0 for v in numbers):
            raise ConversionError(f"{where}: {key}: must be {'positive' if tp is int else 'a finite positive number'}"
                                  f", got {doc[key]!r}")
        out[key] = value
    return out


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """Read and check a Hugging Face EAT ``config.json`` (:func:`check_hf_config`); one
    :class:`ConversionError` naming the file (and key) for anything wrong with it."""
    return check_hf_config(read_json(path, ConversionError), path)


def encoder_config_from_hf(hf_cfg: dict, positions_rows: int | None = None,
                           where: str | Path = "config.json") -> EncoderConfig:
    """EncoderConfig from the Hugging Face port's ``config.json`` (a parsed document, checked here with
    :func:`check_hf_config`; ``where`` names it in messages); ``positions_rows`` (the stored table's row
    count) takes precedence over its ``max_length``."""
    hf = check_hf_config(hf_cfg, where)
    if hf["layer_norm_first"]:
        raise ConversionError(f"{where}: layer_norm_first=true is not supported")
    patch, mels = hf["patch_size"], hf["mel_bins"]
    stride = hf["stride"] or patch
    target_length = hf["img_size"][0] if hf["img_size"] else 1024
    if mels < patch or target_length < patch:
        raise ConversionError(f"{where}: mel_bins ({mels}) and img_size[0] ({target_length}) must be at least "
                              f"patch_size ({patch})")
    freq_patches = (mels - patch) // stride + 1
    max_time = hf["max_length"] if positions_rows is None else positions_rows // freq_patches
    try:
        return EncoderConfig(
            embed_dim=hf["embed_dim"], depth=hf["depth"], num_heads=hf["num_heads"], mlp_ratio=hf["mlp_ratio"],
            patch_size=patch, patch_stride=(stride, stride), in_chans=hf["in_chans"], num_mel_bins=mels,
            target_length=target_length, pos_embed="sincos", max_time_patches=max_time, num_extra_tokens=1,
            qkv_bias=hf["qkv_bias"], norm_eps=hf["norm_eps"],
        )
    except ConfigError as e:
        raise ConversionError(f"{where}: {e}") from None


# ---------------------------------------------------------------------------------------------- official -> ours
def _flatten_ema(model: dict) -> dict[str, Tensor]:
    if not isinstance(model, dict):
        raise ConversionError(f"the state dict is a {type(model).__name__}, not a mapping of tensors")
    out = {}
    for k, v in model.items():
        if k == "_ema" and isinstance(v, dict):
            out |= {f"_ema.{kk}": vv for kk, vv in v.items()}
        elif isinstance(v, Tensor):
            out[k] = v
        else:
            raise ConversionError(f"state-dict entry '{k}' is a {type(v).__name__}, not a tensor")
    return out


def convert_checkpoint(checkpoint: dict, hf_config: dict | None = None,
                       hf_config_path: str | Path = "config.json") -> Converted:
    """Convert an in-memory official checkpoint (see the module docstring for the layouts); a Hugging Face
    one needs ``hf_config``, its parsed ``config.json`` (``hf_config_path`` names it in messages)."""
    if "cfg" in checkpoint and "model" in checkpoint:
        return _from_fairseq(checkpoint["cfg"], _flatten_ema(checkpoint["model"]))
    sd = _flatten_ema(checkpoint.get("state_dict", checkpoint))
    if "model.pre_norm.weight" in sd or "model.extra_tokens" in sd:
        if hf_config is None:
            raise ConversionError("a Hugging Face EAT checkpoint needs its config.json (num_heads is not in the weights)")
        return _from_hf(sd, hf_config, hf_config_path)
    raise ConversionError(
        "not an official EAT checkpoint: expected a fairseq dict with 'cfg' and 'model', or Hugging Face "
        "weights with 'model.pre_norm.weight'"
    )


def _from_fairseq(cfg: dict, sd: dict[str, Tensor]) -> Converted:
    model_cfg = _need(cfg, "model", "cfg", dict)
    name = model_cfg.get("_name")
    if name == "data2vec_multi":
        return _fairseq_pretrain(model_cfg, sd)
    if name == "mae_image_classification":
        return _fairseq_finetune(model_cfg, sd)
    raise ConversionError(f"cfg.model._name is {name!r}; expected 'data2vec_multi' or 'mae_image_classification'")


def _fairseq_pretrain(model_cfg: dict, sd: dict[str, Tensor]) -> Converted:
    pos_key = f"{IMAGE}fixed_positional_encoder.positions"
    if pos_key not in sd:
        raise ConversionError(f"missing keys: {pos_key}")
    enc_cfg = encoder_config_from_fairseq(model_cfg, sd[pos_key].shape[1])
    ema, rest = _split(sd, "_ema.")
    dec, rest = _split(rest, f"{IMAGE}decoder.")
    mapping = encoder_key_map(enc_cfg.depth)
    student = _rename(rest, mapping, "student encoder")
    _check_shapes(enc_cfg, student, "student encoder")
    teacher = None
    if ema:
        teacher = _rename({k[len("_ema.") :]: v for k, v in ema.items()}, mapping, "teacher (_ema)")
        _check_shapes(enc_cfg, teacher, "teacher (_ema)")
    layers = _num_blocks(dec, f"{IMAGE}decoder.blocks.")
    decoder = _rename(dec, decoder_key_map(layers), "decoder") if dec else None
    eat_cfg, notes = eat_config_from_fairseq(model_cfg, enc_cfg)
    if teacher is None:
        notes.append("no _ema teacher in the checkpoint")
    return Converted("fairseq-pretrain", enc_cfg, student, teacher, decoder, eat_cfg=eat_cfg, notes=notes)


def _fairseq_finetune(model_cfg: dict, sd: dict[str, Tensor]) -> Converted:
    pre = _need(model_cfg, "pretrained_model_args", "cfg.model", dict)
    mode = str(model_cfg.get("prediction_mode", "MEAN_POOLING")).split(".")[-1]
    if mode not in _PREDICTION_MODES:
        raise ConversionError(f"cfg.model.prediction_mode {mode} is not supported (only CLS_TOKEN and MEAN_POOLING)")
    if not model_cfg.get("use_fc_norm", True):
        raise ConversionError("cfg.model.use_fc_norm=False is not supported (the classifier always has fc_norm)")
    enc_sd, head = _split(sd, "model.")
    enc_sd = {k[len("model.") :]: v for k, v in enc_sd.items()}
    pos_key = f"{IMAGE}fixed_positional_encoder.positions"
    if pos_key not in enc_sd:
        raise ConversionError(f"missing keys: model.{pos_key}")
    enc_cfg = encoder_config_from_fairseq(
        _need(pre, "model", "cfg.model.pretrained_model_args", dict), enc_sd[pos_key].shape[1],
        "cfg.model.pretrained_model_args.model",
    )
    encoder = _rename(enc_sd, encoder_key_map(enc_cfg.depth), "fine-tuned encoder (model.*)")
    _check_shapes(enc_cfg, encoder, "fine-tuned encoder")
    head = _rename(head, {k: k for k in HEAD_KEYS}, "classification head")
    return Converted(
        "fairseq-finetune", enc_cfg, encoder, head=head, head_norm_eps=1e-6, prediction_mode=_PREDICTION_MODES[mode]
    )


def _from_hf(sd: dict[str, Tensor], hf_cfg: dict, where: str | Path) -> Converted:
    positions = sd.get("model.fixed_positional_encoder.positions")
    enc_cfg = encoder_config_from_hf(hf_cfg, None if positions is None or positions.dim() < 2 else positions.shape[1],
                                     where)
    head, enc_sd = _split(sd, "model.fc_norm.")
    head_proj, enc_sd = _split(enc_sd, "model.head.")
    head |= head_proj
    encoder = _rename(enc_sd, encoder_key_map(enc_cfg.depth, "hf"), "Hugging Face encoder")
    _check_shapes(enc_cfg, encoder, "Hugging Face encoder")
    if not head:
        return Converted("hf-pretrain", enc_cfg, encoder)
    head = _rename(head, {f"model.{k}": k for k in HEAD_KEYS}, "Hugging Face head")
    return Converted("hf-finetune", enc_cfg, encoder, head=head, head_norm_eps=1e-5, prediction_mode="cls")


# ---------------------------------------------------------------------------------------------- ours -> official
def to_official(
    encoder: dict[str, Tensor],
    depth: int,
    *,
    decoder: dict[str, Tensor] | None = None,
    teacher: dict[str, Tensor] | None = None,
    head: dict[str, Tensor] | None = None,
    layout: str = "fairseq",
    nest_ema: bool = True,
) -> dict[str, Any]:
    """Our state dicts -> an official-layout state dict (the inverse of the conversion above).

    fairseq: without ``head`` the pretraining layout (decoder keys, teacher under ``_ema`` as a nested
    dict, or ``_ema.*`` keys with ``nest_ema=False``); with ``head`` the fine-tuned layout (``model.``
    prefix + ``fc_norm``/``head``). hf: ``model.*`` keys.
    """
    inverse = {ours: theirs for theirs, ours in encoder_key_map(depth, layout).items()}
    out: dict[str, Any] = _rename(encoder, inverse, "encoder")
    if layout == "fairseq" and head is not None:
        out = {f"model.{k}": v for k, v in out.items()}
    if decoder is not None:
        layers = _num_blocks(decoder, "blocks.")
        out |= _rename(decoder, {o: t for t, o in decoder_key_map(layers).items()}, "decoder")
    if teacher is not None:
        ema = _rename(teacher, inverse, "teacher")
        out |= {"_ema": ema} if nest_ema else {f"_ema.{k}": v for k, v in ema.items()}
    if head is not None:
        prefix = "model." if layout == "hf" else ""
        out |= {f"{prefix}{k}": v for k, v in _rename(head, {k: k for k in HEAD_KEYS}, "head").items()}
    return out


# ---------------------------------------------------------------------------------------------- files
def load_official(path: str | Path, shapes_only: bool = False) -> Converted:
    """Read and convert an official checkpoint file or a Hugging Face snapshot directory.

    A directory must hold ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``; a
    ``.safetensors`` file uses the ``config.json`` next to it. ``shapes_only``: the tensors are meta
    tensors read from the file's header (:func:`read_tensor_file`), for checking shapes cheaply.
    """
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file or directory")
    hf_cfg = None
    if path.is_dir():
        candidates = [path / "model.safetensors", path / "pytorch_model.bin"]
        weights = next((p for p in candidates if p.is_file()), None)
        if weights is None:
            raise ConversionError(f"{path}: no model.safetensors or pytorch_model.bin in this directory")
        path = weights
    cfg_file = path.parent / "config.json"
    if cfg_file.exists():
        hf_cfg = read_json(cfg_file, ConversionError)  # checked field by field where it is used (_from_hf)
    if path.suffix == ".safetensors":
        try:
            checkpoint = read_tensor_file(path, shapes_only)
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ConversionError(f"{path}: not a readable safetensors file ({e})") from None
    else:
        checkpoint = _torch_load(path, shapes_only)
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path}: expected a dict, found a {type(checkpoint).__name__}")
    try:
        return convert_checkpoint(checkpoint, hf_cfg, cfg_file)
    except ConversionError as e:
        message = str(e)
        raise ConversionError(message if message.startswith(str(cfg_file)) else f"{path}: {message}") from None


def _load_failure_reason(error: Exception) -> str:
    """The line of a ``torch.load`` error that says what is wrong with the file. For bytes that are not a
    pickle at all torch prefixes the unpickler's reason with advice about ``weights_only``, which does not
    apply to a corrupt file, so the reason is taken from after that preamble."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = next((line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()), "")
        if reason:
            return f"corrupt or not a checkpoint: {reason}"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickled magic number of torch.save's old format


def load_weights_only(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, without torch's warning about the pickle
    protocol of a file it is about to refuse (the caller's one-line error says what is wrong). Raises
    what ``torch.load`` raises; :func:`weights_only_failure` turns that into a reason."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)


def to_meta(obj: Any) -> Any:
    """``obj`` with every tensor replaced by an empty one of the same shape and dtype on the meta device
    (nested dicts and lists followed): what a shape check needs, without the numbers."""
    if isinstance(obj, Tensor):
        return torch.empty(obj.shape, dtype=obj.dtype, device="meta")
    if isinstance(obj, dict):
        return {k: to_meta(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_meta(v) for v in obj)
    return obj


def read_tensor_file(path: str | Path, shapes_only: bool = False) -> Any:
    """A ``.safetensors`` file (a dict of tensors) or a ``torch.save`` file (weights only). With
    ``shapes_only`` the numbers are not read: safetensors gives its header, a torch file is memory-mapped
    (its tensors are never touched), and the result holds meta tensors (:func:`to_meta`)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        if not shapes_only:
            return load_file(str(path))
        with safe_open(str(path), "pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    if not shapes_only:
        return load_weights_only(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol")
            return to_meta(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    except RuntimeError as e:
        if "mmap" not in str(e):  # the old (non-zip) format cannot be memory-mapped: read it whole
            raise
        return to_meta(load_weights_only(path))


def weights_only_failure(path: str | Path, error: Exception) -> str:
    """Why :func:`load_weights_only` could not read ``path``, in one line. The file's first bytes say what
    it is: empty, a plain ``pickle.dump`` file (not ``torch.save`` output), a damaged ``torch.save`` zip
    archive, or something else entirely; otherwise the unpickler's own reason."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_MAGIC))
    except OSError as e:
        return e.strerror or str(e)
    if not head:
        return "empty file"
    if head[:1] == b"\x80" and head != _LEGACY_TORCH_MAGIC:
        return "a plain Python pickle (pickle.dump), not a torch.save file; save the tensors with torch.save"
    if head[:2] != b"PK" and head[:1] != b"\x80":
        return f"not a torch.save file (it starts with {head[:8]!r})"
    reason = _load_failure_reason(error)
    if head[:2] == b"PK" and "zip archive" in reason:
        return f"a damaged zip archive ({reason.split('. ')[0]})"
    return reason


def _torch_load(path: Path, shapes_only: bool = False) -> Any:
    try:
        return read_tensor_file(path, shapes_only)
    except Exception as e:
        unsafe = []
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            pass
        if not unsafe:
            raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({weights_only_failure(path, e)})") \
                from None
        raise ConversionError(
            f"{path}: refusing to unpickle {', '.join(unsafe)} (torch.load weights_only=True). If you trust "
            "this file, re-save it with plain contents, e.g. ck = torch.load(path, weights_only=False); "
            "torch.save({'cfg': ck['cfg'], 'model': ck['model']}, 'plain.pt'), and convert plain.pt"
        ) from None
