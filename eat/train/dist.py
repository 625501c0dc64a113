"""Process-level plumbing: ranks, process group, model wrapping (DDP / FSDP2), cross-rank reductions, signals.

Works the same under ``torchrun`` (one process per device, NCCL on CUDA, Gloo on CPU, multi-node through
torchrun's rendezvous) and as a plain ``python`` process (world size 1, no process group at all).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import logging
import math
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from eat.config import ConfigError

Strategy = Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank, the world size and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_min: float = 30.0) -> DistEnv:
    """Join the process group that torchrun describes in the environment, or run alone.

    ``device``: ``auto`` (CUDA when available), ``cuda`` or ``cpu``. On CUDA the group gets NCCL for device
    tensors and Gloo for CPU tensors (used for the cheap per-step preemption flag).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"train.device: {device!r} is not one of ['auto', 'cuda', 'cpu']")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda, but CUDA is not available here (use train.device=cpu or auto)")
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK={local_rank}, but only {torch.cuda.device_count()} CUDA device(s) are visible")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min), **kwargs)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def configure_cpu_threads(env: DistEnv, threads: int = 0) -> int:
    """Set torch's intra-op thread count for this process; returns the count in use.

    ``threads > 0`` is used as given. ``0`` keeps torch's choice, except for several CPU ranks on one
    machine: torchrun then exports ``OMP_NUM_THREADS=1`` to every worker (one core each, however many the
    machine has), and each rank gets an equal share of the cores this process may use instead
    (``cores // LOCAL_WORLD_SIZE``, when the launcher sets it). An ``OMP_NUM_THREADS`` other than 1 is kept.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    elif (env.device.type == "cpu" and env.distributed and "LOCAL_WORLD_SIZE" in os.environ
          and os.environ.get("OMP_NUM_THREADS", "1") == "1"):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // max(1, int(os.environ["LOCAL_WORLD_SIZE"]))))
    return torch.get_num_threads()


def shutdown(synchronize: bool = False) -> None:
    """Leave the process group (no-op when running alone or when already left).

    ``synchronize=True`` (the normal end of a run) waits for every rank first, so no rank tears down its
    Gloo threads, or rank 0 the rendezvous store, while a peer is still talking to them; a rank that
    exited early that way was seen to abort in C++ ("terminate called without an active exception") after
    its last checkpoint was safely written. After an error the ranks may not all get here: no barrier."""
    if dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The elements of every outermost ``nn.ModuleList`` (transformer/decoder blocks, student and teacher).

    These are the units for per-block FSDP2 sharding and regional ``torch.compile``.
    """
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                found.extend(child)
            else:
                visit(child)

    visit(model)
    return found


def compile_blocks(model: nn.Module) -> int:
    """Compile each repeated block in place (state-dict names unchanged); returns how many.

    Shapes are specialised (``dynamic=False``): the teacher's and the student's blocks share one code
    object with different sequence lengths, and the default would turn the second shape into a dynamic
    graph (tiny preset on CPU: 660 instead of 62 ms per step). Each shape and grad mode gets its own graph.
    """
    blocks = repeated_blocks(model)
    for block in blocks:
        block.compile(dynamic=False)
    return len(blocks)


def wrap_model(model: nn.Module, env: DistEnv, strategy: Strategy = "ddp") -> nn.Module:
    """Put ``model`` on the device and make it data-parallel.

    * ``ddp``: :class:`DistributedDataParallel` (frozen parameters such as an EMA teacher are not reduced).
    * ``fsdp``: FSDP2 ``fully_shard`` on every repeated block, then on the root. The teacher's blocks are
      sharded exactly like the student's, so an element-wise EMA (``torch._foreach_lerp_``) pairs DTensor
      shards of identical placement and runs shard-locally without communication.

    Alone (world size 1) the model is returned unwrapped.
    """
    if any(t.device != env.device for t in (*model.parameters(), *model.buffers())):
        model = model.to(env.device)  # (only when needed: a model built on the device, or of fake tensors, stays)
    if not env.distributed:
        return model
    if strategy == "ddp":
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(env.device.type, (env.world_size,))
        for block in repeated_blocks(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"unknown strategy {strategy!r} (ddp or fsdp)")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place, so it is already the user's)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on non-final micro-steps of gradient accumulation."""
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a (stacked) tensor over ranks in one collective; identity when alone."""
    if env.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank if ``flag`` is true on any rank (a CPU/Gloo collective: no device sync)."""
    if not env.distributed:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class PreemptionFlag:
    """Set by SIGTERM / SIGUSR1 (cluster preemption); the trainer checkpoints at the next step boundary.

    ``install`` / ``uninstall`` nest: the recipe installs the process-wide flag (:func:`preemption_flag`)
    first thing in ``main`` so that a signal during start-up is remembered, and the trainer's own
    install/uninstall around ``fit`` leaves it in place.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._depth = 0
        self._launcher: tuple[int, float] | None = None  # (parent pid, grace seconds) under stop_with_launcher

    def install(self) -> PreemptionFlag:
        if self._depth == 0:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        self._depth += 1
        return self

    def uninstall(self) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]
            self._previous.clear()
            self.signum = None  # handled: the next run in this process starts unsignalled

    def on_launcher_death(self, parent: int, grace_s: float) -> None:
        """A SIGTERM that finds ``parent`` gone is the launcher's death: say so once and arm a hard stop."""
        self._launcher = (parent, grace_s)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        if self._launcher is not None and os.getppid() != self._launcher[0]:
            parent, grace_s = self._launcher
            self._launcher = None
            logging.getLogger("eat.train").warning(
                "the launcher (pid %d) is gone: checkpointing and stopping (hard stop in %.0f s)", parent, grace_s)
            signal.alarm(max(1, math.ceil(grace_s)))

    @property
    def raised(self) -> bool:
        return self.signum is not None


_FLAG = PreemptionFlag()


def preemption_flag() -> PreemptionFlag:
    """The process-wide preemption flag (installed early by the recipes, again by ``Trainer.fit``)."""
    return _FLAG


def install_preemption_handler() -> PreemptionFlag:
    """Remember SIGTERM/SIGUSR1 from now on instead of dying (call first thing in a training ``main``);
    under torchrun also :func:`stop_with_launcher`. Returns the flag."""
    flag = _FLAG.install()
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        stop_with_launcher()
    return flag


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stop_with_launcher(grace_s: float = 300.0) -> bool:
    """Stop this rank when its launcher dies (e.g. torchrun killed with SIGKILL, which cannot forward it).

    The kernel sends this process SIGTERM when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), so the
    run checkpoints at the next step boundary and exits with the preemption status like any preempted run.
    If it is still alive ``grace_s`` later (stuck in a collective whose peer is gone), an alarm ends it
    (SIGALRM's default action); checkpoints are atomic, so that never leaves a half-written one.

    No thread is involved: a rank forks its loader workers, and forking a process that runs other Python
    threads can deadlock the child (a lock held by another thread at the moment of the fork is never
    released in the child; issue 21 caught a worker of a 2-rank run hanging that way). Returns whether the
    death signal is armed (False off Linux, or when the process has no launcher to watch).
    """
    parent = os.getppid()
    if parent <= 1 or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False
    _FLAG.on_launcher_death(parent, grace_s)
    if os.getppid() != parent:  # the launcher died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)
    return True
