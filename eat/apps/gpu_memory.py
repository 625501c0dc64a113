"""Peak training memory per GPU, predicted without a GPU from a fake-tensor run of the real step.

:class:`LiveBytes` is a dispatch mode that adds up the bytes of every tensor storage made under it while the
storage lives, and keeps the peak. :func:`measure_pretrain_step` runs two EAT pretraining steps of the real model
(``EATModel`` forward under bf16 autocast, backward, fused AdamW, EMA) on fake tensors, so nothing is computed
and nothing is allocated, and returns what lives when:

* ``params`` (student + decoder, fp32), ``teacher`` (fp32), ``grads`` (fp32, one per trainable parameter),
  ``optimizer`` (AdamW's two fp32 moments): the static part, from the parameters themselves;
* ``transient``: the peak of the second step above what lived at its start (the first step created the
  optimizer state; ``zero_grad(set_to_none=True)`` freed the gradients): saved activations, the gradients as the
  backward writes them, and every temporary.

The backward has to run on fake CPU tensors (the autograd engine refuses fake CUDA ones, see
:mod:`eat.apps.gpu_dryrun`), so the step runs under CPU bf16 autocast with the CPU flash-attention kernel, which
saves what the CUDA flash kernel saves (the output and the log-sum-exp, not the attention matrix), and with
LayerNorm computed in fp32 as CUDA autocast does it (CPU autocast keeps it in bf16); the other ops of the step
get the same dtypes under both autocasts.
:func:`predict` then adds the parallelism: DDP keeps a second copy of the gradients in its communication
buckets; FSDP2 on ``world`` GPUs shards parameters, teacher, gradients and optimizer state, and holds up to two
blocks unsharded (the one computing and the one prefetched). Not counted: the CUDA context and kernels' workspace
(cuBLAS, cuDNN; ~0.5-1 GiB), the allocator's fragmentation (``fragmentation`` adds a margin), NCCL buffers.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from eat.apps.gpu_dryrun import build_fake, fake_cuda
from eat.model.eat import EATConfig, EATModel
from eat.model.masking import visible_count

GIB = 2**30


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created under this mode that are still alive (``current``) and the most
    that ever were (``peak``; :meth:`reset_peak` starts a new window). Views share their base's storage."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, tuple[int, weakref.ref]] = {}

    def reset_peak(self) -> None:
        self.peak = self.current

    def _free(self, key: int) -> None:
        size, _ = self._live.pop(key, (0, None))
        self.current -= size

    def _track(self, t: Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return
        size = storage.nbytes()
        self._live[key] = (size, weakref.ref(storage, lambda _, k=key: self._free(k)))
        self.current += size
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, Tensor):
                self._track(t)
        return out


@dataclasses.dataclass
class StepMemory:
    """Bytes of one pretraining step on one device (see the module docstring)."""

    batch: int
    clones: int
    params: int
    teacher: int
    grads: int
    optimizer: int
    transient: int
    block: int  # one encoder block's fp32 parameters (what FSDP2 gathers at a time)


def _ids_unchecked(mask: Tensor, num_visible: int) -> tuple[Tensor, Tensor]:
    order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
    return order[:, :num_visible], order[:, num_visible:]


_LAYER_NORM = F.layer_norm


def _layer_norm_as_on_cuda(input: Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """``F.layer_norm`` with CUDA autocast's policy on the CPU: computed and returned in fp32 (CPU autocast would
    return bf16, and the post-LN blocks' outputs, which are saved, would be counted at half their size)."""
    if not torch.is_autocast_enabled("cpu"):
        return _LAYER_NORM(input, normalized_shape, weight, bias, eps)
    with torch.autocast("cpu", enabled=False):
        f = lambda t: None if t is None else t.float()  # noqa: E731
        return _LAYER_NORM(input.float(), normalized_shape, f(weight), f(bias), eps)


def measure_pretrain_step(cfg: EATConfig, batch: int) -> StepMemory:
    """Two fake-tensor pretraining steps of ``cfg`` at ``batch`` clips x ``cfg.clone_batch`` clones."""
    enc = cfg.encoder
    with fake_cuda(), mock.patch("eat.model.eat.mask_to_ids", _ids_unchecked), \
            mock.patch("torch.nn.functional.layer_norm", _layer_norm_as_on_cuda):
        model = build_fake(lambda: EATModel(cfg), "cpu")
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
        grid = model.student.grid(enc.target_length)
        patches = grid[0] * grid[1]
        num_visible = visible_count(patches, cfg.mask_ratio)
        tracker = LiveBytes()
        with tracker:
            source = torch.empty(batch, enc.target_length, enc.num_mel_bins)
            mask = torch.empty(batch * cfg.clone_batch, patches, dtype=torch.bool)
            start = 0
            for step in range(2):
                if step == 1:
                    start = tracker.current
                    tracker.reset_peak()
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cpu", dtype=torch.bfloat16):
                    out = model(source, mask, num_visible=num_visible)
                out["loss"].backward()
                torch.nn.utils.clip_grad_norm_(trainable, 3.0, foreach=True)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                model.update_teacher(0.999)
                del out
        nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
        student_decoder = [p for n, p in model.named_parameters() if not n.startswith("teacher.")]
        moments = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
        return StepMemory(batch, cfg.clone_batch, nbytes(student_decoder), nbytes(model.teacher.parameters()),
                          nbytes(trainable), nbytes(moments), tracker.peak - start,
                          nbytes(model.student.blocks[0].parameters()))


def predict(m: StepMemory, strategy: str = "ddp", world: int = 8, fragmentation: float = 0.05) -> dict[str, Any]:
    """Peak bytes per GPU for ``strategy`` (``single``, ``ddp`` or ``fsdp`` on ``world`` GPUs), by part."""
    parts = {"params": m.params, "teacher": m.teacher, "optimizer": m.optimizer, "transient": m.transient}
    if strategy == "ddp":
        parts["ddp_buckets"] = m.grads
    elif strategy == "fsdp":
        shard = lambda b: -(-b // world)  # noqa: E731
        parts = {"params": shard(m.params), "teacher": shard(m.teacher), "optimizer": shard(m.optimizer),
                 # the unsharded gradients become shards as each block's reduce-scatter finishes
                 "transient": m.transient - m.grads + shard(m.grads),
                 "gathered_blocks": 2 * m.block}
    elif strategy != "single":
        raise ValueError(f"strategy: single, ddp or fsdp, got {strategy!r}")
    total = sum(parts.values())
    return {"strategy": strategy, "world": world if strategy != "single" else 1, "batch": m.batch, "clones": m.clones,
            "parts_gib": {k: v / GIB for k, v in parts.items()}, "fragmentation": fragmentation,
            "total_gib": total * (1 + fragmentation) / GIB}


def largest_batch(small: StepMemory, large: StepMemory, budget_gib: float = 80.0, **kwargs: Any) -> int:
    """The largest batch whose predicted peak fits ``budget_gib``, from two measurements: the transient part
    grows linearly with the batch (activations and temporaries scale with clips x clones)."""
    a, b = predict(small, **kwargs)["total_gib"], predict(large, **kwargs)["total_gib"]
    per_clip = (b - a) / (large.batch - small.batch)
    fixed = a - per_clip * small.batch
    return max(0, int((budget_gib - fixed) // per_clip))
