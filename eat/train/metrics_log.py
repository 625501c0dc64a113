"""Training metrics: summed on the device without syncing, reduced across ranks once per log interval,
written by rank 0 to the console, TensorBoard and ``metrics.jsonl``.

(Named ``metrics_log`` so it does not shadow the standard library's ``logging`` inside this package.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from eat.train.dist import DistEnv, all_reduce_sum

log = logging.getLogger("eat.train")

# Dense bf16 tensor-core peak per device, FLOP/s, for MFU (match by substring of the device name).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 70e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def peak_flops(device: torch.device, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device (``override_tflops`` wins), ``None`` on CPU or for an unknown GPU."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


class MetricsWindow:
    """Accumulates per-step values between two log points.

    ``add_mean`` takes 0-dim tensors or numbers, averaged over the calls (e.g. micro-batches) and ranks;
    tensors on an accelerator are summed there, CPU tensors and numbers on the host (no copy per step).
    ``add_sum`` takes host numbers summed over steps and ranks (clip counts). ``reduce`` stacks everything
    into one tensor, all-reduces it once and copies it to the host once.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.means: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}
        self.sums: dict[str, float] = {}
        self.steps = 0

    def add_mean(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            if isinstance(v, torch.Tensor):
                v = v.detach().float() if v.device.type != "cpu" else float(v.detach())
            else:
                v = float(v)
            self.means[k] = self.means[k] + v if k in self.means else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def add_sum(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def step(self) -> None:
        self.steps += 1

    def reduce(self, env: DistEnv) -> dict[str, float]:
        """Means over steps and ranks and sums over steps and ranks; clears the window."""
        mean_keys, sum_keys = sorted(self.means), sorted(self.sums)
        parts = [torch.as_tensor(self.means[k], dtype=torch.float64, device=self.device).reshape(1)
                 for k in mean_keys]
        parts.append(torch.tensor([self.sums[k] for k in sum_keys], dtype=torch.float64, device=self.device))
        stacked = all_reduce_sum(torch.cat(parts), env).tolist()
        out = {k: stacked[i] / (self.counts[k] * env.world_size) for i, k in enumerate(mean_keys)}
        out.update({k: stacked[len(mean_keys) + i] for i, k in enumerate(sum_keys)})
        self.means, self.counts, self.sums, self.steps = {}, {}, {}, 0
        return out


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{days}d {h:02d}:{m:02d}:{s:02d}" if days else f"{h:02d}:{m:02d}:{s:02d}"


class MetricsLogger:
    """Rank-0 sink for scalars: console line, TensorBoard (``<run_dir>/tb``) and ``<run_dir>/metrics.jsonl``.

    On other ranks every method is a no-op, so callers need no rank checks.
    """

    def __init__(self, run_dir: str | Path, env: DistEnv, tensorboard: bool = True) -> None:
        self.enabled = env.is_main
        self.run_dir = Path(run_dir)
        self._writer = None
        self._jsonl = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def drop_after(self, step: int) -> int:
        """Forget what was logged for steps after ``step`` (a resumed run redoes them): rewrite
        ``metrics.jsonl`` without those rows (and without a line torn by a kill), and restart TensorBoard
        with ``purge_step`` so its curves do not hold both versions. Returns the rows dropped."""
        if not self.enabled or self._jsonl is None:
            return 0
        path = self.run_dir / "metrics.jsonl"
        self._jsonl.close()
        kept, dropped = [], 0
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                dropped += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
                dropped += 1
                continue
            kept.append(line + "\n")
        if dropped:
            tmp = path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, path)
        self._jsonl = open(path, "a", buffering=1)
        if self._writer is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer.close()
            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=step + 1)
        return dropped

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        """Write ``values`` at ``step`` to TensorBoard (as ``prefix/name``) and as one JSON line."""
        if not self.enabled:
            return
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(f"{prefix}/{k}", v, step)
        self.event({"kind": prefix, "step": step, **values})

    def event(self, record: dict[str, Any]) -> None:
        """Append one JSON line (with a wall-clock time) to ``metrics.jsonl``."""
        if self.enabled and self._jsonl is not None:
            self._jsonl.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def console(self, line: str) -> None:
        if self.enabled:
            log.info(line)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def progress_line(step: int, total: int, values: dict[str, float], eta_s: float) -> str:
    """``step 120/400000 (0.0%) | loss 1.2345 | lr 1.20e-05 | 523.1 clips/s | ETA 1d 02:03:04``."""
    parts = [f"step {step}/{total} ({100.0 * step / max(total, 1):.1f}%)"]
    for key in ("loss",):
        if key in values:
            parts.append(f"{key} {values[key]:.4f}")
    if "lr" in values:
        parts.append(f"lr {values['lr']:.2e}")
    if "grad_norm" in values:
        parts.append(f"gnorm {values['grad_norm']:.3f}")
    if "clips_per_s" in values:
        parts.append(f"{values['clips_per_s']:.1f} clips/s")
    if "mfu" in values:
        parts.append(f"MFU {100 * values['mfu']:.1f}%")
    if "skipped_steps" in values and values["skipped_steps"]:
        parts.append(f"skipped {int(values['skipped_steps'])}")
    parts.append(f"ETA {format_duration(eta_s)}")
    return " | ".join(parts)
