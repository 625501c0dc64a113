"""Demo of the data pipeline on synthetic audio (the full pretrain -> fine-tune demo builds on this).

    python tools/demo.py --out outputs/demo [--seed 0]

Writes a small unlabelled corpus and an ESC-50-shaped labelled set under ``--out``, then runs them
through the datasets and loaders the trainer uses (fbank, inverse block masks made in the loader
workers, labels) and prints what comes out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from make_synthetic_data import make_esc50_like, make_unlabelled_corpus

from eat.audio.fbank import FrontendConfig
from eat.data.datasets import LabelledDataset, MaskConfig, PretrainDataset
from eat.data.loaders import ResumableDistributedSampler, build_loader
from eat.data.manifest import ManifestError, read_esc50, read_manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    try:
        manifest_path = make_unlabelled_corpus(args.out / "unlabelled", num_clips=32, duration=3.0, seed=args.seed)
        esc_root = make_esc50_like(args.out / "esc50", num_classes=10, clips_per_class=10, duration=2.0,
                                   seed=args.seed)
    except OSError as e:
        sys.exit(f"error: cannot write under {args.out}: {e}")
    try:
        manifest = read_manifest(manifest_path)
        train, test = read_esc50(esc_root, folds=[1, 2, 3, 4]), read_esc50(esc_root, folds=[5])
    except ManifestError as e:
        sys.exit(f"error: {e}")
    hours = sum(manifest.num_samples()) / 16000 / 3600
    print(f"synthetic data in {time.perf_counter() - t0:.1f} s under {args.out}")
    print(f"  unlabelled manifest {manifest_path}: {len(manifest)} clips, {hours * 60:.1f} min")
    print(f"  esc50-like {esc_root}: {train.num_classes} classes, {len(train)} train / {len(test)} test clips")

    frontend = FrontendConfig(target_length=320)  # 3.2 s of 10 ms frames
    pretrain = PretrainDataset(manifest, frontend, mask_cfg=MaskConfig(clones=4), seed=args.seed)
    loader = build_loader(pretrain, ResumableDistributedSampler(len(pretrain), seed=args.seed), batch_size=8,
                          num_workers=2)
    batch = next(iter(loader))
    mask = batch["mask"]
    print(f"pretraining batch: source {tuple(batch['source'].shape)}, mask {tuple(mask.shape)} "
          f"({mask.float().mean():.0%} masked), source mean {batch['source'].mean():+.3f} std {batch['source'].std():.3f}")

    labelled = LabelledDataset.from_labels(test, FrontendConfig.from_preset("esc50", target_length=208))
    for i in range(3):
        item = labelled[i]
        print(f"  {test.items[i].path.name}: source {tuple(item['source'].shape)}, "
              f"class {item['target']} ({test.class_names[item['target']]})")


if __name__ == "__main__":
    main()
