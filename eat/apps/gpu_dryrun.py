"""CUDA dry run without a GPU: training and inference steps on fake CUDA tensors.

With the CUDA build of torch, :class:`~torch._subclasses.fake_tensor.FakeTensorMode` makes tensors that claim a
device (``cuda:0``), a shape and a dtype but hold no data. Real operators propagate those three through every op,
so a step run on them fails exactly where a first GPU run would fail:

* an op that mixes ``cpu`` and ``cuda`` tensors (a tensor made without ``device=`` in a forward) raises
  ``Unhandled FakeTensor Device Propagation``; a 0-dim CPU tensor mixes with CUDA ones, as on a real GPU;
* every data-dependent op (``.item()``, ``.tolist()``, ``bool(t)``, ``nonzero``, a shape read from values)
  raises ``DataDependentOutputException`` / ``DynamicOutputShapeException``: each is a host sync on a GPU; so
  does a blocking copy to the host (``.cpu()``), checked by :class:`SameDtypeCheck`;
* a dtype mismatch raises as the CUDA kernel would (e.g. a bf16 activation meeting an fp32 tensor in an op that
  needs one dtype): the fake kernels of matrix products do not check it, :class:`SameDtypeCheck` does.

The region uses ``allow_non_fake_inputs=False``: a real tensor reaching an op inside it (e.g. a cached constant
made earlier) raises too. What torch cannot do without a device, and how this module bridges it:

* **Autocast.** ``torch.autocast("cuda")`` switches itself off when no CUDA device is found; inside
  :func:`fake_cuda` it is told CUDA and bf16 are available, so the bf16 autocast of a real run applies.
* **Device generators.** ``torch.Generator(device="cuda")`` needs a driver. Inside the region it makes a CPU
  generator that reports ``device == cuda:0``, so code that draws on its generator's device takes the GPU path
  (fake tensors ignore which generator draws their values).
* **Backward.** The autograd engine refuses fake CUDA tensors (it asks the driver for a context). Two halves
  cover a step: (1) on fake CUDA, :func:`fake_backward` replaces ``Tensor.backward`` by giving every parameter
  the loss reaches (the ``AccumulateGrad`` leaves of its graph, exactly the set a real backward writes) a fake
  gradient of the parameter's shape, dtype and device, so clipping, the fused AdamW kernel (with its
  ``found_inf`` input) and the EMA run on fake CUDA; (2) the backward itself runs on fake **CPU** tensors under
  bf16 CPU autocast (:func:`cpu_backward`), which checks the backward's dtypes and host syncs (device mixing is
  not checked there: every tensor is on the CPU).
* **Device queries** (``torch.cuda.get_device_name``) answer :data:`FAKE_DEVICE_NAME` (no MFU peak is known for it).
* **Pinned memory** needs a driver; host batches are not pinned in the dry run (the copy is the same op).
* **Attention kernels.** Pinning flash or cuDNN attention asks the device what it supports: the dry run uses
  ``sdpa_backend=auto`` (which the fake dispatch resolves without a device).

**Host decisions are made outside the fake region, by design.** The step reads no device values on the host.
Two decisions are host-side by design and are not run in the region: EAT's visible-token count, which on an
accelerator comes from the config (:meth:`eat.model.eat.EATModel.forward`; on CPU the mask is counted, free), and
fine-tuning's augmentation seed, which :class:`eat.train.finetune.BatchPrep` computes from the loader's host
``index`` tensor (free: no device involved; inside the region every tensor is fake, so the dry-run batch carries
no ``index``). Host tensors of a loader batch (masks, targets) enter the region as fake CPU tensors and are
copied to the device there, as in a run. Feature extraction plans its windows from the clips' lengths on the
host (:func:`extraction_step` makes that plan from the shapes, outside the region).

Models are built on the ``meta`` device and converted (:func:`fake_module`): deep copies of fake tensors (the
EMA teacher) would need a second fake mode. Caches of device constants (the fbank's windows and mel matrices) are
cleared on entry and exit so no fake tensor outlives the region.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from eat.audio.augment import AugmentConfig
from eat.audio.fbank import FrontendConfig, clear_caches, num_frames, waveform_to_input
from eat.data.batch import model_input
from eat.data.datasets import wave_length
from eat.features import FeatureExtractor
from eat.model.classifier import Classifier, PatchoutConfig, classifier_config
from eat.model.eat import EATModel, eat_config
from eat.model.masking import visible_count
from eat.model.pooling import pool_tokens
from eat.model.vit import Encoder
from eat.train.dist import DistEnv
from eat.train.finetune import BatchPrep, FinetuneModel, LossSection
from eat.train.layer_decay import finetune_param_groups
from eat.train.optim import OptimConfig, param_groups
from eat.train.pretrain import DataConfig, PretrainBatchPrep, accumulation_aware, frontend_for
from eat.train.trainer import TrainConfig, Trainer

_REAL_GENERATOR = torch.Generator
FAKE_DEVICE_NAME = "fake CUDA device (eat.apps.gpu_dryrun)"  # what torch.cuda.get_device_name says in the region


class _DryRunGenerator(_REAL_GENERATOR):
    """``torch.Generator`` inside :func:`fake_cuda`: a CPU generator that reports the device it was made for."""

    def __new__(cls, device: torch.device | str | int | None = None) -> _DryRunGenerator:
        gen = super().__new__(cls)
        gen._claimed = None if device is None else torch.device(device)
        if gen._claimed is not None and gen._claimed.type == "cuda" and gen._claimed.index is None:
            gen._claimed = torch.device("cuda", 0)
        return gen

    def __init__(self, device: torch.device | str | int | None = None) -> None:
        super().__init__()

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self._claimed if self._claimed is not None else super().device


def _register_missing_fakes() -> None:
    """Shape functions torch 2.11 lacks for ops our steps use on the device (without one, fake mode would try
    the real kernel on a real CUDA tensor): ``aten::_standard_gamma`` (the Beta draws of mixup)."""
    global _MISSING_FAKES
    if _MISSING_FAKES is not None:
        return
    lib = torch.library.Library("aten", "IMPL")
    try:
        lib.impl("_standard_gamma", lambda self, generator=None: torch.empty_like(self), "Meta")
    except RuntimeError:  # a later torch registers its own
        pass
    _MISSING_FAKES = lib


_MISSING_FAKES: torch.library.Library | None = None


_aten = torch.ops.aten
# Ops whose kernels need one floating dtype for their tensor inputs (no type promotion): matrix products,
# convolutions, attention, and the ops that write one tensor's values into another. torch's fake/meta kernels of
# several of them (mm, bmm, ...) do not check it; the real CUDA kernels raise.
SAME_DTYPE_OPS = {
    _aten.mm, _aten.bmm, _aten.addmm, _aten.addbmm, _aten.baddbmm, _aten.addmv, _aten.mv, _aten.dot,
    _aten.convolution, _aten._convolution, _aten.scatter, _aten.scatter_, _aten.scatter_add, _aten.scatter_add_,
    _aten.index_put, _aten.index_put_, _aten._index_put_impl_, _aten.index_copy, _aten.index_copy_,
    _aten.index_add, _aten.index_add_, _aten.masked_scatter, _aten.masked_scatter_, _aten.lerp, _aten.lerp_,
    _aten._scaled_dot_product_flash_attention, _aten._scaled_dot_product_efficient_attention,
    _aten._scaled_dot_product_cudnn_attention, _aten._scaled_dot_product_flash_attention_for_cpu,
}


class SameDtypeCheck(TorchDispatchMode):
    """Two checks fake kernels do not make. (1) Raise, as the CUDA kernel would, when an op of
    :data:`SAME_DTYPE_OPS` gets floating tensors of different dtypes (e.g. a bf16 activation and an fp32 buffer in
    a matrix product outside autocast). (2) Raise on a blocking device-to-host copy (``.cpu()``, ``.to("cpu")``,
    ``cpu_tensor.copy_(cuda_tensor)``): on a GPU it waits for every queued kernel, a host sync even when the
    copied values are never read (``non_blocking=True`` copies pass)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet is _aten._to_copy and not kwargs.get("non_blocking", False):
            source, target = args[0].device, kwargs.get("device")
            if source.type != "cpu" and target is not None and torch.device(target).type == "cpu":
                raise RuntimeError(f"{func}: a blocking copy {source} -> cpu waits for the GPU (a host sync)")
        if packet is _aten.copy_ and not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False)):
            if args[0].device.type == "cpu" and args[1].device.type != "cpu":
                raise RuntimeError(f"{func}: a blocking copy {args[1].device} -> cpu waits for the GPU (a host sync)")
        if packet in SAME_DTYPE_OPS:
            dtypes = {t.dtype for t in pytree.tree_leaves((args, kwargs))
                      if isinstance(t, Tensor) and t.is_floating_point()}
            if len(dtypes) > 1:
                names = " != ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
                raise RuntimeError(f"{func}: expected all floating inputs to have the same dtype, got {names}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_cuda() -> Iterator[FakeTensorMode]:
    """The fake-tensor region (see the module docstring); yields the mode for :func:`fake_module`."""
    _register_missing_fakes()
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    clear_caches()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch("torch.cuda.amp.common.amp_definitely_not_available", return_value=False))
            stack.enter_context(mock.patch("torch.cuda.is_bf16_supported", return_value=True))
            stack.enter_context(mock.patch("torch.Generator", _DryRunGenerator))
            stack.enter_context(mock.patch("torch.cuda.get_device_name", return_value=FAKE_DEVICE_NAME))
            stack.enter_context(mode)
            stack.enter_context(SameDtypeCheck())
            yield mode
    finally:
        clear_caches()


