"""What every benchmark tool needs: the machine's description, device-side timing without host syncs
inside the timed loop, peak memory, a host-sync counter, a repeated batch as training data, and the
``main`` that turns a run into a printed report and a JSON file.

Used by the benchmark programs in :mod:`eat.apps` (``tools/bench_*.py``) and the demo.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from eat.config import ConfigError
from eat.train.trainer import SDPA_BACKENDS
from eat.utils.device import resolve_device  # noqa: F401  (the tools import it from here too)


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU model, thread count and library versions (plus the GPU's name and CUDA/cuDNN versions)."""
    device = torch.device(device)
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"device": str(device), "cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


class Clock:
    """Timestamps on the device's timeline: CUDA events on GPU (recording one never waits), else
    ``perf_counter`` (CPU kernels are synchronous, so the host clock is the device clock)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def timed_loop(step: Callable[[], Any], steps: int, clock: Clock) -> dict[str, float]:
    """Run ``step`` ``steps`` times with no sync inside; wall time plus the per-step device times."""
    clock.sync()
    start_wall = time.perf_counter()
    marks = [clock.mark()]
    for _ in range(steps):
        step()
        marks.append(clock.mark())
    clock.sync()
    wall = time.perf_counter() - start_wall
    per_step = [clock.seconds(a, b) for a, b in zip(marks, marks[1:], strict=False)]
    return {"wall_s": wall, "step_s_median": statistics.median(per_step), "step_s_mean": wall / steps,
            "step_s_min": min(per_step)}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """CUDA: the allocator's peak since the last reset; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "memory_kind": "cuda max_memory_allocated since the timed pass began"}
    return {"peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "memory_kind": "process peak RSS (whole run)"}


def count_host_syncs(step: Callable[[], Any]) -> int:
    """Synchronising CUDA calls made by one ``step`` (``torch.cuda.set_sync_debug_mode``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def rate(x: float) -> str:
    """Clips/s with one decimal, or three significant digits below 10 (CPU runs of the big presets)."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


class RepeatBatch:
    """A :class:`~eat.train.trainer.TrainData` that yields the same (device-resident) batch forever."""

    def __init__(self, batch: dict[str, Any]):
        self.batch = batch

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.batch

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def add_step_options(p: argparse.ArgumentParser) -> None:
    """The options every training-step benchmark shares: kernels and precision (the ``train.*`` settings
    of a run), device, threads, MFU peak, seed and the JSON output."""
    p.add_argument("--compile", action="store_true", help="torch.compile every block (train.compile=true)")
    p.add_argument("--sdpa-backend", choices=("auto", *SDPA_BACKENDS), default="auto",
                   help="pin the attention kernel, train.sdpa_backend (default: PyTorch's choice)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="train.cudnn_benchmark=true (cuDNN autotunes the convolutions for the fixed shapes)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                   help="autocast dtype (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="device peak for MFU (default: by GPU name, 989 for H100/H200 bf16 dense; n/a on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results to this JSON file")


def bench_main(args: argparse.Namespace, run: Callable[[argparse.Namespace], dict[str, Any]],
               report: Callable[[dict[str, Any]], str],
               errors: tuple[type[Exception], ...] = (ConfigError,)) -> dict[str, Any]:
    """Set ``--threads``, run the benchmark (its wall time is added as ``bench_wall_s``), print its report
    and write the results to ``--json``; ``errors`` (the user's mistakes) end the process with one line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        result = run(args)
    except errors as e:
        sys.exit(f"error: {e}")
    result["bench_wall_s"] = time.perf_counter() - start
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result
