"""Samplers that resume mid-epoch, the collate function, and the loader that enforces the bad-file policy.

The samplers yield ``(index, epoch)`` keys (see :mod:`eat.data.datasets`): the epoch travels with every
index to the loader workers, where it seeds the item's randomness, so persistent workers need no
``set_epoch`` of their own. Every rank computes the same epoch order from ``(seed, epoch)`` and takes
every ``num_replicas``-th element from position ``rank``, like ``torch.utils.data.DistributedSampler``.

Resuming: :class:`SkippingLoader` tells the sampler how many keys each delivered batch used
(``advance``), so ``state_dict()`` is the position of the *training loop*, not of the prefetching
workers; ``load_state_dict`` then makes the next iteration yield exactly the rest of that epoch.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import warnings
from collections.abc import Iterator, Sequence
from multiprocessing import forkserver, resource_tracker
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from eat.config import ConfigError
from eat.data.batch import Batch
from eat.data.datasets import Skipped
from eat.data.manifest import LabelledItem

log = logging.getLogger(__name__)


DEFAULT_MAX_BAD_CLIPS = 10
AUTO_WORKERS_MAX = 8  # "auto" loader workers never exceed this (what the official recipes use per GPU)
_said: set[str] = set()


def available_cores() -> int:
    """CPU cores this process may run on (``os.sched_getaffinity``: a job scheduler's or taskset's share,
    not the machine's ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def resolve_workers(requested: int | str, key: str = "data.num_workers", ceiling: int = AUTO_WORKERS_MAX) -> int:
    """Loader worker processes for a ``num_workers`` setting.

    ``"auto"`` (the recipes' setting): one per core this process may use (:func:`available_cores`, divided
    among the ranks of this machine, ``LOCAL_WORLD_SIZE``), at most ``ceiling``; said once, in one line. A
    number is the user's choice and is kept; when it is more than the cores, one line says so (PyTorch's
    own "suggested max number of worker" warning is not shown, see :func:`quiet_dataloader`).
    """
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    cores = max(1, available_cores() // ranks)
    share = f"{available_cores()} CPU core(s) for {ranks} process(es) here" if ranks > 1 else \
        f"{cores} CPU core(s) available to this process"
    if requested == "auto":
        n = min(ceiling, cores)
        _say_once(logging.INFO, f"{key}=auto: {n} loader worker process(es) ({share})")
        return n
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ConfigError(f"{key}: expected a whole number >= 0 or auto, got {requested!r}")
    if requested > cores:
        _say_once(logging.WARNING, f"note: {key}={requested} loader worker processes, more than the {share}; "
                                   f"kept as set ({key}=auto sizes it to the machine)")
    return requested


def _say_once(level: int, message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.log(level, message)


def quiet_dataloader(*args: Any, **kwargs: Any) -> DataLoader:
    """``torch.utils.data.DataLoader(*args, **kwargs)`` without PyTorch's "suggested max number of worker"
    warning (printed at construction and at every new iterator): :func:`resolve_workers` has said it once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*suggested max number of worker")
        loader = DataLoader(*args, **kwargs)
    loader.check_worker_number_rationality = lambda: None  # type: ignore[method-assign]
    return loader


class BadDataError(RuntimeError):
    """Too many clips of an epoch could not be read; the message names the limit and its config key."""


def bad_clip_allowance(total: int, max_bad_fraction: float, max_bad_clips: int = DEFAULT_MAX_BAD_CLIPS) -> int:
    """How many unreadable clips an epoch of ``total`` clips (on one rank) may hold before the run stops.

    The larger of two allowances: ``max_bad_fraction`` of the epoch (what matters for a large set: 1 % of
    two million clips is 20,000) and ``max_bad_clips`` clips (what matters for a small one: one bad file
    of 41 is 2.4 %, and should not stop a fine-tuning run). The absolute allowance is capped below half
    the epoch, so a manifest that is mostly unreadable still stops within its first unreadable clips
    (5 clips: at most 2 may be bad), whatever ``max_bad_clips`` says; the fraction is not capped (a
    user who sets 0.9 asks for it).
    """
    return max(math.floor(max_bad_fraction * total), min(max_bad_clips, (total - 1) // 2))


class ResumableDistributedSampler(Sampler):
    """Shuffled (or in-order) epochs of ``num_items`` indices, split over ranks, resumable mid-epoch.

    Epoch ``e`` is ``torch.randperm(num_items)`` drawn from a generator seeded with ``seed + e``. With
    ``drop_last`` the tail that does not divide evenly over the ranks is dropped; otherwise the order is
    padded with its own first indices so every rank gets ``ceil(num_items / num_replicas)``.
    """

    def __init__(self, num_items: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        if num_items <= 0:
            raise ValueError(f"need at least one item to sample, got {num_items}")
        self.num_items = num_items
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.consumed = 0  # keys of this epoch already used by the training loop (this rank)
        self._start = 0  # where iterating this epoch begins (set by load_state_dict, cleared by set_epoch)

    @property
    def per_rank(self) -> int:
        """Keys per rank in a full epoch."""
        total = self._draws()
        return total // self.num_replicas if self.drop_last else math.ceil(total / self.num_replicas)

    def _draws(self) -> int:
        return self.num_items

    def epoch_order(self) -> torch.Tensor:
        """The full epoch order (all ranks), int64."""
        if not self.shuffle:
            return torch.arange(self.num_items)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_items, generator=g)

    def rank_order(self) -> torch.Tensor:
        """This rank's share of the epoch order."""
        order = self.epoch_order()
        total = self.per_rank * self.num_replicas
        if total > order.numel():
            order = order.repeat(math.ceil(total / order.numel()))
        return order[self.rank : total : self.num_replicas]

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning, unless it is the epoch just restored."""
        if epoch != self.epoch:
            self.epoch, self._start, self.consumed = epoch, 0, 0

    def advance(self, n: int) -> None:
        """Record that the training loop used ``n`` more keys of this epoch."""
        self.consumed += n

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "num_items": self.num_items, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position; the next iteration yields the rest of that epoch in the same order."""
        for key in ("seed", "num_items", "num_replicas"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {getattr(self, key)}")
        self.epoch = int(state["epoch"])
        self.consumed = self._start = int(state["consumed"])

    def __len__(self) -> int:
        return self.per_rank - self._start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, epoch = self._start, self.epoch
        self.consumed = start
        for i in self.rank_order()[start:].tolist():
            yield i, epoch


class WeightedSampler(ResumableDistributedSampler):
    """``num_samples`` draws per epoch without replacement, with probability proportional to ``weights``
    (AudioSet-2M fine-tuning: 200k per epoch). Same epoch on every rank, split and resumed like
    :class:`ResumableDistributedSampler`."""

    def __init__(self, weights: Sequence[float] | torch.Tensor, num_samples: int, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0, drop_last: bool = True):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.dim() != 1 or not bool(torch.isfinite(self.weights).all()) or bool((self.weights < 0).any()):
            raise ValueError("weights must be a 1-D sequence of finite non-negative numbers")
        positive = int((self.weights > 0).sum())
        if not 0 < num_samples <= positive:
            raise ValueError(f"num_samples={num_samples} must be in 1..{positive} (clips with a positive weight)")
        self.num_samples = num_samples
        super().__init__(self.weights.numel(), num_replicas, rank, True, seed, drop_last)

    def _draws(self) -> int:
        return self.num_samples

    def epoch_order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.multinomial(self.weights, self.num_samples, replacement=False, generator=g)


def class_balanced_weights(items: Sequence[LabelledItem], num_classes: int, scheme: str = "psla",
                           eps: float = 1e-6) -> torch.Tensor:
    """Per-clip sampling weights: the sum over a clip's labels of a per-class weight.

    ``scheme="psla"`` (AST/PSLA weight files): ``1000 / (count + 100)``; ``"inverse"``:
    ``1 / (count + eps)``. Rare classes get heavy clips; a clip without labels gets weight 0.
    """
    if scheme not in ("psla", "inverse"):
        raise ValueError(f"unknown weighting scheme {scheme!r}; choose 'psla' or 'inverse'")
    lengths = torch.tensor([len(it.labels) for it in items], dtype=torch.long)
    flat = torch.tensor([c for it in items for c in it.labels], dtype=torch.long)
    counts = torch.bincount(flat, minlength=num_classes).double()
    per_class = 1000.0 / (counts + 100.0) if scheme == "psla" else 1.0 / (counts + eps)
    owner = torch.repeat_interleave(torch.arange(len(items)), lengths)
    return torch.zeros(len(items), dtype=torch.float64).index_add_(0, owner, per_class[flat])


def collate(items: list[dict[str, Any] | Skipped]) -> Batch:
    """Batch dataset items into a :class:`~eat.data.batch.Batch`: drop :class:`Skipped` ones and report them.

    Tensors are stacked, except ``mask`` (``[clones, N]`` per clip), which is concatenated to
    ``[B * clones, N]`` in sample-major order (row ``b * clones + c``); ints become a tensor. The batch
    also holds ``num_drawn`` (keys used, good or bad), ``num_skipped`` and ``skipped`` (``Skipped``
    records). A batch whose clips were all bad has only ``index`` (empty) and the bookkeeping keys.
    """
    good = [it for it in items if not isinstance(it, Skipped)]
    skipped = [it for it in items if isinstance(it, Skipped)]
    batch: Batch = {"num_drawn": len(items), "num_skipped": len(skipped), "skipped": skipped}
    if not good:
        batch["index"] = torch.zeros(0, dtype=torch.long)
        return batch
    for key in good[0]:
        values = [it[key] for it in good]
        if key == "mask":
            batch[key] = torch.cat(values)
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.tensor(values)
    return batch


class SkippingLoader:
    """A DataLoader whose batches are checked against the bad-file policy and counted for resuming.

    Every bad file is logged once (``logging.warning`` naming it and the reason); batches with no good
    clip are not yielded; when more of this epoch's clips (on this rank) turn out bad than
    :func:`bad_clip_allowance` allows, :class:`BadDataError` says how many of the clips read so far were
    bad, the first one and why, and names the two config keys (``<section>.max_bad_fraction`` and
    ``<section>.max_bad_clips``, the section taken from ``limit_name``). ``state_dict`` / ``set_epoch``
    go to the sampler.
    """

    def __init__(self, loader: DataLoader, max_bad_fraction: float, limit_name: str = "data.max_bad_fraction",
                 max_bad_clips: int = DEFAULT_MAX_BAD_CLIPS):
        self.loader = loader
        self.sampler = loader.batch_sampler.sampler if loader.batch_sampler is not None else loader.sampler
        self.max_bad_fraction = max_bad_fraction
        self.max_bad_clips = max_bad_clips
        self.limit_name = limit_name
        self.logged: set[str] = set()
        self.bad_this_epoch = 0
        self.read_this_epoch = 0
        self.first_bad: Skipped | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        total = len(self.sampler)
        self.bad_this_epoch = self.read_this_epoch = 0
        self.first_bad = None
        for batch in self.loader:
            if hasattr(self.sampler, "advance"):
                self.sampler.advance(batch["num_drawn"])
            self.read_this_epoch += batch["num_drawn"]
            self._check(batch["skipped"], total)
            if batch["index"].numel():
                yield batch

    def _check(self, skipped: list[Skipped], total: int) -> None:
        for s in skipped:
            if s.path not in self.logged:
                self.logged.add(s.path)
                log.warning("skipping unreadable clip %s: %s", s.path, s.reason)
        self.bad_this_epoch += len(skipped)
        if skipped and self.first_bad is None:
            self.first_bad = skipped[0]
        allowed = bad_clip_allowance(total, self.max_bad_fraction, self.max_bad_clips)
        if self.bad_this_epoch > allowed:
            section = self.limit_name.rsplit(".", 1)[0]
            first = self.first_bad
            raise BadDataError(
                f"{self.bad_this_epoch} of the first {self.read_this_epoch} clips read are unreadable (of "
                f"{total} this epoch on this process), more than the {allowed} allowed ({section}.max_bad_clips={self.max_bad_clips}, "
                f"{section}.max_bad_fraction={self.max_bad_fraction}); first: {first.path}: {first.reason}"
            )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


def check_loader_config(batch_size: int, num_workers: int | str, prefetch_factor: int, max_bad_fraction: float,
                        section: str = "data", max_bad_clips: int = DEFAULT_MAX_BAD_CLIPS) -> None:
    """Refuse loader settings no run can use, naming the ``<section>.<key>`` (a ``ConfigError``)."""
    if batch_size < 1:
        raise ConfigError(f"{section}.batch_size: must be >= 1, got {batch_size}")
    if num_workers != "auto" and num_workers < 0:
        raise ConfigError(f"{section}.num_workers: must be >= 0 or auto, got {num_workers}")
    if prefetch_factor < 1:
        raise ConfigError(f"{section}.prefetch_factor: must be >= 1, got {prefetch_factor}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ConfigError(f"{section}.max_bad_fraction: must lie in [0, 1], got {max_bad_fraction}")
    if max_bad_clips < 0:
        raise ConfigError(f"{section}.max_bad_clips: must be >= 0, got {max_bad_clips}")


def ignore_preemption_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: loader workers ignore SIGTERM / SIGUSR1 / SIGINT.

    Clusters signal the whole process group. PyTorch's workers die on a SIGTERM that does not come from
    their parent, and the main process then fails with "DataLoader worker ... killed by signal" before it
    can checkpoint. Ignoring the signals lets the main process save and shut its workers down itself;
    a worker still exits on its own when the main process is gone (PyTorch's parent watchdog).
    """
    for sig in (*PREEMPTION_SIGNALS, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# Imported once by the fork server, so that every loader worker starts with them loaded (a worker then
# starts in ~10 ms instead of importing torch for 1-5 s as a spawned one would).
WORKER_PRELOAD = ("torch", "eat.data.loaders", "eat.data.datasets", "eat.data.shards")


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context loader workers start from: a fork server (``spawn`` where there is none).

    Never a plain ``fork`` of the training process: a rank runs other threads (TensorBoard's writer, Gloo's,
    anything a user adds), and a fork copies whatever lock one of them holds at that instant into a child
    where nobody will ever release it. Issue 21 found a 2-rank run whose loader worker hung that way forever
    inside ``os.fork``. The fork server is a fresh single-threaded process that forks the workers instead.

    The server is started here with SIGTERM / SIGUSR1 *blocked* (the mask survives its exec, handlers do
    not): clusters signal the whole process group, and a server killed by the preemption signal would take
    the running workers with it (they watch their parent) before the trainer saves. Blocked rather than
    ignored, so a signal meant for this process during the start stays pending and is handled right after.
    The server exits by itself when this process does.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(WORKER_PRELOAD))
    resource_tracker.ensure_running()  # first: starting it *unblocks* SIGTERM (CPython's own guard)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return ctx


def build_loader(
    dataset: Any,
    sampler: Sampler,
    batch_size: int,
    num_workers: int | str = 0,
    train: bool = True,
    pin_memory: bool | None = None,
    prefetch_factor: int | None = None,
    max_bad_fraction: float | None = None,
    limit_name: str = "data.max_bad_fraction",
    max_bad_clips: int = DEFAULT_MAX_BAD_CLIPS,
) -> SkippingLoader:
    """A :class:`SkippingLoader` over ``dataset`` in ``sampler`` order.

    Defaults: pinned memory when CUDA is available, persistent workers when ``num_workers > 0`` (started
    by a fork server, see :func:`worker_context`, and ignoring preemption signals, see
    :func:`ignore_preemption_signals`),
    incomplete last batch dropped for training (kept for evaluation), ``max_bad_fraction`` from the
    dataset (the bad-clip policy: :func:`bad_clip_allowance`). ``num_workers="auto"`` sizes the workers to
    the cores (:func:`resolve_workers`).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    num_workers = resolve_workers(num_workers, f"{limit_name.rsplit('.', 1)[0]}.num_workers")
    if num_workers > 0 and prefetch_factor is not None and prefetch_factor < 1:
        raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
    loader = quiet_dataloader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=train,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        worker_init_fn=ignore_preemption_signals if num_workers > 0 else None,
        multiprocessing_context=worker_context() if num_workers > 0 else None,
    )
    limit = dataset.max_bad_fraction if max_bad_fraction is None else max_bad_fraction
    return SkippingLoader(loader, limit, limit_name, max_bad_clips)