def fake_module(module: nn.Module, device: torch.device | str) -> nn.Module:
    """Give every parameter and buffer of ``module`` (built on ``meta``) a fake tensor on ``device``, in place.

    Call inside :func:`fake_cuda`. Shapes, dtypes and ``requires_grad`` are kept; values do not exist."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                                     requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)
    return module


def build_fake(factory: Callable[[], nn.Module], device: torch.device | str) -> nn.Module:
    """``factory()`` built on ``meta`` (cheap at any size; outside the fake mode, which would turn the meta
    tensors into fake ones mid-build) and made of fake tensors on ``device``. Call inside :func:`fake_cuda`."""
    with unset_fake_temporarily(), torch.device("meta"):
        module = factory()
    return fake_module(module, device)


def autograd_leaves(t: Tensor) -> list[Tensor]:
    """The leaf tensors a backward from ``t`` writes ``.grad`` to (its graph's ``AccumulateGrad`` nodes)."""
    leaves, seen, todo, alive = [], set(), [t.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        alive.append(node)  # the Python wrappers of graph nodes are made on access: keep ids from being reused
        seen.add(id(node))
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        todo.extend(n for n, _ in node.next_functions)
    return leaves


@contextlib.contextmanager
def fake_backward() -> Iterator[list[Tensor]]:
    """``Tensor.backward`` on fake CUDA tensors: every leaf the loss reaches gets a gradient like its own
    (added to an existing one, as a backward accumulates), without running the autograd engine. Yields the
    list of leaves given gradients so far."""
    written: list[Tensor] = []

    def backward(self: Tensor, gradient: Tensor | None = None, retain_graph: bool | None = None,
                 create_graph: bool = False, inputs: Any = None) -> None:
        if self.grad_fn is None:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
        if gradient is None and self.numel() != 1:
            raise RuntimeError("grad can be implicitly created only for scalar outputs")
        for leaf in autograd_leaves(self):
            written.append(leaf)
            grad = torch.zeros_like(leaf)
            leaf.grad = grad if leaf.grad is None else leaf.grad + grad

    with mock.patch.object(Tensor, "backward", backward):
        yield written


def is_fake(t: Any) -> bool:
    return isinstance(t, FakeTensor)


def fake_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """A loader batch made inside the region: each real host tensor replaced by a fake CPU tensor of the same
    shape and dtype (the values are gone; the dry run needs none)."""
    return {k: torch.empty(v.shape, dtype=v.dtype) if isinstance(v, Tensor) else v for k, v in batch.items()}


def summary(values: dict[str, Any]) -> dict[str, str]:
    """``{name: "dtype device shape"}`` of the tensors in ``values`` (what a dry run reports)."""
    return {k: f"{str(v.dtype).removeprefix('torch.')} {v.device} {tuple(v.shape)}"
            for k, v in values.items() if isinstance(v, Tensor)}


# ---------------------------------------------------------------------------------------- steps


@dataclasses.dataclass
class PretrainDryRun:
    """What one pretraining step on fake CUDA saw."""

    outputs: dict[str, str]  # the step's returned values: dtype, device, shape
    linear_dtype: str  # dtype of the student's first MLP Linear output (bfloat16 under the run's autocast)
    grads: int  # parameters that received a gradient
    optimizer: str  # "fused" when the fused AdamW kernel ran


def pretrain_step(preset: str = "tiny", batch_size: int = 2, fbank_on_device: bool = True,
                  device_mask: bool = False, overrides: dict[str, Any] | None = None,
                  grad_accum: int = 1) -> PretrainDryRun:
    """One :meth:`eat.train.trainer.Trainer.train_step` of EAT pretraining on fake CUDA, as a run would do it:
    the recipe's batch preparation (waveforms -> the batched fbank on the device, or a spectrogram batch), the
    loader's host mask copied to the device (``device_mask=False``) or masks made on the device, bf16 autocast,
    the loss, gradients (:func:`fake_backward`), clipping, fused AdamW with ``found_inf``, the EMA hook;
    ``grad_accum`` micro-batches per update (the recipe's ``accumulation_aware`` loss weighting included)."""

    cfg = accumulation_aware(dataclasses.replace(eat_config(preset), **(overrides or {})), grad_accum)
    frontend = frontend_for(DataConfig(), cfg)
    device = torch.device("cuda", 0)
    seen: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="eat-dryrun-") as tmp, fake_cuda(), fake_backward() as grads:
        model = build_fake(lambda: EATModel(cfg), device)
        grid = model.student.grid(frontend.target_length)
        model.student.blocks[0].mlp.fc1.register_forward_hook(lambda m, a, out: seen.update(linear=str(out.dtype)))
        prep = PretrainBatchPrep(frontend)
        if device_mask:  # the model makes its masks on the device
            def prepare(batch: dict[str, Any], dev: torch.device) -> tuple[dict[str, Any], dict[str, float]]:
                source = model_input(batch, frontend, dev)
                return {"source": source}, {"clips": source.shape[0]}
        else:
            prepare = prep
        env = DistEnv(rank=0, world_size=1, local_rank=0, device=device)
        train = TrainConfig(out_dir=tmp, max_steps=10, device="cuda", precision="bf16", resume="none",
                            tensorboard=False, check_weights=False, log_every=10**6, save_every=0,
                            grad_accum=grad_accum)
        optim = OptimConfig()
        trainer = Trainer(model, _NoData(), train, optim, env,
                          lambda m: param_groups(m, optim.weight_decay, optim.decay_all, model.no_weight_decay()),
                          prepare=prepare)
        batch: dict[str, Any] = {"num_skipped": 0}
        if fbank_on_device:
            batch["wave"] = torch.empty(batch_size, wave_length(frontend))
            batch["length"] = torch.empty(batch_size, dtype=torch.long)
        else:
            batch["source"] = torch.empty(batch_size, frontend.target_length, frontend.num_mel_bins)
        if not device_mask:  # the loader's masks: made on the host by the workers
            batch["mask"] = torch.empty(batch_size * cfg.clone_batch, grid[0] * grid[1], dtype=torch.bool)
            if cfg.mix:  # and the mixed patch rows of mixture pretraining (SSLAM stage 2)
                batch["mix_rows"] = torch.empty(batch_size, grid[0], dtype=torch.bool)
        values = trainer.train_step(*[batch] * grad_accum)
        fused = "fused" if trainer.optimizer.defaults.get("fused") else "not fused"
        out = summary(values)
    return PretrainDryRun(out, seen.get("linear", "?").removeprefix("torch."), len(grads), fused)


class _NoData:
    """A TrainData with no batches (the dry run hands batches to ``train_step`` itself)."""

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def pretrain_backward(preset: str = "tiny", batch_size: int = 2) -> dict[str, str]:
    """The EAT pretraining forward and the real backward on fake **CPU** tensors under bf16 CPU autocast (the
    autograd engine refuses fake CUDA, see the module docstring). The host decision, the visible-token count,
    is made outside the region from the config, as the GPU step does. Returns the dtype of each gradient kind."""

    def ids_unchecked(mask: Tensor, num_visible: int) -> tuple[Tensor, Tensor]:
        # mask_to_ids without its CPU-only exact row check (a host read, free on CPU, a DataDependent error on
        # fake CPU); the real function runs on fake CUDA in pretrain_step
        order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
        return order[:, :num_visible], order[:, num_visible:]

    cfg = eat_config(preset)
    with fake_cuda(), mock.patch("eat.model.eat.mask_to_ids", ids_unchecked):
        model = build_fake(lambda: EATModel(cfg), "cpu")
        grid = model.student.grid(cfg.encoder.target_length)
        num_visible = visible_count(grid[0] * grid[1], cfg.mask_ratio)
        source = torch.empty(batch_size, cfg.encoder.target_length, cfg.encoder.num_mel_bins)
        mask = torch.empty(batch_size * cfg.clone_batch, grid[0] * grid[1], dtype=torch.bool)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(source, mask, num_visible=num_visible)
        out["loss"].backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        found = {f"{n.split('.')[0]}:{str(g.dtype).removeprefix('torch.')}" for n, g in grads.items()}
        return {"parameters_with_grad": str(len(grads)), "kinds": ", ".join(sorted(found))}


HEADS = ("cls", "mean", "cls_dist", "pooled")


@dataclasses.dataclass
class FinetuneDryRun:
    head: str
    outputs: dict[str, str]
    linear_dtype: str
    grads: int


RECIPES = ("eat", "passt", "spc2", "plain")


def finetune_step(head: str = "cls", batch_size: int = 4, num_classes: int = 5, multi_label: bool = False,
                  patchout: bool = True, recipe: str = "eat") -> FinetuneDryRun:
    """One fine-tuning :meth:`~eat.train.trainer.Trainer.train_step` on fake CUDA with EAT's training recipe on
    the device: waveforms -> waveform mixup -> the batched fbank -> spectrogram mixup (not with ``pooled``, which
    refuses it) -> SpecAugment -> the classifier (tiny encoder, ``head``, patchout) -> the loss, then gradients,
    fused AdamW with layer-wise LR decay. The batch has no ``index``: the augmentation seed is a host decision
    made from the loader's host indices (:func:`eat.train.finetune.batch_seed_of`), outside the step.

    ``recipe``: ``eat`` (waveform mixup Beta(10, 10) p 0.5 + spectrogram mixup Beta(0.8, 0.8) p 0.8 per batch,
    SpecAugment); ``passt`` (per-example, dominant mixup at both levels, per-example patchout); ``spc2`` (BCE on
    one-hot targets, SpecAugment, the SPC-2 noise and roll); ``plain`` (no augmentation, hard labels,
    cross-entropy with label smoothing)."""

    if head not in HEADS or recipe not in RECIPES:
        raise ValueError(f"head: one of {', '.join(HEADS)}; recipe: one of {', '.join(RECIPES)}")
    cut = PatchoutConfig(s_t=3, s_f=0 if head == "pooled" else 1, u=0 if head == "pooled" else 5,
                         per_example=recipe == "passt") if patchout else PatchoutConfig()
    extra = {"pooled": dict(layers="all", pooling="band-meanstd")}.get(head, {})
    cfg = classifier_config("tiny", num_classes, 256, patchout=cut, **extra)
    encoder = cfg.encoder
    if head == "cls_dist":  # AST/PaSST: two extra tokens, separate time/frequency tables (random time window)
        encoder = dataclasses.replace(encoder, num_extra_tokens=2, extra_token_pos=True, pos_embed="learned_separate",
                                      max_time_patches=24, layer_norm_first=True, pre_norm=False, final_norm=True)
    cfg = dataclasses.replace(cfg, encoder=encoder, prediction_mode=head)
    frontend = FrontendConfig(target_length=256)
    spec_mixup = 0.0 if head == "pooled" else 0.8  # the pooled head refuses spectrogram mixup
    aug = {"eat": AugmentConfig(wave_mixup_prob=0.5, wave_mixup_alpha=10.0, spec_mixup_prob=spec_mixup,
                                spec_mixup_alpha=0.8, freq_mask=25.0, time_mask=50.0),
           "passt": AugmentConfig(wave_mixup_prob=1.0, wave_mixup_alpha=2.0, spec_mixup_prob=spec_mixup,
                                  spec_mixup_alpha=0.3, mixup_per_example=True, mixup_dominant=True),
           "spc2": AugmentConfig(freq_mask=25.0, time_mask=20.0, spc2_noise=True),
           "plain": AugmentConfig()}[recipe]
    loss = LossSection(kind="bce") if recipe == "spc2" else LossSection(label_smoothing=0.1 if recipe == "plain" else 0.0)
    soft = multi_label or recipe != "plain"
    device = torch.device("cuda", 0)
    seen: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="eat-dryrun-") as tmp, fake_cuda(), fake_backward() as grads:
        classifier = build_fake(lambda: Classifier(cfg), device)
        classifier.encoder.blocks[0].mlp.fc1.register_forward_hook(lambda m, a, out: seen.update(linear=str(out.dtype)))
        model = FinetuneModel(classifier, aug, loss, multi_label, seed=1)
        prep = BatchPrep(frontend, aug, num_classes, soft_targets=soft, seed=1,
                         classifier=classifier if head == "pooled" else None)
        env = DistEnv(rank=0, world_size=1, local_rank=0, device=device)
        train = TrainConfig(out_dir=tmp, max_steps=10, device="cuda", precision="bf16", resume="none",
                            tensorboard=False, check_weights=False, log_every=10**6, save_every=0)
        optim = OptimConfig(lr=5e-5, clip_grad=0.0)
        groups = lambda m: finetune_param_groups(m, weight_decay=0.05, layer_decay=0.65,  # noqa: E731
                                                 depth=cfg.encoder.depth)
        trainer = Trainer(model, _NoData(), train, optim, env, groups, prepare=prep)
        batch = {"wave": torch.empty(batch_size, wave_length(frontend)),
                 "length": torch.empty(batch_size, dtype=torch.long), "num_skipped": 0,
                 "target": torch.empty(batch_size, num_classes) if multi_label
                 else torch.empty(batch_size, dtype=torch.long)}
        values = trainer.train_step(batch)
        out = summary(values)
    return FinetuneDryRun(head, out, seen.get("linear", "?").removeprefix("torch."), len(grads))


