"""Accuracy of one probe cell along pretraining: checkpoint times from a run's ``metrics.jsonl``, the cell's
scores from ``tools/probe_protocol.py --json`` files whose sources are named ``RUN@STEP``, a markdown table
(mean ± std over seeds at shared steps) and a figure per task against the log-mel and initial-weights levels.
Used by ``tools/plot_probe_curve.py`` for the real-audio curve in docs/benchmarks.md."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from eat.eval.protocol import CONTROL, LOGMEL, read_probe_json


def checkpoint_seconds(run_dir: Path) -> dict[int, float]:
    """Seconds from the start of the run to each saved checkpoint (step -> seconds)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    if not train:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: no train records")
    start = train[0]["time"] - train[0]["s_per_step"] * train[0]["step"]
    return {r["step"]: r["time"] - start for r in records if r.get("kind") == "checkpoint"}


def read_cells(paths: list[Path], layers: str, pooling: str) -> tuple[dict, dict]:
    """``(points, baselines)``: points[task][(run, step)] accuracy and baselines[task][source] accuracies (one per
    file that has the source) of one cell."""
    points: dict[str, dict[tuple[str, int], float]] = {}
    baselines: dict[str, dict[str, list[float]]] = {}
    for path in paths:
        data = read_probe_json(path)
        for task, result in data["tasks"].items():
            for row in result["rows"]:
                if row["pooling"] != pooling or row["layers"] not in (layers, "-"):
                    continue
                run, at, step = row["source"].rpartition("@")
                if at and step.isdigit():
                    points.setdefault(task, {})[(run, int(step))] = row["score"]
                elif row["source"] in (CONTROL, LOGMEL):
                    baselines.setdefault(task, {}).setdefault(row["source"], []).append(row["score"])
    if not points:
        names = ", ".join(map(str, paths))
        raise ValueError(f"no RUN@STEP source with layers={layers} pooling={pooling} in {names}")
    return points, baselines


def mean_std(vals: list[float]) -> str:
    """``0.123`` for one value, ``0.123 ± 0.004 (n=3)`` (sample std) for several."""
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f} (n={len(vals)})"


def table(points: dict, baselines: dict, seconds: dict[str, dict[int, float]],
          seeds: list[str] | None = None) -> str:
    """Markdown: one row per (run, step) with its seconds, then mean ± std over ``seeds`` (default every run) at
    each step that several of them saved, then the baselines (initial weights averaged over the files)."""
    tasks = list(points)
    keys = sorted({k for t in tasks for k in points[t]})
    lines = ["| run | updates | seconds | " + " | ".join(tasks) + " |", "|---|---|---|" + "---|" * len(tasks)]
    for run, step in keys:
        s = seconds.get(run, {}).get(step)
        cells = [f"{points[t][(run, step)]:.3f}" if (run, step) in points[t] else "-" for t in tasks]
        lines.append(f"| {run} | {step} | {'-' if s is None else f'{s:.0f}'} | " + " | ".join(cells) + " |")
    runs = set(seeds) if seeds else {k[0] for k in keys}
    if len(runs) > 1:
        for step in sorted({k[1] for k in keys if k[0] in runs}):
            cells = []
            for t in tasks:
                vals = [v for (r, st), v in points[t].items() if st == step and r in runs]
                cells.append(mean_std(vals) if vals else "-")
            if all("±" not in c for c in cells):
                continue  # a step that only one run saved
            lines.append(f"| mean ± std | {step} | - | " + " | ".join(cells) + " |")
    for source in (CONTROL, LOGMEL):
        if any(source in baselines.get(t, {}) for t in tasks):
            cells = [mean_std(baselines[t][source]) if source in baselines.get(t, {}) else "-" for t in tasks]
            lines.append(f"| {source} | - | - | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(points: dict, baselines: dict, seconds: dict[str, dict[int, float]], margin: float, out: Path,
         title: str) -> None:
    """One panel per task: accuracy vs updates per run (seconds on the top axis, at the runs' mean seconds per
    update), log-mel, log-mel + ``margin`` and the initial weights as horizontal lines; written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(points)
    cols = min(len(tasks), 2)
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    axes = axes.ravel()
    pairs = [(st, s) for run in seconds.values() for st, s in run.items() if st > 0]
    per_update = sum(s for _, s in pairs) / sum(st for st, _ in pairs) if pairs else None
    for ax, task in zip(axes, tasks, strict=False):
        runs = sorted({r for r, _ in points[task]})
        for run in runs:
            xs = sorted(st for r, st in points[task] if r == run)
            ax.plot(xs, [points[task][(run, x)] for x in xs], marker="o", markersize=3, label=run)
        base = {k: statistics.mean(v) for k, v in baselines.get(task, {}).items()}
        if LOGMEL in base:
            ax.axhline(base[LOGMEL], color="k", lw=1, label="log-mel")
            ax.axhline(base[LOGMEL] + margin, color="k", lw=1, ls="--", label=f"log-mel + {margin * 100:.0f}")
        if CONTROL in base:
            ax.axhline(base[CONTROL], color="grey", lw=1, ls=":", label="initial weights")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("updates")
        ax.grid(alpha=0.3)
        if per_update:
            top = ax.secondary_xaxis("top", functions=(lambda x: x * per_update, lambda s: s / per_update))
            top.set_xlabel("seconds (mean of the runs)", fontsize=8)
            top.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("test accuracy")
    axes[0].legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
