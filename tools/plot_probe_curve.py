"""Accuracy vs pretraining time: one probe cell of checkpoint exports, per task, against the baselines.

    python tools/plot_probe_curve.py --probe probe_seed1.json [--probe probe_seed2.json ...] \\
        --run seed1=RUN_DIR [--run seed2=RUN_DIR2 ...] [--layers all] [--pooling meanstd] \\
        [--seeds seed1,seed2,seed3] [--margin 0.03] [--out curve.png]

Every ``--probe`` is a ``tools/probe_protocol.py --json`` file whose encoder sources are named ``RUN@STEP``
(``--encoder seed1@500=EXPORT_OF_step_000500``); its "initial weights" and "log-mel" rows, when present, are
the baselines (log-mel in the same pooling; several files' initial weights, e.g. one per seed, are averaged).
``--run NAME=RUN_DIR`` gives the pretraining seconds of each checkpoint: the ``checkpoint`` record's time in
``RUN_DIR/metrics.jsonl`` minus the run's start (the first ``train`` record's time less its ``s_per_step``
times its step). Prints a markdown table (one row per run and checkpoint, then the mean and standard
deviation over the ``--seeds`` runs, default all, at each step that several of them saved) and, with
``--out``, draws one panel per task: accuracy vs updates (seconds on the top axis), the log-mel level,
log-mel + ``--margin`` and the initial weights as horizontal lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


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
        data = json.loads(path.read_text())
        for task, result in data["tasks"].items():
            for row in result["rows"]:
                if row["pooling"] != pooling or row["layers"] not in (layers, "-"):
                    continue
                run, at, step = row["source"].rpartition("@")
                if at and step.isdigit():
                    points.setdefault(task, {})[(run, int(step))] = row["score"]
                elif row["source"] in ("initial weights", "log-mel"):
                    baselines.setdefault(task, {}).setdefault(row["source"], []).append(row["score"])
    if not points:
        names = ", ".join(map(str, paths))
        raise ValueError(f"no RUN@STEP source with layers={layers} pooling={pooling} in {names}")
    return points, baselines


def mean_std(vals: list[float]) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f} (n={len(vals)})"


def table(points: dict, baselines: dict, seconds: dict[str, dict[int, float]],
          seeds: list[str] | None = None) -> str:
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
    for source in ("initial weights", "log-mel"):
        if any(source in baselines.get(t, {}) for t in tasks):
            cells = [mean_std(baselines[t][source]) if source in baselines.get(t, {}) else "-" for t in tasks]
            lines.append(f"| {source} | - | - | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(points: dict, baselines: dict, seconds: dict[str, dict[int, float]], margin: float, out: Path,
         title: str) -> None:
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
        if "log-mel" in base:
            ax.axhline(base["log-mel"], color="k", lw=1, label="log-mel")
            ax.axhline(base["log-mel"] + margin, color="k", lw=1, ls="--", label=f"log-mel + {margin * 100:.0f}")
        if "initial weights" in base:
            ax.axhline(base["initial weights"], color="grey", lw=1, ls=":", label="initial weights")
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", type=Path, action="append", default=[], help="probe_protocol.py --json file")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR", help="pretraining run folder")
    ap.add_argument("--layers", default="all", help="layer spec of the cell to plot (default all)")
    ap.add_argument("--pooling", default="meanstd", help="pooling of the cell to plot (default meanstd)")
    ap.add_argument("--seeds", help="comma-separated runs averaged in the mean ± std rows (default all)")
    ap.add_argument("--margin", type=float, default=0.03, help="dashed line at log-mel + margin (default 0.03)")
    ap.add_argument("--out", type=Path, help="write the figure (PNG) here")
    args = ap.parse_args(argv)
    if not args.probe:
        sys.exit("error: give at least one --probe JSON")
    try:
        seconds = {}
        for item in args.run:
            name, eq, path = item.partition("=")
            if not eq:
                raise ValueError(f"--run {item}: expected NAME=RUN_DIR")
            seconds[name] = checkpoint_seconds(Path(path))
        points, baselines = read_cells(args.probe, args.layers, args.pooling)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
    print(table(points, baselines, seconds, args.seeds.split(",") if args.seeds else None))
    if args.out is not None:
        plot(points, baselines, seconds, args.margin, args.out,
             f"linear probe, layers={args.layers}, pooling={args.pooling}")


if __name__ == "__main__":
    main()
