"""Linear probe (and optional kNN) of frozen clip embeddings; prints accuracy or mAP.

    # an exported encoder on labelled clips
    python tools/linear_probe.py --encoder EXPORT --train train.csv --test test.csv [--knn 10] [--json]
    python tools/linear_probe.py --encoder EXPORT --esc50-root ESC50 --fold 1
    # a baseline without a network: per-mel-bin mean and std of the log-mel spectrogram
    python tools/linear_probe.py --baseline logmel --esc50-root ESC50 --fold 1
    # any precomputed features: .npz files holding x (N, D) and y ((N,) indices or (N, C) 0/1)
    python tools/linear_probe.py --train-features train.npz --test-features test.npz

Label files: ``.csv`` (``path,label``), ``.tsv`` (fairseq manifest with its ``.lbl`` file next to it)
or ``.json`` (AST style); the last two need ``--class-csv``. ``--esc50-root`` trains on the four other
folds and tests on ``--fold``. The task (multiclass / multilabel) follows the labels unless ``--task``
says otherwise. Features are standardised with training statistics, the probe is a full-batch L-BFGS
logistic regression whose weight decay is chosen on 20 % of the training clips (see
``eat.eval.probe``). Unreadable clips are skipped and counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eat.audio.fbank import FrontendConfig
from eat.audio.io import AudioError
from eat.cli import UsageError, about, cli_main
from eat.data.manifest import (
    LabelSet,
    ManifestError,
    read_ast_json,
    read_eat_labels,
    read_esc50,
    read_path_label_csv,
)
from eat.eval.probe import DEFAULT_WEIGHT_DECAYS, TASKS, probe
from eat.eval.protocol import encoder_embeddings
from eat.export import ExportError, load_encoder
from eat.features import FeatureExtractor, logmel_statistics, read_clips
from eat.model.pooling import DEFAULT_LAYERS, DEFAULT_POOLING, POOLINGS, parse_layers


class ToolError(UsageError):
    """A user-facing problem with this tool's inputs."""


# ---------------------------------------------------------------------------------------------- labels


