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
import sys
from pathlib import Path

from eat.eval.curve import checkpoint_seconds, plot, read_cells, table


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
