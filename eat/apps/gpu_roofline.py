"""Step time predicted without a GPU: a per-operator roofline over the real step's operators.

:class:`OpRecorder` is a dispatch mode that sees every ATen operator a training step runs (fake tensors: no compute)
and records, per operator, its FLOPs (the formulas of ``torch.utils.flop_counter``: matrix products,
convolutions, attention) and the bytes it moves (every input and output tensor read or written once; views and
allocations move nothing). :func:`predict` puts each operator at its roofline on a GPU,

    time(op) = max(FLOPs / peak, bytes / bandwidth) + launch,

with the tensor-core peak for half-precision products and the plain fp32 peak for fp32 ones, and sums over the step:
predicted step time, clips/s, and the MFU bound that time implies for the model FLOPs of :mod:`eat.train.flops`.

What it assumes, and so how far to trust it: every kernel reaches the roofline of its own op (real GEMMs of
EAT-base's shapes reach ~60-80 % of peak on Hopper, element-wise kernels ~70-90 % of bandwidth), nothing overlaps,
every op is one eager kernel (compilation fuses element-wise chains, which this over-charges), each kernel costs
``launch`` seconds of fixed overhead, and the data loader keeps up. It is a bound-style estimate: real steps are
slower by the kernels' efficiency; :func:`calibrate` states the factor against the one measured anchor, the official
~23 clips/s per RTX 3090.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any
from unittest import mock

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from eat.apps.gpu_dryrun import build_fake, fake_cuda
from eat.apps.gpu_memory import _ids_unchecked, _layer_norm_as_on_cuda
from eat.model.eat import EATConfig, EATModel
from eat.model.masking import visible_count
from eat.train.flops import pretrain_flops_per_clip

_aten = torch.ops.aten
_FREE = {_aten.empty, _aten.empty_like, _aten.empty_strided, _aten.detach, _aten.lift_fresh, _aten.alias,
         _aten._local_scalar_dense, _aten._unsafe_view, _aten._reshape_alias}
_CPU_FLASH = _aten._scaled_dot_product_flash_attention_for_cpu
_CPU_FLASH_BWD = _aten._scaled_dot_product_flash_attention_for_cpu_backward


@dataclasses.dataclass(frozen=True)
class GPU:
    """Published dense peaks: half-precision tensor-core FLOP/s (fp32 accumulate), plain fp32 FLOP/s and memory
    bandwidth in bytes/s."""

    name: str
    half_flops: float
    fp32_flops: float
    bandwidth: float


GPUS = {
    "h100": GPU("H100 SXM (bf16 989 TFLOP/s, fp32 67, HBM3 3.35 TB/s)", 989e12, 67e12, 3.35e12),
    "h200": GPU("H200 SXM (bf16 989 TFLOP/s, fp32 67, HBM3e 4.8 TB/s)", 989e12, 67e12, 4.8e12),
    # GA102 whitepaper: fp16 tensor 142 TFLOP/s with fp16 accumulate, 71 with fp32 accumulate (what AMP uses)
    "3090": GPU("RTX 3090 (fp16 tensor 71 TFLOP/s fp32-acc, fp32 35.6, GDDR6X 936 GB/s)", 71e12, 35.6e12, 936e9),
}


@dataclasses.dataclass
class Op:
    name: str
    flops: float
    bytes: float
    half: bool  # a product in bf16/fp16 (tensor cores)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class OpRecorder(TorchDispatchMode):
    """Records an :class:`Op` for every operator dispatched under it (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[Op] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, Tensor)]
        if packet in _FREE or func.is_view or not outs:  # views, allocations, metadata queries
            return out
        ins = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        in_ids = {id(t) for t in ins}
        moved = sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs if id(t) not in in_ids)
        flops = 0.0
        if packet is _CPU_FLASH:
            flops = sdpa_flop_count(args[0].shape, args[1].shape, args[2].shape)
        elif packet is _CPU_FLASH_BWD:  # (grad_out, query, key, value, ...)
            flops = sdpa_backward_flop_count(args[0].shape, args[1].shape, args[2].shape, args[3].shape)
        elif packet is _aten.convolution_backward:
            # each requested gradient (input, weight) costs one forward; torch 2.11's formula ignores groups
            grad_out, weight, mask = args[0], args[2], args[-1]
            flops = 2.0 * grad_out.numel() * weight[0].numel() * (int(mask[0]) + int(mask[1]))
        elif packet in flop_registry:
            flops = flop_registry[packet](*args, **kwargs, out_val=out)
        half = any(t.dtype in (torch.bfloat16, torch.float16) for t in ins)
        self.ops.append(Op(str(packet), float(flops), float(moved), half))
        return out