def read_split(path: Path, class_csv: Path | None, class_names: list[str] | None = None) -> LabelSet:
    """Labelled clips from a ``.csv`` / ``.tsv`` / ``.json`` file (see the module docstring)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_path_label_csv(path, class_names=class_names)
    if suffix in (".tsv", ".json"):
        if class_csv is None:
            raise ToolError(f"{path}: {suffix} labels need --class-csv (index,mid,display_name)")
        if suffix == ".json":
            return read_ast_json(path, class_csv)
        lbl = path.with_suffix(".lbl")
        if not lbl.is_file():
            raise ToolError(f"{path}: no label file {lbl.name} next to the manifest")
        return read_eat_labels(path, lbl, class_csv)
    raise ToolError(f"{path}: unknown label file type {suffix or '(none)'}; use .csv, .tsv or .json")


# ---------------------------------------------------------------------------------------------- features


def embed(
    paths: list[Path], extractor: FeatureExtractor | None, frontend: FrontendConfig, batch_size: int,
    layers: str, pooling: str, desc: str,
) -> tuple[torch.Tensor, list[int], list[str]]:
    """Utterance embeddings of the readable clips: ``(features, kept indices, error messages)``."""
    feats, kept, errors = [], [], []
    for lo in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", file=sys.stderr):
        batch = read_clips(paths[lo : lo + batch_size], frontend.sample_rate)
        good = [(lo + i, w) for i, w in enumerate(batch) if not isinstance(w, AudioError)]
        errors += [str(w) for w in batch if isinstance(w, AudioError)]
        if not good:
            continue
        waves = [w for _, w in good]
        if extractor is None:
            feats.append(logmel_statistics(waves, frontend))
        else:
            feats.append(encoder_embeddings(extractor, waves, [layers], [pooling], batch_size)[(layers, pooling)])
        kept += [i for i, _ in good]
    dim = feats[0].shape[1] if feats else 0
    return (torch.cat(feats) if feats else torch.zeros(0, dim)), kept, errors


def load_npz(path: Path, role: str = "training") -> tuple[np.ndarray, np.ndarray]:
    """``x`` (N, D) and ``y`` of a features file, checked on their own; every problem names ``path``."""
    if not path.is_file():
        raise ToolError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ToolError(f"{path}: a single array, not an .npz archive with 'x' and 'y'")
            if "x" not in data or "y" not in data:
                raise ToolError(f"{path}: needs arrays 'x' (features) and 'y' (labels), found {', '.join(data.files)}")
            x, y = data["x"], data["y"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ToolError(f"{path}: not a readable .npz file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0 or x.dtype.kind not in "fiu":
        raise ToolError(f"{path}: x must be a non-empty (N, D) array of numbers, got {x.dtype} {x.shape}")
    bad = np.nonzero(~np.isfinite(x).all(axis=1))[0]
    if bad.size:
        raise ToolError(f"{path}: the {role} features (x) hold NaN or inf, first in row {int(bad[0])}")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ToolError(f"{path}: {y.shape[0] if y.ndim else 'no'} labels (y) for {x.shape[0]} feature rows (x)")
    return x, y


# ---------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict:
    kwargs = dict(knn=args.knn, seed=args.seed, weight_decays=tuple(args.weight_decays), device=args.device)
    if args.train_features is not None:
        tx, ty = load_npz(args.train_features, "training")
        vx, vy = load_npz(args.test_features, "test")
        task = args.task or ("multilabel" if ty.ndim == 2 else "multiclass")
        with about(f"--train-features {args.train_features} / --test-features {args.test_features}"):
            return probe(tx, ty, vx, vy, task, **kwargs) | {"features": "precomputed"}

    if args.esc50_root is not None:
        folds = {1, 2, 3, 4, 5} - {args.fold}
        train, test = read_esc50(args.esc50_root, folds), read_esc50(args.esc50_root, [args.fold])
    else:
        train = read_split(args.train, args.class_csv)
        test = read_split(args.test, args.class_csv, class_names=train.class_names)
    if train.class_names != test.class_names:
        raise ToolError("train and test label files define different classes")
    multilabel = (args.task == "multilabel") if args.task else (train.multi_label or test.multi_label)
    if not multilabel and (train.multi_label or test.multi_label):
        raise ToolError("--task multiclass, but some clips carry several labels")

    if args.encoder is not None:
        extractor = load_encoder(args.encoder, args.device or "cpu")
        frontend, source = extractor.frontend, str(args.encoder)
        parse_layers(args.layers, extractor.num_layers)  # a bad spec fails before any clip is read
        if args.pooling == "cls" and extractor.encoder.cfg.num_extra_tokens == 0:
            raise ToolError(f"{args.encoder}: this encoder has no CLS token; use another --pooling")
    else:
        extractor, frontend, source = None, FrontendConfig(), "logmel-statistics"
    splits = {}
    skipped: list[str] = []
    for name, labels in (("train", train), ("test", test)):
        paths = [item.path for item in labels.items]
        x, kept, errors = embed(paths, extractor, frontend, args.batch_size, args.layers, args.pooling, name)
        if not kept:
            raise ToolError(f"no readable clips in the {name} split ({errors[0] if errors else 'empty'})")
        splits[name] = (x, labels.targets(multilabel)[kept])
        skipped += errors
    for msg in skipped[:5]:
        print(f"warning: skipped {msg}", file=sys.stderr)
    task = "multilabel" if multilabel else "multiclass"
    result = probe(*splits["train"], *splits["test"], task, num_classes=train.num_classes, **kwargs)
    return result | {"features": source, "layers": args.layers if extractor else None,
                     "pooling": args.pooling if extractor else None, "skipped": len(skipped)}


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("features (pick one)")
    src.add_argument("--encoder", type=Path, help="exported encoder directory (tools/export_encoder.py)")
    src.add_argument("--baseline", choices=("logmel",), help="no network: log-mel mean/std statistics")
    src.add_argument("--train-features", type=Path, help=".npz with x, y (then also --test-features)")
    src.add_argument("--test-features", type=Path)
    data = ap.add_argument_group("labelled clips (with --encoder / --baseline)")
    data.add_argument("--train", type=Path, help="training clips: .csv (path,label), .tsv (+ .lbl) or .json")
    data.add_argument("--test", type=Path, help="test clips, same formats")
    data.add_argument("--class-csv", type=Path, help="class csv (index,mid,display_name) for .tsv/.json labels")
    data.add_argument("--esc50-root", type=Path, help="ESC-50-shaped root (meta/esc50.csv + audio/)")
    data.add_argument("--fold", type=int, help="ESC-50 test fold (1-5); the other folds train")
    ap.add_argument("--task", choices=TASKS, help="default: from the labels")
    ap.add_argument("--knn", type=int, help="also report cosine k-nearest-neighbour with this k")
    ap.add_argument("--layers", "--layer", default=DEFAULT_LAYERS,
                    help=f"block(s) read: -1 (last), 0 (first), 0+2 (concatenated), all (default {DEFAULT_LAYERS}; "
                         "write --layers=-1 for a negative index)")
    ap.add_argument("--pooling", choices=POOLINGS, default=DEFAULT_POOLING,
                    help=f"pooling of each block's tokens (default {DEFAULT_POOLING}; see tools/probe_protocol.py)")
    ap.add_argument("--weight-decays", type=float, nargs="+", default=list(DEFAULT_WEIGHT_DECAYS),
                    help="L2 grid searched on the validation split")
    ap.add_argument("--batch-size", type=int, default=16, help="clips per encoder batch (default 16)")
    ap.add_argument("--device", help="cpu or cuda (default cpu)")
    ap.add_argument("--seed", type=int, default=0, help="validation split seed")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)

    modes = [args.encoder is not None, args.baseline is not None, args.train_features is not None]
    if sum(modes) != 1:
        sys.exit("error: give exactly one of --encoder, --baseline, --train-features")
    if args.train_features is not None and args.test_features is None:
        sys.exit("error: --train-features needs --test-features")
    if args.train_features is None:
        if args.esc50_root is None and (args.train is None or args.test is None):
            sys.exit("error: give --train and --test, or --esc50-root and --fold")
        if args.esc50_root is not None and args.fold not in (1, 2, 3, 4, 5):
            sys.exit("error: --esc50-root needs --fold 1..5")
    if args.batch_size < 1 or (args.knn is not None and args.knn < 1):
        sys.exit("error: --batch-size and --knn must be positive")
    try:
        result = run(args)
    except (ToolError, ExportError, ManifestError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps(result))
        return
    line = f"{result['metric']} {result['score']:.4f} (weight decay {result['weight_decay']:g}, " \
           f"{result['num_train']} train / {result['num_test']} test clips, dim {result['dim']})"
    if "knn" in result:
        line += f"; kNN(k={result['knn']['k']}) {result['knn']['score']:.4f}"
    print(line)


if __name__ == "__main__":
    main()
