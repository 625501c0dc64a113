"""The training loop, shared by pretraining and fine-tuning.

The trainer knows its model only as "a module whose ``forward(**batch)`` returns a dict with a scalar
``loss`` (other scalar entries are logged)", with an optional ``after_optimizer_step(step)`` hook that runs
under ``no_grad`` right after every optimizer step (EAT's EMA teacher update lives there). Data comes from
a :class:`TrainData` whose position is saved per rank, so a resumed run continues from the exact batch.

One update (:meth:`Trainer.train_step`) = ``grad_accum`` micro-batches (gradient all-reduce only on the
last), global-norm clipping, AdamW at the LRs of :func:`eat.train.optim.set_lr_at`, the model hook; :meth:`Trainer.fit`
repeats it with logging, evaluation and checkpoints. Nothing is copied to the host per step:
losses and norms are summed on the device and read once per log interval. A non-finite gradient norm skips
the update; with the fused CUDA AdamW this is decided on the device (the kernel's ``found_inf`` input), on
CPU the host reads the flag (free there). ``max_bad_steps`` non-finite updates in a row stop the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from eat.config import ConfigError
from eat.train import checkpoint as ckpt
from eat.train.dist import (
    DistEnv,
    any_rank,
    compile_blocks,
    configure_cpu_threads,
    gradient_sync,
    preemption_flag,
    unwrap,
    wrap_model,
)
from eat.train.metrics_log import MetricsLogger, MetricsWindow, peak_flops, progress_line
from eat.train.optim import OptimConfig, build_optimizer, group_lr_at, set_lr_at

log = logging.getLogger("eat.train")

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after saving a checkpoint; rerun with resume=auto
SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


@dataclass
class TrainConfig:
    """Loop, parallelism, precision, logging and checkpoint settings."""

    out_dir: str = "runs/pretrain"
    max_steps: int = 400000  # optimizer updates
    grad_accum: int = 1  # micro-batches per update
    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp: FSDP2 per block (large encoders)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    # attention kernel for forward and backward; auto: PyTorch's choice. CUDA: flash and cudnn need bf16,
    # efficient and math run in any precision; CPU: auto, flash or math.
    sdpa_backend: Literal["auto", "flash", "cudnn", "efficient", "math"] = "auto"
    cudnn_benchmark: bool = False  # let cuDNN autotune the convolutions (shapes are fixed per run)
    cpu_threads: int = 0  # torch threads; 0: torch's choice, or a fair share of the cores for CPU ranks (dist)
    compile: bool = False  # torch.compile each repeated block (regional compilation)
    seed: int = 1
    log_every: int = 100
    save_every: int = 10000  # 0: only at the end
    keep_last: int = 3  # complete checkpoints kept (0: all)
    eval_every: int = 0  # 0: only at the end (when the recipe gives an eval callback)
    resume: str = "auto"  # auto (newest good checkpoint in out_dir, if any) | none | a run or step_* dir
    max_bad_steps: int = 20  # stop after this many non-finite updates in a row
    tensorboard: bool = True
    peak_tflops: float = 0.0  # per-device peak for MFU; 0: look the GPU up in a small table
    check_weights: bool = True  # at the end, hash the weights on every rank and log whether they agree


class TrainData(Protocol):
    """A resumable batch source (e.g. :class:`eat.data.loaders.SkippingLoader`).

    ``set_epoch(e)`` starts epoch ``e`` unless it is the epoch just restored; iterating yields the rest of
    the current epoch; ``state_dict()`` is the position of the training loop (batches it has received).
    """

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    status: Literal["done", "preempted"]
    step: int
    run_dir: Path
    last_checkpoint: Path | None
    history: list[dict[str, float]] = field(default_factory=list)  # reduced metrics of each log interval


def check_sdpa_backend(backend: str, device: torch.device, bf16: bool) -> None:
    """Refuse a ``train.sdpa_backend`` that has no kernel for this device and precision (a ConfigError)."""
    if backend != "auto" and backend not in SDPA_BACKENDS:
        raise ConfigError(f"train.sdpa_backend: unknown backend {backend!r} (auto, {', '.join(SDPA_BACKENDS)})")
    if device.type != "cuda" and backend in ("cudnn", "efficient"):
        raise ConfigError(f"train.sdpa_backend={backend} needs a CUDA device; on {device.type} use auto, flash or math")
    if device.type == "cuda" and backend in ("flash", "cudnn") and not bf16:
        raise ConfigError(f"train.sdpa_backend={backend} needs half precision on CUDA: set train.precision=bf16 "
                          "(or auto), or use efficient / math in fp32")


def sdpa_context(backend: str) -> contextlib.AbstractContextManager:
    """Pin the attention kernel for everything run inside (``auto``: PyTorch's choice, no context)."""
    return contextlib.nullcontext() if backend == "auto" else sdpa_kernel([SDPA_BACKENDS[backend]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: Any, device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def default_prepare(batch: dict[str, Any], device: torch.device) -> tuple[dict[str, Any], dict[str, float]]:
    """Move tensors to ``device``; count clips as the leading size of the first tensor."""
    kwargs = _to_device(batch, device)
    first = next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
    return kwargs, {"clips": float(first.shape[0]) if first is not None and first.ndim else 0.0}


class Trainer:
    """Wraps the model for data parallelism, builds AdamW, resumes, and runs :meth:`fit`.

    * ``param_groups(model)`` -> AdamW groups of the (wrapped, possibly FSDP-sharded) model, see
      :func:`eat.train.optim.param_groups`; each group may carry ``lr_scale``.
    * ``prepare(batch, device)`` -> ``(forward kwargs on device, host counts to sum such as {"clips": B})``;
      the place for device-side feature extraction (e.g. fbank on the GPU).
    * ``eval_fn(model, step)`` -> metrics dict; called on every rank, logged under ``eval/``.
    * ``flops_per_clip``: training FLOPs per clip (forward + backward) for the MFU estimate.
    * A model with ``ema_decay_at(step)`` gets its EMA decay logged.
    * ``config``: the resolved run config (plain dict) saved with the run and every checkpoint.

    Besides :meth:`fit`, the pieces of a run are public for benchmarks and custom loops:
    :meth:`batches` (the endless batch stream), :meth:`train_step` (one update on given batches),
    :meth:`forward_context` (the run's autocast and attention kernel) and :attr:`metrics` (the values
    summed since the last log point). The model's ``after_optimizer_step`` is looked up at every update,
    so replacing it on the module takes effect at once.
    """

    def __init__(
        self,
        model: nn.Module,
        data: TrainData,
        cfg: TrainConfig,
        optim_cfg: OptimConfig,
        env: DistEnv,
        param_groups: Callable[[nn.Module], list[dict]],
        prepare: Callable[[Any, torch.device], tuple[dict[str, Any], dict[str, float]]] = default_prepare,
        eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
        flops_per_clip: float | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        check_train_config(cfg)
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and env.device.type == "cuda")
        check_sdpa_backend(cfg.sdpa_backend, env.device, bf16)
        self._autocast_dtype = torch.bfloat16 if bf16 else None
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        configure_cpu_threads(env, cfg.cpu_threads)
        self.cfg, self.optim_cfg, self.env = cfg, optim_cfg, env
        self.data, self.prepare, self.eval_fn = data, prepare, eval_fn
        self.config = config
        self.run_dir = Path(cfg.out_dir)
        seed_everything(cfg.seed + 1_000_003 * env.rank)  # per-rank stream for dropout/noise; data is keyed
        if cfg.compile:
            compile_blocks(model)
        self.model = wrap_model(model, env, cfg.strategy)
        self.module = unwrap(self.model)
        self.optimizer = build_optimizer(param_groups(self.model), optim_cfg, env.device)
        self._fused = bool(self.optimizer.defaults.get("fused"))
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.metrics = MetricsWindow(env.device)
        self.flops_per_clip = flops_per_clip
        self.peak = peak_flops(env.device, cfg.peak_tflops)
        self.logger = MetricsLogger(self.run_dir, env, cfg.tensorboard)
        # training position and counters (restored on resume)
        self.step, self.epoch = 0, 0
        self.skipped_total = 0
        dev = env.device
        self._bad_run = torch.zeros((), device=dev)  # current run of non-finite updates
        self._bad_max = torch.zeros((), device=dev)  # longest run since the last check
        self._bad_count = torch.zeros((), device=dev)  # non-finite updates since the last check
        self.last_checkpoint: Path | None = None
        # the newest checkpoint saved after a finite update: kept by retention while non-finite updates
        # pile up, and named when they stop the run
        self.last_good_checkpoint: Path | None = None
        self._resume()

    # ------------------------------------------------------------------------------------ state

    def _trainer_state(self) -> dict[str, Any]:
        c = self.optim_cfg
        return {
            "epoch": self.epoch,
            "skipped_steps": self.skipped_total,
            "schedule": {"kind": "warmup_cosine", "peak_lr": c.lr, "min_lr": c.min_lr, "min_lr_mode": c.min_lr_mode,
                         "warmup_steps": c.warmup_steps, "total_steps": self.cfg.max_steps,
                         "lr": group_lr_at(max(self.step, 1), 1.0, c, self.cfg.max_steps)},
        }

    def save(self) -> Path:
        """Checkpoint the current step (all ranks).

        Retention (``train.keep_last``) never deletes the last checkpoint saved after a finite update while
        the updates since then were non-finite: that is the one to resume from if the run diverged."""
        bad_run = int(self._bad_run)  # host sync; a save is rare and already waits for the device
        state = {**self._trainer_state(), "nonfinite_run": bad_run}
        protect = self.last_good_checkpoint if bad_run else None
        path = ckpt.save_checkpoint(
            self.run_dir, self.step, self.model, self.optimizer, self.env, state,
            {"data": self.data.state_dict()},
            self.config, self.cfg.keep_last, protect=protect,
        )
        self.last_checkpoint = path
        if bad_run == 0:
            self.last_good_checkpoint = path
        self.logger.event({"kind": "checkpoint", "step": self.step, "path": str(path)})
        self.logger.console(f"saved {path}")
        return path

    def _resume(self) -> None:
        mode = self.cfg.resume
        if mode == "none":
            return
        target = self.run_dir if mode == "auto" else Path(mode)
        if mode != "auto" and not target.exists():
            raise ckpt.CheckpointError(f"resume target not found: {target}")
        loaded = ckpt.load_checkpoint(target, self.model, self.optimizer, self.env)
        if loaded is None:
            if mode != "auto":
                raise ckpt.CheckpointError(f"no checkpoint in {target}")
            return
        t = loaded.trainer
        self.step, self.epoch = int(t["step"]), int(t["epoch"])
        self.last_checkpoint = loaded.path
        self.last_good_checkpoint = _last_good(self.run_dir, loaded.path)
        self.logger.drop_after(self.step)  # rows of steps this run is about to redo
        self.skipped_total = int(t.get("skipped_steps", 0))
        where = f"epoch {self.epoch}"
        try:
            if loaded.rank is None:
                raise ValueError(f"no data position saved for rank {self.env.rank}")
            self.data.load_state_dict(loaded.rank["data"])
            where = f"epoch {self.epoch}, data position {loaded.rank['data']}"
        except ValueError as e:  # e.g. resumed on a different number of ranks
            log.warning("cannot restore the data position (%s); epoch %d restarts from its start", e, self.epoch)
        self.logger.console(f"resumed from {loaded.path} at step {self.step} ({where})")
        self.logger.event({"kind": "resume", "step": self.step, "path": str(loaded.path)})

    # ------------------------------------------------------------------------------------- loop

    def batches(self) -> Iterator[Any]:
        """Endless stream of raw batches from the data's (restored) position; keeps ``epoch`` current."""
        fresh = False  # the first epoch may be a resumed one that has nothing left
        while True:
            self.data.set_epoch(self.epoch)
            produced = False
            it = _keep_rng(iter, self.data)
            while (batch := _keep_rng(next, it, _END)) is not _END:
                produced = True
                yield batch
            if fresh and not produced:
                raise RuntimeError(f"the training data yielded no batch in epoch {self.epoch}")
            self.epoch += 1
            fresh = True

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self._autocast_dtype)

    @contextlib.contextmanager
    def forward_context(self) -> Iterator[None]:
        """The run's autocast (bf16 or none) and attention kernel (``train.sdpa_backend``), as in training;
        e.g. for inference that should use the same kernels."""
        with sdpa_context(self.cfg.sdpa_backend), self._autocast():
            yield

    def train_step(self, *micro_batches: Any) -> dict[str, torch.Tensor]:
        """One optimizer update on ``grad_accum`` raw batches (as the data yields them).

        Each batch goes through ``prepare``, the forward (in :meth:`forward_context`) and the backward;
        then the LR of the new step, clipping, AdamW (skipped for a non-finite gradient norm) and the model's
        ``after_optimizer_step``. Advances :attr:`step` and adds the values to :attr:`metrics`.

        Returns 0-dim tensors, none read back to the host: the model's scalar outputs averaged over the
        micro-batches, ``grad_norm`` (before clipping) and ``skipped`` (1.0 when the update was skipped).
        """
        accum = self.cfg.grad_accum
        if len(micro_batches) != accum:
            raise ValueError(f"train_step needs train.grad_accum={accum} micro-batches, got {len(micro_batches)}")
        totals: dict[str, Any] = {}
        for micro, batch in enumerate(micro_batches):
            kwargs, counts = self.prepare(batch, self.env.device)
            with gradient_sync(self.model, micro == accum - 1), sdpa_context(self.cfg.sdpa_backend):
                with self._autocast():
                    out = self.model(**kwargs)
                loss = out["loss"] / accum if accum > 1 else out["loss"]
                loss.backward()  # outside autocast: backward ops follow the forward's dtypes
            for k, v in out.items():
                if _is_scalar(v):
                    v = v.detach() if isinstance(v, torch.Tensor) else v
                    totals[k] = totals[k] + v if k in totals else v
            self.metrics.add_sum(counts)
        values = {k: torch.as_tensor(v / accum if accum > 1 else v) for k, v in totals.items()}
        self.step += 1
        c = self.optim_cfg
        set_lr_at(self.optimizer, self.step, c, self.cfg.max_steps)
        if c.clip_grad > 0:
            norm = torch.nn.utils.clip_grad_norm_(self._trainable, c.clip_grad, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self._trainable if p.grad is not None], foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor partial over shards
            norm = norm.full_tensor()
        bad = ~torch.isfinite(norm)
        stepped = True
        if self._fused:
            self.optimizer.found_inf = bad.float()  # the fused kernel skips the update on the device
            self.optimizer.step()
        elif bool(bad):  # host decision (free on CPU; a sync on CUDA without the fused kernel)
            stepped = False
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # the hook also runs after an update the fused kernel skipped (the host does not know yet); an EMA
        # step towards unchanged weights is harmless
        hook = getattr(self.module, "after_optimizer_step", None)
        if hook is not None and stepped:
            with torch.no_grad():
                hook(self.step)
        self._bad_run = (self._bad_run + 1) * bad
        self._bad_max = torch.maximum(self._bad_max, self._bad_run)
        self._bad_count = self._bad_count + bad
        values["grad_norm"] = norm.detach()
        self.metrics.add_mean(values)
        self.metrics.step()
        values["skipped"] = bad.float()
        return values

    def _check_bad(self) -> int:
        """Read the non-finite counters (a host sync: only at log points); stop if a run got too long."""
        longest, count = (int(v) for v in torch.stack([self._bad_max, self._bad_count]).tolist())
        self._bad_max.zero_()
        self._bad_count.zero_()
        self.skipped_total += count
        if longest >= self.cfg.max_bad_steps:
            good = self.last_good_checkpoint
            where = (f"resume from {good}, the last checkpoint before them (train.resume={good})" if good
                     else "no checkpoint was saved before them")
            raise FloatingPointError(
                f"{longest} updates in a row had a non-finite loss/gradient (up to step {self.step}); "
                f"lower the LR or check the data, and {where}"
            )
        return count

    def fit(self) -> TrainResult:
        cfg, env = self.cfg, self.env
        self.model.train()
        batches = self.batches()
        history: list[dict[str, float]] = []
        preempt = preemption_flag().install()  # already installed by the recipe: keeps a start-up signal
        status: Literal["done", "preempted"] = "done"
        saved_at = self.step if self.last_checkpoint else -1
        if any_rank(preempt.raised, env):  # signalled during start-up: nothing new to save
            self.logger.console(f"preemption signal during start-up: stopping at step {self.step} "
                                "without saving (nothing new was trained)")
            batches.close()
            preempt.uninstall()
            self.logger.close()
            return TrainResult("preempted", self.step, self.run_dir, self.last_checkpoint, history)
        if self.step == 0 and env.is_main and self.config is not None:
            import yaml

            _write_atomic(self.run_dir / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))
        self.logger.console(f"training steps {self.step + 1}..{cfg.max_steps} on {env.world_size} x {env.device.type}"
                            f" ({cfg.strategy}, accum {cfg.grad_accum})")
        if env.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(env.device)
        t_window = time.perf_counter()
        try:
            while self.step < cfg.max_steps:
                self.train_step(*(next(batches) for _ in range(cfg.grad_accum)))
                last = self.step == cfg.max_steps
                if self.step % cfg.log_every == 0 or last:
                    values = self._log(time.perf_counter() - t_window)
                    history.append(values)
                    t_window = time.perf_counter()
                if self.eval_fn is not None and cfg.eval_every and self.step % cfg.eval_every == 0 and not last:
                    self._evaluate()
                if any_rank(preempt.raised, env):
                    if self.step % cfg.log_every:
                        self._check_bad()
                    self.logger.console(f"preemption signal: saving step {self.step} and stopping")
                    self.save()
                    status = "preempted"
                    break
                if cfg.save_every and self.step % cfg.save_every == 0 and not last:
                    self.save()
                    saved_at = self.step
            if status == "done":
                if self.eval_fn is not None:
                    self._evaluate()
                if saved_at != self.step:
                    self.save()
                if cfg.check_weights and cfg.strategy == "ddp":
                    self._check_weights()
        finally:
            batches.close()
            preempt.uninstall()
            self.logger.close()
        return TrainResult(status, self.step, self.run_dir, self.last_checkpoint, history)

    def _log(self, elapsed: float) -> dict[str, float]:
        steps = self.metrics.steps
        values = self.metrics.reduce(self.env)
        values["skipped_steps"] = float(self._check_bad())
        if "clips" in values and elapsed > 0:
            values["clips_per_s"] = values["clips"] / elapsed
            if self.flops_per_clip and self.peak:
                values["mfu"] = values["clips_per_s"] * self.flops_per_clip / (self.peak * self.env.world_size)
        values["s_per_step"] = elapsed / max(steps, 1)
        c = self.optim_cfg
        values["lr"] = group_lr_at(self.step, 1.0, c, self.cfg.max_steps)  # of the last update, lr_scale 1
        decay_at = getattr(self.module, "ema_decay_at", None)  # EMA teacher models report their decay
        if callable(decay_at):
            values["ema_decay"] = float(decay_at(self.step))
        if self.env.device.type == "cuda":
            values["mem_gib"] = torch.cuda.max_memory_allocated(self.env.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.env.device)
        eta = values["s_per_step"] * (self.cfg.max_steps - self.step)
        self.logger.scalars(self.step, values)
        self.logger.console(progress_line(self.step, self.cfg.max_steps, values, eta))
        return values

    def _evaluate(self) -> None:
        self.model.eval()
        try:
            with torch.no_grad():
                results = self.eval_fn(self.module, self.step)
        finally:
            self.model.train()
        self.logger.scalars(self.step, results, prefix="eval")
        self.logger.console(f"eval step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))

    def _check_weights(self) -> None:
        """Hash every rank's full state dict; log the hashes (they differ only if ranks diverged)."""
        h = hashlib.sha256()
        for name, t in sorted(self.module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
        digests = [h.hexdigest()]
        if self.env.distributed:
            gathered: list[Any] = [None] * self.env.world_size
            dist.all_gather_object(gathered, digests[0])
            digests = gathered
        agree = len(set(digests)) == 1
        self.logger.event({"kind": "weights", "step": self.step, "sha256": digests, "ranks_agree": agree})
        if not agree:
            log.error("ranks ended with different weights: %s", digests)


_END = object()


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse ``train.*`` values no run can use, naming the key (a :class:`ConfigError`)."""
    for key in ("grad_accum", "max_steps", "log_every", "max_bad_steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"train.{key}: must be >= 1, got {getattr(cfg, key)}")
    for key in ("save_every", "keep_last", "eval_every", "cpu_threads"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"train.{key}: must be >= 0, got {getattr(cfg, key)}")
    if not cfg.out_dir:
        raise ConfigError("train.out_dir: must name a folder")
    for q in (Path(cfg.out_dir), *Path(cfg.out_dir).parents):
        if q.exists() and not q.is_dir():
            raise ConfigError(f"train.out_dir: {q} is a file, not a folder")
    if not cfg.resume:
        raise ConfigError("train.resume: use auto, none or a run / step_* folder")
    if cfg.resume not in ("auto", "none") and not Path(cfg.resume).exists():
        raise ConfigError(f"train.resume: {cfg.resume}: no such run or step_* folder (or use auto / none)")


def _last_good(run_dir: Path, loaded: Path) -> Path | None:
    """The newest checkpoint up to the resumed one whose trainer.json records no non-finite run (saves
    from before the field existed count as good)."""
    if loaded.parent.resolve() != run_dir.resolve():
        candidates = [loaded]
    else:
        candidates = [p for p in ckpt.list_checkpoints(run_dir) if _step_of(p) <= _step_of(loaded)]
    for path in candidates:
        try:
            state = json.loads((path / ckpt.TRAINER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and not state.get("nonfinite_run", 0):
            return path
    return None


def _step_of(path: Path) -> int:
    try:
        return int(path.name.split("_")[-1])
    except ValueError:
        return -1


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _keep_rng(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` without letting it consume the global CPU RNG.

    A DataLoader draws its workers' base seed from that RNG when an iterator is made, which would shift the
    model's random stream (e.g. decoder noise) differently in a resumed run than in an uninterrupted one.
    """
    state = torch.get_rng_state()
    try:
        return fn(*args)
    finally:
        torch.set_rng_state(state)


def _is_scalar(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.ndim == 0 and (v.is_floating_point() or not v.dtype.is_complex)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
