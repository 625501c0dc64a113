"""Predict EAT pretraining memory and speed on a GPU without one (fake tensors; nothing is computed).

``memory``: peak bytes per GPU from two fake-tensor steps of the real model (:mod:`eat.apps.gpu_memory`), for DDP and
FSDP2, at each ``--batch``, plus the largest batch that fits ``--budget-gib``.
``speed``: a per-operator roofline of the real step (:mod:`eat.apps.gpu_roofline`) on H100 SXM and H200 (our step:
bf16, flash attention, fused AdamW) and the official configuration on an RTX 3090 (fp16, attention as explicit
products, per-parameter AdamW and EMA loops), calibrated against the official ~23 clips/s per 3090.

    python tools/predict_gpu.py memory --preset base --batch 12 24 48 --json outputs/memory_base.json
    python tools/predict_gpu.py speed --preset base --batch 12 --json outputs/speed_base.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from eat.apps.gpu_memory import GIB, largest_batch, measure_pretrain_step, predict
from eat.apps.gpu_roofline import GPUS, calibrate, record_pretrain_step
from eat.apps.gpu_roofline import predict as roofline
from eat.cli import cli_main
from eat.model.eat import eat_config

STRATEGIES = ("ddp", "fsdp")


def memory(args: argparse.Namespace) -> dict[str, Any]:
    cfg = eat_config(args.preset)
    rows, steps = [], {}
    for b in sorted(set(args.batch) | {1, 2}):
        steps[b] = measure_pretrain_step(cfg, b)
    for b in args.batch:
        for strategy in STRATEGIES:
            rows.append(predict(steps[b], strategy, args.world, args.fragmentation))
    fits = {s: largest_batch(steps[1], steps[2], args.budget_gib, strategy=s, world=args.world,
                             fragmentation=args.fragmentation) for s in STRATEGIES}
    static = {k: getattr(steps[1], k) / GIB for k in ("params", "teacher", "grads", "optimizer", "block")}
    return {"preset": args.preset, "clones": cfg.clone_batch, "world": args.world, "budget_gib": args.budget_gib,
            "static_gib": static, "rows": rows, "largest_batch": fits}


def speed(args: argparse.Namespace) -> dict[str, Any]:
    cfg = eat_config(args.preset)
    out: dict[str, Any] = {"preset": args.preset, "launch_us": args.launch_us, "rows": []}
    factor = 1.0
    if args.calibrate:
        official = roofline(record_pretrain_step(eat_config("base"), 12, "base", official=True), GPUS["3090"],
                            args.launch_us * 1e-6)
        factor = calibrate(official["clips_per_s"], args.official_clips_per_s)
        official["measured_clips_per_s"] = args.official_clips_per_s
        out["calibration"] = {"official_3090": official, "measured_over_predicted": factor}
    for b in args.batch:
        step = record_pretrain_step(cfg, b, args.preset)
        for gpu in ("h100", "h200"):
            row = roofline(step, GPUS[gpu], args.launch_us * 1e-6)
            row["calibrated_clips_per_s"] = row["clips_per_s"] * factor
            out["rows"].append(row)
    return out


def report(r: dict[str, Any]) -> str:
    if r["kind"] == "memory":
        lines = [f"EAT-{r['preset']} pretraining, {r['clones']} clones, peak GiB per GPU ({r['world']} GPUs for FSDP2; "
                 "+5 % fragmentation margin)", "| batch | strategy | params | teacher | optimizer | transient | total |",
                 "|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            p = row["parts_gib"]
            lines.append(f"| {row['batch']} x {row['clones']} | {row['strategy']} | {p['params']:.2f} | "
                         f"{p['teacher']:.2f} | {p['optimizer']:.2f} | {p['transient']:.2f} | **{row['total_gib']:.1f}** |")
        lines.append("largest batch in " + f"{r['budget_gib']:g} GiB: "
                     + ", ".join(f"{k} {v}" for k, v in r["largest_batch"].items()))
        return "\n".join(lines)
    lines = []
    if "calibration" in r:
        c = r["calibration"]
        o = c["official_3090"]
        lines.append(f"official EAT-base on an RTX 3090 (fp16, batch 12 x 16): predicted {o['clips_per_s']:.1f} "
                     f"clips/s, measured {o['measured_clips_per_s']:g} -> measured / predicted = "
                     f"{c['measured_over_predicted']:.2f}")
    lines += ["| GPU | batch | kernels | step ms (compute / memory / launch) | clips/s roofline | x calibration | "
             "MFU bound |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['gpu'].split(' (')[0]} | {row['batch']} x {row['clones']} | {row['kernels']} | "
                     f"{row['step_ms']:.1f} ({row['compute_bound_ms']:.1f} / {row['memory_bound_ms']:.1f} / "
                     f"{row['launch_ms']:.1f}) | {row['clips_per_s']:.0f} | {row['calibrated_clips_per_s']:.0f} | "
                     f"{100 * row['mfu_bound']:.1f} % |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    for name, helptext in (("memory", "peak memory per GPU, DDP and FSDP2"), ("speed", "roofline clips/s")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--preset", choices=("tiny", "base", "large"), default="base")
        s.add_argument("--batch", type=int, nargs="+", default=[12], help="clips per GPU (default 12, official)")
        s.add_argument("--json", type=Path, help="write the results to this JSON file")
        if name == "memory":
            s.add_argument("--world", type=int, default=8, help="GPUs FSDP2 shards over (default 8)")
            s.add_argument("--budget-gib", type=float, default=80.0, help="memory per GPU (default 80)")
            s.add_argument("--fragmentation", type=float, default=0.05, help="allocator margin (default 0.05)")
        else:
            s.add_argument("--launch-us", type=float, default=4.0, help="fixed cost per kernel (default 4 us)")
            s.add_argument("--official-clips-per-s", type=float, default=23.0,
                           help="measured official rate per 3090 for the calibration (default 23)")
            s.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                           help="skip the official 3090 run (the calibration factor is then 1)")
    args = p.parse_args(argv)
    if min(args.batch) < 1 or getattr(args, "world", 1) < 1:
        p.error("--batch and --world must be >= 1")
    return args


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    result = {"kind": args.kind, **(memory(args) if args.kind == "memory" else speed(args))}
    result["command"] = " ".join(["python", "tools/predict_gpu.py", *(sys.argv[1:] if argv is None else argv)])
    result["wall_s"] = time.perf_counter() - start
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