@dataclasses.dataclass
class StepOps:
    """The operators of one pretraining step (the second of two, so the optimizer state exists)."""

    preset: str
    batch: int
    clones: int
    style: str  # "ours" or "official"
    ops: list[Op]
    model_flops: float  # eat.train.flops per clip x batch


def record_pretrain_step(cfg: EATConfig, batch: int, preset: str = "", official: bool = False) -> StepOps:
    """The operators of one EAT pretraining step at ``batch`` clips, ours or the official configuration's.

    Ours: bf16 autocast, flash attention, fused AdamW, foreach EMA. Official (fairseq): fp16, attention as
    explicit products and softmax (the math kernel), the per-parameter AdamW loop and a per-parameter EMA loop.
    """
    enc = cfg.encoder
    half = torch.float16 if official else torch.bfloat16
    attention = SDPBackend.MATH if official else SDPBackend.FLASH_ATTENTION
    with fake_cuda(), mock.patch("eat.model.eat.mask_to_ids", _ids_unchecked), \
            mock.patch("torch.nn.functional.layer_norm", _layer_norm_as_on_cuda):
        model = build_fake(lambda: EATModel(cfg), "cpu")
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=not official, foreach=False if official else None)
        grid = model.student.grid(enc.target_length)
        patches = grid[0] * grid[1]
        source = torch.empty(batch, enc.target_length, enc.num_mel_bins)
        mask = torch.empty(batch * cfg.clone_batch, patches, dtype=torch.bool)
        recorder = OpRecorder()
        for step in range(2):
            with recorder if step == 1 else _Nothing():
                with sdpa_kernel([attention]), torch.autocast("cpu", dtype=half):
                    out = model(source, mask, num_visible=visible_count(patches, cfg.mask_ratio))
                out["loss"].backward()
                torch.nn.utils.clip_grad_norm_(trainable, 3.0, foreach=not official)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if official:
                    with torch.no_grad():
                        for t, s in zip(model.teacher.parameters(), model.student.parameters(), strict=True):
                            t.mul_(0.999).add_(s, alpha=0.001) if s.requires_grad else t.copy_(s)
                else:
                    model.update_teacher(0.999)
    return StepOps(preset, batch, cfg.clone_batch, "official" if official else "ours", recorder.ops,
                   pretrain_flops_per_clip(cfg) * batch)


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def predict(step: StepOps, gpu: GPU, launch_s: float = 4e-6) -> dict[str, Any]:
    """Roofline time of ``step`` on ``gpu``: per-op ``max(compute, memory) + launch`` summed; clips/s and the MFU
    bound (model FLOPs / (time x half-precision peak)); the time split by bound and by operator kind."""
    total = compute_bound = memory_bound = 0.0
    by_kind: dict[str, float] = defaultdict(float)
    for op in step.ops:
        compute = op.flops / (gpu.half_flops if op.half else gpu.fp32_flops)
        memory = op.bytes / gpu.bandwidth
        t = max(compute, memory)
        total += t + launch_s
        if compute >= memory:
            compute_bound += t
        else:
            memory_bound += t
        by_kind[op.name.removeprefix("aten.")] += t
    launches = len(step.ops) * launch_s
    top = dict(sorted(by_kind.items(), key=lambda kv: -kv[1])[:6])
    return {"gpu": gpu.name, "preset": step.preset, "style": step.style, "batch": step.batch, "clones": step.clones,
            "kernels": len(step.ops), "step_ms": 1e3 * total, "compute_bound_ms": 1e3 * compute_bound,
            "memory_bound_ms": 1e3 * memory_bound, "launch_ms": 1e3 * launches,
            "clips_per_s": step.batch / total, "mfu_bound": step.model_flops / (total * gpu.half_flops),
            "step_flops": sum(op.flops for op in step.ops), "step_bytes": sum(op.bytes for op in step.ops),
            "top_ops_ms": {k: 1e3 * v for k, v in top.items()}}


def calibrate(predicted_clips_per_s: float, measured_clips_per_s: float = 23.0) -> float:
    """Measured / predicted: the fraction of the roofline a real run reached (official EAT: ~23 clips/s per
    RTX 3090, /work/shared/reference/anchors.md A1)."""
    return measured_clips_per_s / predicted_clips_per_s
