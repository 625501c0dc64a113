"""Mean and std of the log-mel input over a manifest, for ``FrontendConfig.norm_mean`` / ``norm_std``.

Each clip goes through the front-end exactly as in training up to, not including, normalisation: decode
and resample, subtract the clip mean, fbank, pad/crop to ``--target-length`` frames (padding counts, as
in the AST/EAT statistics; ``--target-length 0`` uses each clip's own frames). The statistics are
accumulated per clip in float64 and merged with Chan's parallel formula, so millions of clips lose no
precision. Unreadable files are skipped and counted.

Example: ``python tools/compute_norm_stats.py data/train.tsv --max-clips 20000 --workers 8``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from eat.audio.fbank import NORM_PRESETS, FrontendConfig
from eat.cli import check_workers, cli_main
from eat.config import ConfigError
from eat.data.manifest import ManifestError, read_manifest
from eat.data.norm_stats import compute_stats


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", type=Path, help="tsv manifest: root directory, then 'relpath<TAB>num_samples' lines")
    p.add_argument("--max-clips", type=int, default=None, help="use a random subset of this many clips")
    p.add_argument("--seed", type=int, default=0, help="seed for the subset and for random crops")
    p.add_argument("--preset", default="audioset", choices=sorted(NORM_PRESETS),
                   help="front-end preset for the defaults (default audioset)")
    p.add_argument("--target-length", type=int, default=None,
                   help="pad/crop to this many frames (default: the preset's); 0 = each clip's own frames")
    p.add_argument("--crop", choices=["head", "random"], default="head", help="how long clips are cropped")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--num-mel-bins", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    check_workers(args.workers)
    try:
        if args.max_clips is not None and args.max_clips <= 0:
            raise ConfigError(f"--max-clips must be positive, got {args.max_clips}")
        if args.target_length is not None and args.target_length < 0:
            raise ConfigError(f"--target-length must be >= 0, got {args.target_length}")
        cfg = FrontendConfig.from_preset(args.preset, crop=args.crop, sample_rate=args.sample_rate,
                                         num_mel_bins=args.num_mel_bins)
        manifest = read_manifest(args.manifest)
    except (ConfigError, ManifestError) as e:
        sys.exit(f"error: {e}")
    paths = manifest.paths()
    if not paths:
        sys.exit(f"error: {args.manifest}: the manifest lists no clips")
    if args.max_clips is not None and args.max_clips < len(paths):
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(args.seed))
        paths = [paths[i] for i in sorted(order[: args.max_clips].tolist())]
    target = cfg.target_length if args.target_length is None else args.target_length

    stats, skipped = compute_stats(paths, cfg, target, args.workers, args.seed, progress=not args.quiet)
    for msg in skipped[:5]:
        print(f"warning: skipped {msg}", file=sys.stderr)
    if len(skipped) > 5:
        print(f"warning: ... and {len(skipped) - 5} more unreadable files", file=sys.stderr)
    if stats.count == 0:
        sys.exit(f"error: {args.manifest}: none of the {len(paths)} clips could be read")
    result = {"mean": stats.mean, "std": stats.std, "clips": len(paths) - len(skipped), "skipped": len(skipped),
              "values": stats.count, "target_length": target, "manifest": str(args.manifest)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"mean {stats.mean:.6f}  std {stats.std:.6f}  over {result['clips']} clips "
              f"({stats.count // cfg.num_mel_bins} frames), {len(skipped)} skipped")
        print(f"FrontendConfig(norm_mean={stats.mean:.4f}, norm_std={stats.std:.4f})")


if __name__ == "__main__":
    main()