def extraction_step(batch_size: int = 3, seconds: float = 2.0, layers: tuple[int, ...] = (0, -1),
                    poolings: tuple[str, ...] = ("mean", "band-meanstd")) -> dict[str, str]:
    """The device part of feature extraction (:class:`eat.features.FeatureExtractor`), HEAR
    (:mod:`eat.hear`) and the linear probe's feature path (:func:`eat.eval.protocol.encoder_embeddings`) on
    fake CUDA under bf16 autocast: a padded waveform batch with per-clip lengths -> the batched fbank -> padding
    frames set to the silence value -> the encoder with a patch padding mask, several blocks -> utterance
    embeddings (CLS, and the mean over valid patches) and the probe's token poolings. The host-side plan of an
    extraction (input checks, clip lengths -> windows) reads values by design and is made outside the region
    here from the shapes (clips of one length, as HEAR passes them)."""
    import dataclasses as dc


    enc_cfg = eat_config("tiny").encoder
    frontend = FrontendConfig(target_length=enc_cfg.target_length)
    samples = int(seconds * frontend.sample_rate)
    frames = int(num_frames(samples, frontend.sample_rate, frontend.frame_length_ms, frontend.frame_shift_ms))
    device = torch.device("cuda", 0)
    out: dict[str, Tensor] = {}
    with fake_cuda():
        encoder = build_fake(lambda: Encoder(enc_cfg), device)
        extractor = FeatureExtractor(encoder, frontend)
        blocks = extractor.layer_indices(list(layers))
        patch, stride = enc_cfg.patch_size, enc_cfg.patch_stride[0]
        cols = (max(frames - patch, 0) + stride - 1) // stride + 1  # host plan, from the shape
        width = int(extractor.frames_for_columns(cols))
        waves = torch.empty(batch_size, samples).to(device)
        lengths = torch.empty(batch_size, dtype=torch.long).to(device)
        fb = waveform_to_input(waves, dc.replace(frontend, target_length=frames, crop="head"), lengths)
        valid_frames = num_frames(lengths, frontend.sample_rate, frontend.frame_length_ms, frontend.frame_shift_ms)
        fb = extractor._pad_frames(fb, valid_frames, width)
        col_pad = torch.arange(cols, device=device) >= extractor.columns_for_frames(valid_frames)[:, None]
        mask = col_pad.repeat_interleave(encoder.num_freq_patches, dim=1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            tokens = extractor._encode(fb, mask, blocks)
        extra = enc_cfg.num_extra_tokens
        out["cls"] = tokens[-1][:, 0].float()
        for block, t in zip(blocks, tokens, strict=True):
            for pooling in poolings:
                out[f"block{block}_{pooling}"] = pool_tokens(t[:, extra:].float(), mask, pooling,
                                                             encoder.num_freq_patches)
        out["frames"] = tokens[-1][:, extra:].reshape(batch_size, cols, encoder.num_freq_patches, -1).mean(2)
        return summary(out)
