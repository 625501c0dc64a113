"""EAT self-supervised pretraining (AudioSet-2M recipe, or your own audio), single process or under torchrun.

    python recipes/pretrain_as2m.py --config recipes/configs/tiny.yaml data.train_manifest=train.tsv
    torchrun --nproc_per_node=4 recipes/pretrain_as2m.py --config recipes/configs/pretrain_as2m.yaml \\
        data.train_manifest=/data/as2m/train.tsv train.out_dir=runs/eat_base
    python recipes/pretrain_as2m.py --config recipes/configs/pretrain_own_data.yaml --data-dir /my/audio \\
        model.init=EAT-base_epoch10_pt.pt

Settings are ``section.key=value`` overrides on top of the YAML file (sections below). ``train.resume=auto``
(the default) continues from the newest good checkpoint in ``train.out_dir``. A run stopped by SIGTERM or
SIGUSR1 saves a checkpoint and exits with status 75; run the same command again to continue.
``model.init=PATH`` starts from pretrained weights (an official EAT checkpoint, one of our runs or an
exported encoder) with a fresh optimizer and schedule. ``--data-dir`` builds the manifest, the
normalisation statistics and the clip length from a folder of audio (under ``train.out_dir/data``) first.
Everything runs in ``eat.train.pretrain``; this file only reads the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from eat.cli import cli_main
from eat.config import load_config
from eat.train.dist import install_preemption_handler
from eat.train.pretrain import PretrainConfig, check_config, own_data_overrides, run


def _sections_help() -> str:
    lines = ["config sections (override any key as section.key=value):"]
    for f in dataclasses.fields(PretrainConfig):
        if f.name == "model":
            lines.append("  model: preset (base|large|tiny), init (pretrained weights) and any EATConfig field, "
                         "e.g. model.clone_batch=8, model.encoder.target_length=512")
            continue
        section = f.default_factory()
        keys = ", ".join(f"{k.name}={getattr(section, k.name)!r}" for k in dataclasses.fields(section))
        lines.append(f"  {f.name}: {keys}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=_sections_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", type=Path, help="YAML file (e.g. recipes/configs/pretrain_as2m.yaml)")
    ap.add_argument("--resume", metavar="PATH", help="continue from this run or step_* directory "
                    "(same as train.resume=PATH; default: train.resume=auto)")
    ap.add_argument("--data-dir", metavar="DIR", help="a folder of audio (wav/flac, searched recursively): build "
                    "its manifest, normalisation statistics and clip length, then train on it")
    ap.add_argument("--prepare-only", action="store_true", help="with --data-dir: prepare the data and stop")
    ap.add_argument("--check", action="store_true", help="only validate the config, the manifest path and "
                    "whether model.init's tensor shapes fit the model, then exit (make pretrain runs this "
                    "before torchrun)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    args = ap.parse_intermixed_args(argv)
    if args.prepare_only and not args.data_dir:
        ap.error("--prepare-only needs --data-dir")
    return args


@cli_main
def main(argv: list[str] | None = None) -> None:
    preempt = install_preemption_handler()  # a SIGTERM from here on is remembered, not fatal
    try:
        args = parse_args(argv)
        overrides = list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume else [])
        if args.data_dir:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            overrides, data = own_data_overrides(args.config, overrides, args.data_dir, world,
                                                 progress=os.environ.get("RANK", "0") == "0")
            if os.environ.get("RANK", "0") == "0" and not args.check:
                print(f"{args.data_dir}: {data.clips} clips ({data.skipped} unreadable left out), manifest "
                      f"{data.manifest}\n  normalisation mean {data.norm_mean:.4f} std {data.norm_std:.4f}\n  "
                      f"{data.explanation}", flush=True)
            if args.prepare_only:
                return
        cfg = load_config(PretrainConfig, args.config, overrides)
        check_config(cfg, deep=args.check)
        if args.check:
            print(f"config ok: {args.config or '(defaults)'} with {len(overrides)} override(s)")
            return
        status = run(cfg)
    finally:
        preempt.uninstall()
    sys.exit(status)


if __name__ == "__main__":
    main()
