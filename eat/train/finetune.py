"""One fine-tuning run: build the classifier, the loaders and the training step, train, evaluate.

The pieces the generic :class:`~eat.train.trainer.Trainer` needs come from here:

* :class:`FinetuneModel` - classifier + model-side augmentation (spectrogram mixup, SpecAugment, SPC-2
  noise, in EAT's order, training mode only) + the task's loss; ``forward(source, target)`` returns
  ``{"loss": ...}``.
* :class:`BatchPrep` - moves a batch to the device, turns class indices into one-hot rows when the loss
  or mixup needs soft targets, and, when the loaders return waveforms, does waveform mixup before the
  fbank on the device (:func:`eat.data.batch.model_input`, shared with pretraining and evaluation).
* :class:`EvalTracker` - the per-epoch evaluation (accuracy, or mAP / mAUC / d-prime for multi-label
  tasks) with a progress bar; keeps the best model as an export directory (``<out>/best``).

:func:`run_finetune` wires them for one train/eval split; ``recipes/finetune.py`` loops over ESC-50 folds.

**Model selection.** With ``data.val_fraction`` > 0 a stratified part of the training clips is held out
(the linear probe's own :func:`~eat.eval.probe.validation_split`, seeded with ``train.seed``): the
evaluations during training and the best checkpoint use it, and the evaluation split is scored once, for the
selected checkpoint (``FinetuneResult.test``). Without it the best checkpoint is picked on the evaluation split
itself, as the official recipes report it (an optimistic number).

**LP-FT** (``model.probe_init``; Kumar et al. 2022, "Fine-tuning can distort pretrained features"): before
the first update the head is fitted exactly as the linear probe fits one (:func:`probe_init`: frozen
features of the training clips, standardised with their statistics, L-BFGS logistic regression with the
weight decay chosen on the same validation split), loaded into the classifier and evaluated as step 0. A
randomly initialised head sends large, wrong gradients into the pretrained blocks during its first updates;
a fitted head starts from the probe's optimum, so fine-tuning moves the encoder only where that improves the
loss, and because step 0 takes part in the selection the chosen model is never worse than the probe on
validation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from eat.audio.augment import AugmentConfig, augment_batch, augment_waveform, mixup
from eat.audio.fbank import FrontendConfig, num_frames
from eat.config import ConfigError, to_dict
from eat.data.batch import Batch, model_input
from eat.data.loaders import (
    ResumableDistributedSampler,
    SkippingLoader,
    WeightedSampler,
    build_loader,
    class_balanced_weights,
)
from eat.data.manifest import LabelSet
from eat.data.shards import ShardLabelledDataset, ShardSampler, labelled_dataset
from eat.eval.metrics import accuracy, multilabel_summary
from eat.eval.probe import DEFAULT_WEIGHT_DECAYS, fit_linear, validation_split, weight_decay_on_validation
from eat.export import ExportError, read_export, save_export
from eat.model.classifier import Classifier, ClassifierConfig, PatchoutConfig, classifier_config, head_spec
from eat.model.convert import load_weights_only, weights_only_failure
from eat.model.imagenet_init import from_imagenet_vit
from eat.model.vit import EncoderConfig
from eat.train.dist import DistEnv
from eat.train.finetune_data import DataSection, read_weights
from eat.train.layer_decay import finetune_param_groups
from eat.train.losses import classification_loss
from eat.train.optim import OptimConfig
from eat.train.trainer import TrainConfig, Trainer

# Encoder fields that do not change the parameters' meaning (length, regularisation, init scale).
NON_ARCH_KEYS = {"target_length", "drop_path", "attn_drop", "proj_drop", "extra_token_std"}


@dataclass
class ModelSection:
    """Which classifier to fine-tune and from what.

    ``preset``: ``tiny`` / ``base`` / ``large`` (EAT encoders with a CLS head), ``ast_base`` or ``passt_s``;
    empty means "the architecture in ``init``'s config.json", or ``base`` without ``init``. ``init`` is an
    exported encoder directory; ``imagenet`` a timm/DeiT ViT state dict (safetensors or weights-only torch
    file) for the AST / PaSST presets. Empty ``prediction_mode`` takes the preset's head; ``pooled`` reads
    the probe protocol's embedding: the blocks of the layer spec ``layers`` (``-1``, ``0+2``, ``all``) each
    pooled by ``pooling`` (``mean``, ``meanstd``, ``band-mean``, ``band-meanstd``; see
    :mod:`eat.model.pooling`), concatenated, standardised, then a Linear layer. ``probe_init`` (LP-FT, needs
    ``data.val_fraction`` > 0) fits the head as the linear probe does before training, choosing its weight
    decay among ``probe_weight_decays`` on the validation split. ``init_frontend`` replaces ``data.frontend``
    by ``init``'s (normalisation statistics and length; ``data.frontend.crop`` is kept), so the encoder
    sees its inputs exactly as its linear probe does. ``refit_head`` (with ``probe_init``): after selection,
    the selected checkpoint's head is refitted on every training clip as the probe protocol fits a probe
    (penalty re-chosen on the validation split), exported as ``final/`` and scored on the evaluation split.
    """

    preset: str = ""
    init: str = ""
    imagenet: str = ""
    prediction_mode: Literal["", "cls", "mean", "cls_dist", "pooled"] = ""
    drop_path: float = 0.1
    patchout: PatchoutConfig = field(default_factory=PatchoutConfig)
    layers: str = "-1"
    pooling: str = "mean"
    probe_init: bool = False
    probe_weight_decays: list[float] = field(default_factory=lambda: list(DEFAULT_WEIGHT_DECAYS))
    init_frontend: bool = False
    refit_head: bool = False


@dataclass
class LossSection:
    """``kind``: ``auto`` (BCE for multi-label data, else CE), ``ce`` or ``bce`` (EAT's SPC-2 path)."""

    kind: Literal["auto", "ce", "bce"] = "auto"
    label_smoothing: float = 0.0
    bce_norm: Literal["mean", "batch", "positives"] = "mean"


@dataclass
class LayerDecaySection:
    """Layer-wise LR decay (1.0 = off); ``form`` as in :mod:`eat.train.layer_decay`. ``head_scale``: LR
    scale of the head (``head``, ``fc_norm``), 1.0 = the peak LR as the official recipes use it."""

    decay: float = 0.65
    form: Literal["eat", "beit"] = "eat"
    head_scale: float = 1.0


@dataclass
class FinetuneConfig:
    """Everything of a fine-tuning run; ``recipes/configs/finetune_*.yaml`` hold the official settings.

    Evaluation runs every ``eval_every_epochs`` epochs (``train.eval_every`` is derived from it) and once
    at the end.
    """

    task: str = "generic"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossSection = field(default_factory=LossSection)
    layer_decay: LayerDecaySection = field(default_factory=LayerDecaySection)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-5, min_lr=1e-6, warmup_steps=400, clip_grad=0.0,
                                            min_lr_mode="absolute")
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(out_dir="outputs/finetune", max_steps=4000, save_every=0, keep_last=1,
                                            log_every=50)
    )
    eval_every_epochs: int = 1


