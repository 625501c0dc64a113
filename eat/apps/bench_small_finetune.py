"""Small-data fine-tuning against the linear probe of the same encoder, per task and seed.

    python tools/bench_small_finetune.py --task-dir BENCH/keywords --task-dir BENCH/drums \\
        --encoder ENC_A1 [--encoder ENC_A2 ENC_A3] [--seeds 0 1 2] [--out OUT] [key=value ...]

Each ``--task-dir`` holds ``train.csv`` and ``test.csv`` (``path,label``, what ``tools/make_real_benchmark.py``
writes). ``--encoder`` takes exported encoders (``tools/export_encoder.py``): one for every seed, or one per
seed (e.g. the exports of pretraining runs with seeds 1, 2, 3, paired in order with ``--seeds``). For every
(task, seed) the tool runs

* the **linear probe** of :mod:`eat.eval.protocol` on the encoder's frozen embedding with the preset's
  ``model.layers`` / ``model.pooling`` (penalty chosen on the ``data.val_fraction`` split seeded with the
  seed, refitted on every training clip), and
* **fine-tuning** with the preset (``--config``, default ``recipes/configs/finetune_small.yaml``; trailing
  ``key=value`` overrides apply to it): LP-FT from the same encoder, selection on the same validation split,

and prints a markdown table of test accuracies (per seed, then mean ± std per task) and the wall times.
Each finished run is stored under ``--out`` (``<task>/seed<k>/result.json``) and is not run again when the
command is repeated, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from eat.cli import UsageError, cli_main
from eat.config import load_config
from eat.data.manifest import LabelSet, read_path_label_csv
from eat.eval.probe import probe
from eat.eval.protocol import encoder_embeddings
from eat.export import load_encoder
from eat.features import read_clips
from eat.train.dist import DistEnv
from eat.train.finetune import FinetuneConfig, run_finetune

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "finetune_small.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task-dir", type=Path, action="append", required=True,
                    help="folder with train.csv and test.csv (repeat for several tasks)")
    ap.add_argument("--encoder", type=Path, nargs="+", required=True,
                    help="exported encoder(s): one for all seeds or one per seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split / fine-tuning seeds")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="fine-tuning preset (YAML)")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_small_finetune"), help="output folder")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="preset overrides, e.g. train.max_steps=150")
    return ap.parse_intermixed_args(argv)


def task_files(task_dir: Path) -> tuple[Path, Path]:
    train, test = task_dir / "train.csv", task_dir / "test.csv"
    for p in (train, test):
        if not p.is_file():
            raise UsageError(f"{p}: not found (a --task-dir holds train.csv and test.csv)")
    return train, test


def linear_probe(encoder: Path, train: LabelSet, test: LabelSet, cfg: FinetuneConfig, seed: int) -> dict:
    """The probe protocol's linear probe of ``encoder`` on the preset's (layers, pooling) embedding."""
    extractor = load_encoder(encoder)
    sr = extractor.sample_rate
    spec, pooling = cfg.model.layers, cfg.model.pooling
    feats = []
    for split in (train, test):
        waves = read_clips([it.path for it in split.items], sr)
        bad = [w for w in waves if not isinstance(w, torch.Tensor)]
        if bad:
            raise UsageError(f"{len(bad)} unreadable clip(s), first: {bad[0]}")
        feats.append(encoder_embeddings(extractor, waves, [spec], [pooling])[(spec, pooling)])
    r = probe(feats[0], train.targets(), feats[1], test.targets(), "multiclass",
              num_classes=train.num_classes, weight_decays=tuple(cfg.model.probe_weight_decays),
              val_fraction=cfg.data.val_fraction, seed=seed)
    return {"acc": r["score"], "weight_decay": r["weight_decay"], "dim": r["dim"]}


def run_one(task_dir: Path, encoder: Path, seed: int, args: argparse.Namespace, out: Path) -> dict:
    train_csv, test_csv = task_files(task_dir)
    overrides = [*args.overrides, f"data.train={train_csv}", f"data.valid={test_csv}", f"model.init={encoder}",
                 f"train.seed={seed}", f"train.out_dir={out}", "train.tensorboard=false",
                 f"train.cpu_threads={args.threads}"]
    cfg = load_config(FinetuneConfig, args.config, overrides)
    train = read_path_label_csv(train_csv)
    test = read_path_label_csv(test_csv, class_names=train.class_names)
    t0 = time.time()
    lp = linear_probe(encoder, train, test, cfg, seed)
    t1 = time.time()
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    result = run_finetune(cfg, train, test, out, env)
    t2 = time.time()
    if result.status != "done":
        raise UsageError(f"{out}: fine-tuning stopped ({result.status}); run the command again to continue")
    return {"task": task_dir.name, "seed": seed, "encoder": str(encoder), "probe": lp["acc"],
            "probe_weight_decay": lp["weight_decay"], "finetuned": result.test["acc"],
            "trained_head": result.test.get("acc_trained_head", result.test["acc"]),
            "best_step": int(result.best["step"]), "best_val": result.best["acc"],
            "steps": int(result.last["step"]), "probe_s": t1 - t0, "finetune_s": t2 - t1}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def format_tables(rows: list[dict]) -> str:
    """Per-run rows, then mean ± std per task. ``fine-tuned`` is the preset's final model (with
    ``model.refit_head`` the selected encoder's head refitted on every training clip), ``trained head`` the
    selected checkpoint as trained; ``selected step`` 0 means validation kept the probe's head."""
    lines = ["| task | seed | probe | fine-tuned | Δ | trained head | selected step | probe s | fine-tune s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['seed']} | {r['probe']:.3f} | {r['finetuned']:.3f} | "
                     f"{r['finetuned'] - r['probe']:+.3f} | {r['trained_head']:.3f} | {r['best_step']}/{r['steps']} | "
                     f"{r['probe_s']:.0f} | {r['finetune_s']:.0f} |")
    lines += ["", "| task | probe | fine-tuned | trained head | fine-tuned ≥ probe | fine-tuning kept (step > 0) "
              "| fine-tune time |", "|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        wins = sum(r["finetuned"] >= r["probe"] for r in rs)
        moved = sum(r["best_step"] > 0 for r in rs)
        lines.append(f"| {task} | {mean_std([r['probe'] for r in rs])} | {mean_std([r['finetuned'] for r in rs])} | "
                     f"{mean_std([r['trained_head'] for r in rs])} | {wins}/{len(rs)} seeds | {moved}/{len(rs)} | "
                     f"{statistics.mean(r['finetune_s'] for r in rs):.0f} s/run |")
    return "\n".join(lines)


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if len(args.encoder) not in (1, len(args.seeds)):
        raise UsageError(f"--encoder: give one export or one per seed ({len(args.seeds)}), got {len(args.encoder)}")
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if not args.config.is_file():
        raise UsageError(f"--config {args.config}: not found")
    for enc in args.encoder:
        if not (enc / "config.json").is_file():
            raise UsageError(f"--encoder {enc}: not an export (no config.json)")
    for task_dir in args.task_dir:
        task_files(task_dir)
    torch.set_num_threads(args.threads)
    encoders = args.encoder * len(args.seeds) if len(args.encoder) == 1 else args.encoder
    jobs = [(t, e, s) for t in args.task_dir for e, s in zip(encoders, args.seeds, strict=True)]
    rows, start, ran = [], time.time(), 0
    for k, (task_dir, encoder, seed) in enumerate(jobs, 1):
        out = args.out / task_dir.name / f"seed{seed}"
        record = out / "result.json"
        if record.is_file():
            rows.append(json.loads(record.read_text()))
            print(f"[{k}/{len(jobs)}] {task_dir.name} seed {seed}: done before (probe {rows[-1]['probe']:.3f}, "
                  f"fine-tuned {rows[-1]['finetuned']:.3f})", flush=True)
            continue
        print(f"[{k}/{len(jobs)}] {task_dir.name} seed {seed}: probe + fine-tuning of {encoder}", flush=True)
        row = run_one(task_dir, encoder, seed, args, out)
        record.write_text(json.dumps(row, indent=1) + "\n")
        rows.append(row)
        ran += 1
        per_run = (time.time() - start) / ran
        eta = per_run * (len(jobs) - k)
        print(f"[{k}/{len(jobs)}] {task_dir.name} seed {seed}: probe {row['probe']:.3f}, fine-tuned "
              f"{row['finetuned']:.3f} (step {row['best_step']}); {row['probe_s'] + row['finetune_s']:.0f} s, "
              f"ETA {eta / 60:.1f} min", flush=True)
    table = format_tables(rows)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table)
    print(f"results written to {args.out / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
