"""Fine-tune an (exported, pretrained) encoder with a classification head on a downstream task.

    python recipes/finetune.py --task esc50 --esc50-root DIR [--init ENCODER_DIR] [--preset tiny] \\
        [--config FILE] [--out DIR] [key.sub=value ...]

Tasks and their official EAT settings live in ``recipes/configs/finetune_{task}.yaml``:
``esc50`` (5-fold cross-validation: train on 4 folds, evaluate on the 5th, for every fold; prints a table
and writes ``OUT/esc50_summary.json``), ``as20k`` / ``as2m`` (AudioSet, EAT manifests + .lbl labels;
AS-2M samples 200k class-weighted clips per epoch), ``spc2`` (Speech Commands v2 folder with its
validation/testing lists), ``generic`` (``path,label`` csv files ``data.train`` / ``data.valid``) and
``small`` (the same csv files, a few hundred clips: LP-FT on the probe's embedding, the checkpoint chosen
on a held-out part of the training clips and ``data.valid`` scored once with it) and ``sed`` (sound event
detection from strong-label tables, see eat.train.sed: frame + clip BCE, selection on validation PSDS1,
``OUT/best`` is a detector for tools/sed_infer.py with ``OUT/postprocess.json``).
Any config key can be overridden as ``key.sub=value`` (e.g. ``train.max_steps=1000 optim.lr=1e-4``).
The architecture comes from ``--init``'s config.json unless ``--preset`` names one (they must agree).
Runs resume from ``OUT`` (per fold for ESC-50) when started again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from eat.cli import cli_main
from eat.config import ConfigError, load_config, to_dict
from eat.data.loaders import check_loader_config
from eat.train.dist import DistEnv, init_distributed, install_preemption_handler, shutdown
from eat.train.finetune import FinetuneConfig, FinetuneResult, run_finetune
from eat.train.finetune_data import ESC50_FOLDS, task_splits
from eat.train.sed import SEDFinetuneConfig, run_sed
from eat.train.trainer import PREEMPTED_EXIT, check_train_config

TASKS = ("esc50", "as20k", "as2m", "spc2", "generic", "small", "sed")
PRESETS = ("tiny", "base", "large", "ast_base", "passt_s")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=TASKS, required=True, help="downstream task")
    ap.add_argument("--config", type=Path, help="YAML config (default recipes/configs/finetune_<task>.yaml)")
    ap.add_argument("--init", help="exported encoder directory (config.json + model.safetensors) to start from")
    ap.add_argument("--preset", choices=PRESETS, help="architecture (default: --init's, else base)")
    ap.add_argument("--esc50-root", help="ESC-50 folder (meta/esc50.csv + audio/); --task esc50 only")
    ap.add_argument("--out", type=Path, help="output folder (default train.out_dir of the config)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=100")
    return ap.parse_intermixed_args(argv)


def load(args: argparse.Namespace) -> FinetuneConfig:
    """The run config: YAML, then ``key=value`` overrides, then the dedicated flags."""
    path = args.config or CONFIG_DIR / f"finetune_{args.task}.yaml"
    cfg = load_config(FinetuneConfig, path, args.overrides)
    cfg.task = args.task
    if args.init:
        cfg.model.init = args.init
    if args.preset:
        cfg.model.preset = args.preset
    if args.esc50_root:
        if args.task != "esc50":
            raise ConfigError("--esc50-root is only for --task esc50 (use data.root=... otherwise)")
        cfg.data.root = args.esc50_root
    if args.out:
        cfg.train.out_dir = str(args.out)
    if args.task == "esc50" and cfg.data.format != "esc50":
        raise ConfigError(f"--task esc50 needs data.format esc50, the config has {cfg.data.format!r}")
    if args.task != "esc50" and cfg.data.format == "esc50":
        raise ConfigError(f"data.format is esc50 (the default when {path} does not set it), which only --task esc50 "
                          "reads; set data.format (csv for path,label files, eat, ast_json, spc2 or shards)")
    bad = [f for f in cfg.data.folds if f not in ESC50_FOLDS]
    if bad or not cfg.data.folds:
        raise ConfigError(f"data.folds must be a non-empty subset of {list(ESC50_FOLDS)}, got {cfg.data.folds}")
    return cfg


def load_sed(args: argparse.Namespace) -> SEDFinetuneConfig:
    """The ``--task sed`` config (its own sections, see eat.train.sed)."""
    if args.esc50_root or args.preset:
        raise ConfigError("--esc50-root and --preset are not used by --task sed (the encoder comes from --init)")
    cfg = load_config(SEDFinetuneConfig, args.config or CONFIG_DIR / "finetune_sed.yaml", args.overrides)
    if args.init:
        cfg.model.init = args.init
    if args.out:
        cfg.train.out_dir = str(args.out)
    return cfg


def run_sed_task(cfg: SEDFinetuneConfig, env: DistEnv) -> None:
    summary = run_sed(cfg, env)
    if summary["status"] != "done":
        sys.exit(PREEMPTED_EXIT)
    if env.is_main:
        out = Path(cfg.train.out_dir)
        best, test = summary["best"], summary["test"]
        print(f"best validation PSDS1 {best['psds1']:.4f} at step {int(best['step'])}"
              + (f" (exported to {out / 'best'})" if cfg.model.kind == "encoder" else ""))
        print(f"post-processing chosen on validation: median filter {summary['post']['median_filter']} s, "
              f"thresholds {', '.join(f'{t:.2f}' for t in summary['post']['thresholds'])} ({out / 'postprocess.json'})")
        print("evaluation split (selected checkpoint): " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))


def esc50_table(results: dict[int, FinetuneResult]) -> tuple[str, dict]:
    """Per-fold accuracy at the end of training and at the best evaluation, and their means."""
    rows = ["fold | acc (last) | acc (best) | best step", "-----+------------+------------+----------"]
    folds = {}
    for fold, r in results.items():
        last, best = r.last["acc"], r.best["acc"]
        folds[fold] = {"acc_last": last, "acc_best": best, "best_step": int(r.best["step"]),
                       "steps": int(r.last["step"]), "out_dir": str(r.out_dir)}
        rows.append(f"{fold:>4} | {last:10.4f} | {best:10.4f} | {int(r.best['step']):>9}")
    n = len(folds)
    mean_last = sum(f["acc_last"] for f in folds.values()) / n
    mean_best = sum(f["acc_best"] for f in folds.values()) / n
    rows.append(f"mean | {mean_last:10.4f} | {mean_best:10.4f} |")
    summary = {"task": "esc50", "folds": folds, "mean_acc_last": mean_last, "mean_acc_best": mean_best}
    return "\n".join(rows), summary


def run_esc50(cfg: FinetuneConfig, env: DistEnv) -> None:
    out = Path(cfg.train.out_dir)
    results: dict[int, FinetuneResult] = {}
    for fold in cfg.data.folds:
        train_set, eval_set = task_splits(cfg.data, fold)
        if env.is_main:
            print(f"== ESC-50 fold {fold}: train {len(train_set)} clips (other folds), evaluate {len(eval_set)}",
                  flush=True)
        results[fold] = run_finetune(cfg, train_set, eval_set, out / f"fold{fold}", env)
        if results[fold].status != "done":
            sys.exit(PREEMPTED_EXIT)  # preempted: rerun the same command to resume
    table, summary = esc50_table(results)
    if env.is_main:
        summary["config"] = to_dict(cfg)
        path = out / "esc50_summary.json"
        path.write_text(json.dumps(summary, indent=1) + "\n")
        print(table)
        print(f"summary written to {path}")
        print(f"mean accuracy over {len(results)} folds (last checkpoint): {summary['mean_acc_last']:.4f}")


def run_single(cfg: FinetuneConfig, env: DistEnv) -> None:
    train_set, eval_set = task_splits(cfg.data)
    if env.is_main:
        kind = "multi-label" if train_set.multi_label else "single-label"
        print(f"== {cfg.task}: {train_set.num_classes} classes ({kind}), train {len(train_set)} clips, "
              f"evaluate {len(eval_set)}", flush=True)
    result = run_finetune(cfg, train_set, eval_set, cfg.train.out_dir, env)
    if result.status != "done":
        sys.exit(PREEMPTED_EXIT)
    if env.is_main:
        m = result.metric
        summary = {"task": cfg.task, "metric": m, "last": result.last, "best": result.best, "test": result.test,
                   "probe": result.probe, "history": result.history, "config": to_dict(cfg)}
        path = Path(cfg.train.out_dir) / f"{cfg.task}_summary.json"
        path.write_text(json.dumps(summary, indent=1) + "\n")
        where = "validation " if result.test else ""
        print(f"best {where}{m} {result.best[m]:.4f} at step {int(result.best['step'])} "
              f"(exported to {result.out_dir / 'best'})")
        print(f"summary written to {path}")
        if result.test:
            print(f"{m} on {cfg.data.valid or 'the evaluation split'} (selected checkpoint): {result.test[m]:.4f}")
        else:
            print(f"{m} (last checkpoint): {result.last[m]:.4f}")


def configure_logging(env: DistEnv) -> None:
    level = logging.INFO if env.is_main else logging.ERROR
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout,
                        force=True)


@cli_main
def main(argv: list[str] | None = None) -> None:
    preempt = install_preemption_handler()  # a SIGTERM during start-up is remembered, not fatal
    try:
        args = parse_args(argv)
        if args.task == "sed":
            sed_cfg = load_sed(args)
            check_train_config(sed_cfg.train)
            check_loader_config(sed_cfg.data.batch_size, sed_cfg.data.num_workers, 1, 0.0)
            env = init_distributed(sed_cfg.train.device)
            try:
                configure_logging(env)
                run_sed_task(sed_cfg, env)
                shutdown(synchronize=True)
            finally:
                shutdown()
            return
        cfg = load(args)
        check_train_config(cfg.train)
        check_loader_config(cfg.data.batch_size, cfg.data.num_workers, 1, cfg.data.max_bad_fraction,
                            max_bad_clips=cfg.data.max_bad_clips)
        if cfg.data.eval_batch_size < 0:
            raise ConfigError(f"data.eval_batch_size: must be >= 0, got {cfg.data.eval_batch_size}")
        env = init_distributed(cfg.train.device)
        try:
            configure_logging(env)
            (run_esc50 if args.task == "esc50" else run_single)(cfg, env)
            shutdown(synchronize=True)  # ranks leave together (see eat.train.dist.shutdown)
        finally:
            shutdown()
    finally:
        preempt.uninstall()


if __name__ == "__main__":
    main()