# ------------------------------------------------------------------------------------------ model


def check_architecture(found: EncoderConfig, wanted: EncoderConfig, where: str, preset: str) -> None:
    """Raise a one-line :class:`ConfigError` naming the first architecture key that differs."""
    for f in dataclasses.fields(EncoderConfig):
        if f.name in NON_ARCH_KEYS:
            continue
        a, b = getattr(found, f.name), getattr(wanted, f.name)
        if a != b:
            raise ConfigError(f"{where}: encoder.{f.name} is {a!r} there but {b!r} in preset '{preset}'; "
                              "drop --preset to use the exported architecture")


def _load_weights_file(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model.imagenet: {p} not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(p)
    try:
        obj = load_weights_only(p)
    except Exception as e:  # noqa: BLE001 - any unpickling refusal or corruption is a bad user file
        raise ConfigError(f"model.imagenet: {p}: not a weights-only torch file ({weights_only_failure(p, e)})") \
            from None
    return obj.get("model", obj) if isinstance(obj, dict) else obj


def build_classifier(model: ModelSection, num_classes: int, target_length: int) -> Classifier:
    """The classifier a :class:`ModelSection` describes, for inputs of ``target_length`` frames."""
    if not 0.0 <= model.drop_path < 1.0:  # also refuses NaN; named here, the encoder would not know the key
        raise ConfigError(f"model.drop_path: must lie in [0, 1), got {model.drop_path}")
    common = dict(drop_path=model.drop_path, patchout=model.patchout, layers=model.layers, pooling=model.pooling)
    if model.prediction_mode:
        common["prediction_mode"] = model.prediction_mode
    if not model.init:
        cfg = classifier_config(model.preset or "base", num_classes, target_length, **common)
        classifier = Classifier(cfg)
        if model.imagenet:
            classifier.encoder.load_state_dict(from_imagenet_vit(_load_weights_file(model.imagenet), cfg.encoder))
        return classifier

    try:
        exported, tensors = read_export(model.init)
    except ExportError as e:
        raise ConfigError(f"--init: {e}") from None
    base = classifier_config(model.preset, num_classes, target_length) if model.preset else None
    if base is not None:
        check_architecture(exported.encoder, base.encoder, str(Path(model.init) / "config.json"), model.preset)
    enc_cfg = dataclasses.replace(exported.encoder, target_length=target_length)
    head = {"prediction_mode": "cls" if enc_cfg.num_extra_tokens == 1 else "cls_dist", "head_norm_eps": 1e-6}
    if base is not None:
        head = {"prediction_mode": base.prediction_mode, "head_norm_eps": base.head_norm_eps}
    classifier = Classifier(ClassifierConfig(encoder=enc_cfg, num_classes=num_classes, **{**head, **common}))
    enc_tensors = {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}
    expected = classifier.encoder.state_dict()
    for key, value in enc_tensors.items():
        if key in expected and expected[key].shape != value.shape:
            raise ConfigError(f"--init {model.init}: tensor encoder.{key} has shape {tuple(value.shape)}, the "
                              f"model for {target_length} frames needs {tuple(expected[key].shape)}")
    classifier.encoder.load_state_dict(enc_tensors)
    return classifier


class FinetuneModel(torch.nn.Module):
    """Classifier + model-side training augmentation + loss; ``forward(source, target) -> {"loss"}``."""

    def __init__(self, classifier: Classifier, augment: AugmentConfig, loss: LossSection, multi_label: bool,
                 seed: int = 0):
        super().__init__()
        self.classifier = classifier
        self.augment = augment
        self.loss_cfg = loss
        self.use_bce = multi_label or loss.kind == "bce"
        self.seed = seed
        self.generator: torch.Generator | None = None

    def _generator(self, device: torch.device, batch_seed: int | None) -> torch.Generator:
        """The augmentation generator, on the batch's device so masks and noise are drawn there.

        Reseeded from ``batch_seed`` (derived from the batch's clip indices by :class:`BatchPrep`) so the
        draws depend on the data position only and a resumed run augments exactly as an unbroken one.
        """
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        if batch_seed is not None:
            self.generator.manual_seed(self.seed * 1_000_003 + batch_seed)
        return self.generator

    def forward(self, source: torch.Tensor, target: torch.Tensor, batch_seed: int | None = None,
                padding_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.training:
            gen = self._generator(source.device, batch_seed)
            source, target = augment_batch(source, target, self.augment, gen)
        logits = self.classifier(source, padding_mask)
        loss = classification_loss(logits, target, self.use_bce, self.loss_cfg.label_smoothing, self.loss_cfg.bce_norm)
        return {"loss": loss}


class BatchPrep:
    """The trainer's ``prepare``: batch to device, soft targets when needed, waveform mixup + fbank."""

    def __init__(self, frontend: FrontendConfig, augment: AugmentConfig, num_classes: int, soft_targets: bool,
                 seed: int = 0, classifier: Classifier | None = None):
        self.frontend, self.augment = frontend, augment
        self.num_classes, self.soft_targets = num_classes, soft_targets
        self.seed = seed
        self.generator = torch.Generator()
        self.classifier = classifier  # given: the batch gets its padding mask (pooled head)

    def __call__(self, batch: Batch, device: torch.device) -> tuple[dict[str, Any], dict[str, float]]:
        batch_seed = batch_seed_of(batch["index"], batch.get("epoch")) if "index" in batch else None
        if batch_seed is not None:  # batches from our loaders; otherwise the generator just runs on
            self.generator.manual_seed(self.seed + 7919 + batch_seed)
        target = batch["target"].to(device, non_blocking=True)
        if self.soft_targets and target.dim() == 1:
            target = F.one_hot(target, self.num_classes).float()
        a = self.augment

        lengths = []

        def wave_mixup(wave: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal target
            wave, target, _ = mixup(wave, target, a.wave_mixup_alpha, a.wave_mixup_prob, self.generator,
                                    a.mixup_per_example, a.mixup_dominant)
            lengths.append(torch.maximum(length, length.flip(0)))
            return wave, lengths[-1]

        source = model_input(batch, self.frontend, device, wave_mixup if a.wave_mixup_prob > 0 else None)
        inputs = {"source": source, "target": target, "batch_seed": batch_seed}
        if self.classifier is not None:
            length = lengths[-1] if lengths else batch["length"].to(device, non_blocking=True)
            inputs["padding_mask"] = input_padding_mask(self.classifier, length, self.frontend, source.shape[1])
        return inputs, {"clips": float(source.shape[0])}


def input_padding_mask(classifier: Classifier, length: torch.Tensor, frontend: FrontendConfig,
                       total_frames: int) -> torch.Tensor:
    """The patch padding mask of fixed-length inputs made from waveforms of ``length`` valid samples."""
    frames = num_frames(length, frontend.sample_rate, frontend.frame_length_ms, frontend.frame_shift_ms)
    return classifier.padding_mask(frames, total_frames)


def batch_seed_of(index: torch.Tensor, epoch: torch.Tensor | None = None) -> int:
    """A seed from a batch's clip indices and epochs (host tensors, no device sync): batch augmentation
    then depends on the data position alone, which the checkpoint restores, not on how many steps a
    generator has run, so a resumed run augments exactly like an unbroken one."""
    key = index.to(torch.int64)
    if epoch is not None:
        key = key + epoch.to(torch.int64) * 1_000_000_007
    weights = torch.arange(1, key.numel() + 1, dtype=torch.int64) * 2_654_435_761
    return int((key * weights).remainder(2**31 - 1).sum().remainder(2**31 - 1))


def _wave_transform(wave: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    return augment_waveform(wave, cfg, generator)


# ------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def predict(classifier: Classifier, loader: SkippingLoader, frontend: FrontendConfig, env: DistEnv,
            desc: str = "eval", features: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (``features=True``: the pooled features before the head) and targets of every clip of
    ``loader`` (all ranks' shares, in dataset order)."""
    was_training = classifier.training
    classifier.eval()
    device = env.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    indices, logits, targets = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not env.is_main, dynamic_ncols=True):
        x = model_input(batch, frontend, device)
        mask = None
        if classifier.cfg.prediction_mode == "pooled":  # the probe's features: each clip's own columns only
            mask = input_padding_mask(classifier, batch["length"].to(device), frontend, x.shape[1])
        with autocast:
            out = classifier.features(x, mask) if features else classifier(x, mask)
        indices.append(batch["index"])
        logits.append(out.float().cpu())
        targets.append(batch["target"])
    classifier.train(was_training)
    index, logit, target = torch.cat(indices), torch.cat(logits), torch.cat(targets)
    if env.distributed:
        parts: list[Any] = [None] * env.world_size
        dist.all_gather_object(parts, (index, logit, target))
        index, logit, target = (torch.cat([p[i] for p in parts]) for i in range(3))
    order = torch.argsort(index, stable=True)
    index, logit, target = index[order], logit[order], target[order]
    first = torch.ones_like(index, dtype=torch.bool)  # padded shares repeat some clips
    first[1:] = index[1:] != index[:-1]
    return logit[first], target[first]


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> dict[str, float]:
    """``mAP``, ``mAUC``, ``d_prime`` (multi-label, on sigmoid scores) or ``acc`` and ``loss`` (CE)."""
    if multi_label:
        return multilabel_summary(torch.sigmoid(logits), targets)
    return {"acc": accuracy(logits, targets), "loss": float(F.cross_entropy(logits, targets.long()))}


class EvalTracker:
    """The trainer's ``eval_fn``: evaluate, remember every result and keep the best model exported."""

    def __init__(self, loader: SkippingLoader, cfg: FinetuneConfig, labels: LabelSet, env: DistEnv, out_dir: Path):
        self.loader, self.cfg, self.labels, self.env = loader, cfg, labels, env
        self.metric = "mAP" if labels.multi_label else "acc"
        self.best_dir = out_dir / "best"
        self.record = out_dir / "best_metrics.json"
        self.best: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        if self.record.is_file() and (self.best_dir / "config.json").is_file():  # a resumed run keeps its best
            self.best = json.loads(self.record.read_text())

    def __call__(self, module: FinetuneModel, step: int) -> dict[str, float]:
        logits, targets = predict(module.classifier, self.loader, self.cfg.data.frontend, self.env)
        metrics = classification_metrics(logits, targets, self.labels.multi_label)
        self.last = {"step": step, **metrics}
        self.history.append(self.last)
        value = metrics[self.metric]
        if not self.best or (math.isfinite(value) and value > self.best[self.metric]):
            self.best = {"step": step, **metrics}
            if self.env.is_main:
                export_classifier(module.classifier, self.best_dir, self.cfg, self.labels, self.best)
                self.record.write_text(json.dumps(self.best, indent=1) + "\n")
        return {**metrics, f"best_{self.metric}": self.best[self.metric]}


def export_classifier(classifier: Classifier, out: Path, cfg: FinetuneConfig, labels: LabelSet,
                      meta: dict[str, Any]) -> Path:
    """Write ``classifier`` as an export directory (loadable with ``eat.export.load_classifier``)."""
    c = classifier.cfg
    head = {**head_spec(c), "class_names": list(labels.class_names)}
    return save_export(out, c.encoder, classifier.state_dict(), cfg.data.frontend, head=head,
                       meta={"source": f"finetune:{cfg.task}", **meta})


# ------------------------------------------------------------------------------------------ a run


@dataclass
class FinetuneResult:
    """What a run reports: the final evaluation, the best one (with its step) and every evaluation.

    With ``data.val_fraction`` > 0 these are validation results and ``test`` holds the evaluation split's
    metrics of the selected (best) checkpoint, or with ``model.refit_head`` those of its refitted head (the
    trained head's as ``<metric>_trained_head``); ``probe`` the LP-FT head fit (weight decay, validation
    scores; ``refit``: the final refit's).
    """

    metric: str
    last: dict[str, float]
    best: dict[str, float]
    history: list[dict[str, float]]
    out_dir: Path
    status: str
    test: dict[str, float] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)


def build_loaders(cfg: FinetuneConfig, train_set: LabelSet, eval_set: LabelSet,
                  env: DistEnv) -> tuple[SkippingLoader, SkippingLoader]:
    """Training loader (shuffled or class-weighted, with waveform augmentation) and evaluation loader."""
    data, aug, seed = cfg.data, cfg.augment, cfg.train.seed
    wave_tf = None
    if aug.roll or aug.gain != "none":
        wave_tf = functools.partial(_wave_transform, cfg=aug)
    on_device = waveform_batches(cfg)
    train_ds = labelled_dataset(train_set, data.frontend, wave_transform=wave_tf, train=True,
                                return_waveform=on_device, seed=seed, max_bad_fraction=data.max_bad_fraction)
    if data.weighted_sampling:
        if data.epoch_samples <= 0:
            raise ConfigError("data.epoch_samples must be positive with data.weighted_sampling")
        if data.sample_weights and data.format == "shards":
            raise ConfigError("data.sample_weights lists weights in the original clip order, which make_shards "
                              "shuffled; leave it empty with data.format=shards (weights then come from the labels)")
        weights = (read_weights(data.sample_weights, len(train_set)) if data.sample_weights
                   else class_balanced_weights(train_set.items, train_set.num_classes))
        sampler = WeightedSampler(weights, data.epoch_samples, env.world_size, env.rank, seed)
    elif isinstance(train_ds, ShardLabelledDataset):  # shard-local order, see eat.data.shards
        sampler = ShardSampler(train_ds.shards, env.world_size, env.rank, shuffle=True, seed=seed,
                               window=data.shard_window)
    else:
        sampler = ResumableDistributedSampler(len(train_ds), env.world_size, env.rank, shuffle=True, seed=seed)
    if sampler.per_rank < data.batch_size:
        raise ConfigError(f"data.batch_size {data.batch_size} is larger than the {sampler.per_rank} training clips "
                          "per rank and epoch")
    train = build_loader(train_ds, sampler, data.batch_size, data.num_workers, train=True,
                         max_bad_clips=data.max_bad_clips)
    return train, eval_loader(cfg, eval_set, env)


def waveform_batches(cfg: FinetuneConfig) -> bool:
    """Whether the loaders return waveforms (the fbank then runs in the step): asked for, or needed by
    waveform mixup or by the pooled head's padding mask (each clip's length)."""
    return cfg.data.fbank_on_device or cfg.augment.wave_mixup_prob > 0 or cfg.model.prediction_mode == "pooled"


def eval_loader(cfg: FinetuneConfig, labels: LabelSet, env: DistEnv) -> SkippingLoader:
    """Clips of ``labels`` in order, unaugmented (head crop), each rank its share."""
    data = cfg.data
    ds = labelled_dataset(labels, data.frontend, train=False, return_waveform=waveform_batches(cfg),
                          seed=cfg.train.seed, max_bad_fraction=data.max_bad_fraction)
    sampler = ResumableDistributedSampler(len(ds), env.world_size, env.rank, shuffle=False, drop_last=False)
    return build_loader(ds, sampler, data.eval_batch_size or data.batch_size, data.num_workers, train=False,
                        max_bad_clips=data.max_bad_clips)


def holdout_split(train_set: LabelSet, fraction: float, seed: int) -> tuple[LabelSet, LabelSet, torch.Tensor]:
    """``(fit, validation, validation indices)``: the probe's stratified :func:`validation_split` of the
    training clips (same labels order and seed, same split)."""
    task = "multilabel" if train_set.multi_label else "multiclass"
    fit_idx, val_idx = validation_split(train_set.targets(), task, fraction, seed, train_set.groups())
    if len(fit_idx) == 0 or len(val_idx) == 0:
        raise ConfigError(f"data.val_fraction {fraction} leaves no clip on one side of the {len(train_set)} "
                          "training clips")
    part = [dataclasses.replace(train_set, items=[train_set.items[int(i)] for i in idx]) for idx in (fit_idx, val_idx)]
    return part[0], part[1], val_idx


@torch.no_grad()
def probe_init(classifier: Classifier, cfg: FinetuneConfig, train_set: LabelSet, env: DistEnv,
               refit: bool = False) -> dict[str, Any]:
    """Fit ``classifier``'s pooled head as :mod:`eat.eval.probe` fits a linear probe of its encoder and load
    it (standardisation into ``fc_norm``, weights into ``head``).

    Features are the classifier's own pooled features of every training clip (unaugmented, eval mode), so
    the head sees what it will see in training; the weight decay is chosen by
    :func:`~eat.eval.probe.weight_decay_on_validation` on the ``data.val_fraction`` split seeded with
    ``train.seed`` (the split fine-tuning holds out). LP-FT's first stage (``refit=False``) fits the head on
    the fitting part only, so the validation clips stay unseen by every model the selection compares; the
    final refit (``refit=True``, ``model.refit_head``) fits it on every training clip, exactly as the probe
    protocol fits its probe. Returns the fit's record."""
    if classifier.cfg.prediction_mode != "pooled":
        raise ConfigError("model.probe_init needs model.prediction_mode: pooled (the probe's head)")
    task = "multilabel" if train_set.multi_label else "multiclass"
    x, _ = predict(classifier, eval_loader(cfg, train_set, env), cfg.data.frontend, env, "probe features",
                   features=True)
    y = train_set.targets()
    if x.shape[0] != y.shape[0]:  # the split is over every clip's label: a skipped clip would shift it
        raise ConfigError(f"model.probe_init: {y.shape[0] - x.shape[0]} of the {y.shape[0]} training clips could "
                          "not be read; remove them from the training list")
    x = x.double()
    fraction, seed = cfg.data.val_fraction, cfg.train.seed
    groups = train_set.groups()  # a group column: validation takes whole speakers / sources / kits
    wd, scores = weight_decay_on_validation(x, y, task, train_set.num_classes, tuple(cfg.model.probe_weight_decays),
                                            fraction, seed, groups=groups)
    fit_idx = torch.arange(len(y)) if refit else validation_split(y, task, fraction, seed, groups)[0]
    model = fit_linear(x[fit_idx], y[fit_idx], task, train_set.num_classes, wd)
    classifier.fc_norm.mean.copy_(model.mean)
    classifier.fc_norm.std.copy_(model.std)
    classifier.head.weight.copy_(model.weight)
    classifier.head.bias.copy_(model.bias)
    return {"weight_decay": wd, "val_scores": scores, "dim": int(x.shape[1])}


def run_finetune(cfg: FinetuneConfig, train_set: LabelSet, eval_set: LabelSet, out_dir: str | Path,
                 env: DistEnv) -> FinetuneResult:
    """Fine-tune on ``train_set``, evaluating on ``eval_set`` every ``eval_every_epochs`` and at the end.

    ``out_dir`` gets the trainer's checkpoints and logs, ``best/`` (export of the best evaluation) and
    ``last/`` (export of the final model). Re-running with the same ``out_dir`` resumes. With
    ``data.val_fraction`` > 0 the evaluations run on the held-out part of ``train_set`` and ``eval_set`` is
    scored once at the end with the best checkpoint (``test_metrics.json``, ``FinetuneResult.test``).
    """
    out = Path(out_dir)
    if train_set.class_names != eval_set.class_names:
        raise ConfigError("the evaluation split has a different class list than the training split")
    multi = train_set.multi_label
    if multi and cfg.loss.kind == "ce":
        raise ConfigError("loss.kind 'ce' needs single-label data; this task is multi-label")
    check_selection_config(cfg)
    cfg = with_init_frontend(cfg)
    test_set = eval_set
    full_train = train_set
    if cfg.data.val_fraction > 0:
        train_set, eval_set, _ = holdout_split(train_set, cfg.data.val_fraction, cfg.train.seed)
    torch.manual_seed(cfg.train.seed)  # the same fresh head (and scratch encoder) on every rank and rerun
    classifier = build_classifier(cfg.model, train_set.num_classes, cfg.data.frontend.target_length)
    if classifier.cfg.encoder.num_mel_bins != cfg.data.frontend.num_mel_bins:
        raise ConfigError(f"data.frontend.num_mel_bins {cfg.data.frontend.num_mel_bins} != the encoder's "
                          f"{classifier.cfg.encoder.num_mel_bins}")
    aug = cfg.augment
    mixing = aug.spec_mixup_prob > 0 or aug.wave_mixup_prob > 0
    model = FinetuneModel(classifier, aug, cfg.loss, multi, seed=cfg.train.seed + env.rank)
    train_loader, val_loader = build_loaders(cfg, train_set, eval_set, env)
    tracker = EvalTracker(val_loader, cfg, eval_set, env, out)
    train_cfg = dataclasses.replace(cfg.train, out_dir=str(out),
                                    eval_every=max(1, cfg.eval_every_epochs) * len(train_loader))
    depth = classifier.cfg.encoder.depth
    groups = functools.partial(finetune_param_groups, weight_decay=cfg.optim.weight_decay,
                               layer_decay=cfg.layer_decay.decay, depth=depth, form=cfg.layer_decay.form,
                               decay_all=cfg.optim.decay_all, head_scale=cfg.layer_decay.head_scale)
    pooled = classifier.cfg.prediction_mode == "pooled"
    prep = BatchPrep(cfg.data.frontend, aug, train_set.num_classes, soft_targets=multi or model.use_bce or mixing,
                     seed=cfg.train.seed + env.rank, classifier=classifier if pooled else None)
    trainer = Trainer(model, train_loader, train_cfg, cfg.optim, env, groups, prepare=prep, eval_fn=tracker,
                      config=to_dict(cfg))
    probe_record: dict[str, Any] = {}
    if cfg.model.probe_init and trainer.step == 0:  # a resumed run restored its trained head instead
        probe_record = probe_init(classifier, cfg, full_train, env)
        step0 = tracker(model, 0)
        trainer.logger.console(f"LP-FT: probe head fitted (weight decay {probe_record['weight_decay']:g}, "
                               f"{probe_record['dim']} features); step 0 on validation: "
                               + ", ".join(f"{k} {v:.4f}" for k, v in step0.items()))
    n_params = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    trainer.logger.console(
        f"{cfg.task}: {n_params / 1e6:.2f} M trainable params ({classifier.cfg.prediction_mode} head, "
        f"{train_set.num_classes} classes), {len(train_loader)} batches/epoch/rank of {cfg.data.batch_size} clips, "
        f"out_dir {out}")
    result = trainer.fit()
    if env.is_main and result.status == "done":
        export_classifier(classifier, out / "last", cfg, eval_set, {"step": result.step, **tracker.last})
    test: dict[str, float] = {}
    if cfg.data.val_fraction > 0 and result.status == "done":
        test = score_best(classifier, cfg, test_set, env, out, tracker)
        if cfg.model.refit_head:
            refit = probe_init(classifier, cfg, full_train, env, refit=True)
            logits, targets = predict(classifier, eval_loader(cfg, test_set, env), cfg.data.frontend, env, "test")
            test = {**{f"{k}_trained_head": v for k, v in test.items() if k != "step"}, "step": test["step"],
                    **classification_metrics(logits, targets, test_set.multi_label)}
            probe_record["refit"] = refit
            if env.is_main:
                export_classifier(classifier, out / "final", cfg, test_set, {"step": test["step"], "refit_head": True})
                (out / "test_metrics.json").write_text(json.dumps(test, indent=1) + "\n")
    return FinetuneResult(tracker.metric, tracker.last, tracker.best, tracker.history, out, result.status, test,
                          probe_record)


def with_init_frontend(cfg: FinetuneConfig) -> FinetuneConfig:
    """``cfg`` with ``model.init``'s front-end when ``model.init_frontend`` asks for it (crop kept)."""
    if not cfg.model.init_frontend:
        return cfg
    if not cfg.model.init:
        raise ConfigError("model.init_frontend needs an --init export (whose front-end to use)")
    try:
        exported, _ = read_export(cfg.model.init)
    except ExportError as e:
        raise ConfigError(f"--init: {e}") from None
    frontend = dataclasses.replace(exported.frontend, crop=cfg.data.frontend.crop)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, frontend=frontend))


def check_selection_config(cfg: FinetuneConfig) -> None:
    """One-line errors for settings of the validation split, LP-FT and the pooled head that cannot work."""
    frac = cfg.data.val_fraction
    if not 0.0 <= frac < 1.0:
        raise ConfigError(f"data.val_fraction must lie in [0, 1), got {frac}")
    if frac > 0 and cfg.data.format == "shards":
        raise ConfigError("data.val_fraction: holding out clips of a shard set is not supported; "
                          "write the validation clips to shards of their own")
    if cfg.model.refit_head and not cfg.model.probe_init:
        raise ConfigError("model.refit_head needs model.probe_init (the head is refitted as LP-FT fitted it)")
    if cfg.model.probe_init:
        if cfg.model.prediction_mode != "pooled":
            raise ConfigError("model.probe_init needs model.prediction_mode: pooled (the probe's head)")
        if frac <= 0:
            raise ConfigError("model.probe_init needs data.val_fraction > 0 (the probe's weight decay is chosen "
                              "on that split, and step 0 is evaluated on it)")
        wds = cfg.model.probe_weight_decays
        if not wds or not all(math.isfinite(w) and w >= 0 for w in wds):
            raise ConfigError(f"model.probe_weight_decays must be one or more finite values >= 0, got {wds}")
    if cfg.model.prediction_mode == "pooled" and cfg.augment.spec_mixup_prob > 0:
        raise ConfigError("augment.spec_mixup_prob: the pooled head masks each clip's padding, which spectrogram "
                          "mixup would blend with another clip's; use augment.wave_mixup_prob instead")


def score_best(classifier: Classifier, cfg: FinetuneConfig, test_set: LabelSet, env: DistEnv, out: Path,
               tracker: EvalTracker) -> dict[str, float]:
    """The evaluation split's metrics of the selected checkpoint (``out/best``), written to
    ``out/test_metrics.json``; ``classifier`` is left holding the selected weights."""
    if env.distributed:
        dist.barrier()  # best/ is written by rank 0
    _, tensors = read_export(tracker.best_dir)
    classifier.load_state_dict(tensors)
    logits, targets = predict(classifier, eval_loader(cfg, test_set, env), cfg.data.frontend, env, "test")
    test = {"step": tracker.best["step"], **classification_metrics(logits, targets, test_set.multi_label)}
    if env.is_main:
        (out / "test_metrics.json").write_text(json.dumps(test, indent=1) + "\n")
    return test
