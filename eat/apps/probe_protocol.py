"""Probe protocol: linear probes over layers x poolings for encoders, their initial weights and log-mel.

    python tools/probe_protocol.py --encoder pretrained=EXPORT [--control-from RUN_DIR] \\
        --task-dir BENCH/keywords --task-dir BENCH/language [--layers=-1,0,all] \\
        [--pooling mean,meanstd,cls] [--json results.json]

Each ``--task-dir`` holds ``train.csv`` and ``test.csv`` (``path,label``; what
``tools/make_real_benchmark.py`` writes); ``--train``/``--test`` name one pair of csv files instead.
Sources: every ``--encoder [NAME=]DIR`` (an export of ``tools/export_encoder.py``), with
``--control-from RUN_DIR`` the network that pretraining run started from (its config and seed, the first
encoder's front-end; labelled "initial weights"), and the pooled log-mel baseline (``--no-logmel`` drops
it). Layer specs: ``-1`` last block, ``0`` first, ``0+2`` concatenation, ``all`` every block. Poolings:
``mean`` / ``meanstd`` of the patch tokens, ``band-mean`` / ``band-meanstd`` (the same within each
frequency band, bands concatenated), ``cls``. Prints one markdown table per task (test accuracy; mAP for
poly-TASK; the probe's weight decay is chosen on 20 % of the training clips, see ``eat.eval.probe``) and, per source, the
cell with the best validation score (marked ``*``): the number to report, chosen without the test split.
Unreadable clips are skipped and counted. A ``group`` column in the training csv (``path,label,group``:
speaker / source / kit) makes the probes' validation split take whole groups. ``--polyphonic`` adds, per
task, ``poly-TASK``: multi-label tagging (mAP) of mixtures of 2-3 clips of different classes, training
mixtures from the training clips and test mixtures from the test clips (``eat.eval.polyphonic``; as many
mixtures as clips). ``--summarize a.json b.json c.json`` turns the JSON files of several seeds into one
table: each source's validation-chosen cell, mean ± std over the seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from eat.audio.fbank import FrontendConfig
from eat.audio.io import AudioError
from eat.config import load_config
from eat.data.manifest import ManifestError, read_path_label_csv
from eat.eval.polyphonic import POLY_PREFIX, make_mixtures
from eat.eval.probe import DEFAULT_WEIGHT_DECAYS
from eat.eval.protocol import (
    CONTROL,
    LOGMEL,
    encoder_embeddings,
    evaluate,
    format_table,
    logmel_embeddings,
    read_probe_json,
    seed_summary,
    select_on_validation,
)
from eat.export import ExportError, load_encoder
from eat.features import FeatureExtractor, read_clips
from eat.model.pooling import POOLINGS, check_poolings, parse_layers
from eat.train.pretrain import PretrainConfig, build_model


def initial_weights(run_dir: str | Path, frontend: FrontendConfig) -> FeatureExtractor:
    """The network a pretraining run started from, built by the recipe's own :func:`eat.train.pretrain.build_model`
    from ``run_dir/config.yaml`` (seeded with ``train.seed``; with ``model.init``, the weights it loaded), so the
    control differs from the pretrained encoder only by the training. ``frontend`` should be the pretrained
    export's, so both see the same inputs. The global torch RNG is left as it was."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{path}: no such file (give the pretraining run's out_dir)")
    cfg = load_config(PretrainConfig, path)
    state = torch.random.get_rng_state()
    try:
        model, _ = build_model(cfg)
    finally:
        torch.random.set_rng_state(state)
    return FeatureExtractor(model.student.float().eval(), frontend)


def load_split(path: Path, sample_rate: int, class_names: list[str] | None
               ) -> tuple[list, torch.Tensor, list[str], int, list[str] | None]:
    """Readable waveforms, their class indices, the class names, the number of skipped clips and the readable
    clips' groups (a ``group`` column; None without one)."""
    labels = read_path_label_csv(path, class_names=class_names)
    waves = read_clips([item.path for item in labels.items], sample_rate)
    keep = [i for i, w in enumerate(waves) if not isinstance(w, AudioError)]
    for w in [w for w in waves if isinstance(w, AudioError)][:3]:
        print(f"warning: skipped {w}", file=sys.stderr)
    if not keep:
        raise ManifestError(f"{path}: no readable clips")
    y = torch.tensor([labels.items[i].labels[0] for i in keep])
    groups = labels.groups()
    return ([waves[i] for i in keep], y, labels.class_names, len(waves) - len(keep),
            None if groups is None else [groups[i] for i in keep])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", action="append", default=[], metavar="[NAME=]DIR", help="an exported encoder")
    ap.add_argument("--control-from", type=Path, metavar="RUN_DIR",
                    help="pretraining run folder (config.yaml): add its initial weights as a source")
    ap.add_argument("--no-logmel", action="store_true", help="leave out the log-mel baseline")
    ap.add_argument("--task-dir", action="append", type=Path, default=[], help="folder with train.csv and test.csv")
    ap.add_argument("--train", type=Path, help="training csv (path,label), with --test")
    ap.add_argument("--test", type=Path, help="test csv")
    ap.add_argument("--layers", default="-1,all", help="comma-separated layer specs; write --layers=-1,... when the list starts with a minus (default -1,all)")
    ap.add_argument("--pooling", default=",".join(POOLINGS), help=f"comma-separated poolings (default all: {','.join(POOLINGS)})")
    ap.add_argument("--weight-decays", type=float, nargs="+", default=list(DEFAULT_WEIGHT_DECAYS),
                    help="L2 grid searched on the validation split")
    ap.add_argument("--batch-size", type=int, default=32, help="clips per encoder batch (default 32)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--seed", type=int, default=0, help="validation split seed")
    ap.add_argument("--polyphonic", action="store_true",
                    help="also probe poly-TASK: multi-label mixtures of 2-3 clips of each task (mAP)")
    ap.add_argument("--json", type=Path, help="also write every result to this file")
    ap.add_argument("--summarize", type=Path, nargs="+", metavar="JSON",
                    help="no probing: summarise --json files of several seeds (one pretrained encoder each): the "
                         "validation-chosen cell of each source, mean ± std over the files")
    ap.add_argument("--cell", metavar="LAYERS/POOLING",
                    help="with --summarize: one cell for every source (e.g. all/meanstd) instead of the validation's")
    args = ap.parse_args(argv)
    if args.summarize:
        try:
            docs = [read_probe_json(p) for p in args.summarize]
            cell = None
            if args.cell:
                layers, _, pooling = args.cell.partition("/")
                cell = (layers, check_poolings([pooling])[0])
            print(seed_summary(docs, cell))
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.exit(f"error: --summarize: {e}")
        return

    tasks = [(d.name, d / "train.csv", d / "test.csv") for d in args.task_dir]
    if (args.train is None) != (args.test is None):
        sys.exit("error: --train and --test go together")
    if args.train is not None:
        tasks.append((args.train.stem, args.train, args.test))
    if not tasks:
        sys.exit("error: give --task-dir DIR (repeatable) or --train/--test")
    if not args.encoder and args.control_from is not None:
        sys.exit("error: --control-from needs an --encoder (its front-end is used)")
    if not args.encoder and args.no_logmel:
        sys.exit("error: no source left: give an --encoder or keep the log-mel baseline")
    if args.batch_size < 1:
        sys.exit("error: --batch-size must be positive")
    try:
        poolings = check_poolings([p.strip() for p in args.pooling.split(",") if p.strip()])
        layer_specs = [s.strip() for s in args.layers.split(",") if s.strip()]
        sources = {}
        for item in args.encoder:
            name, _, path = item.rpartition("=")
            path = Path(path)
            sources[name or path.name] = load_encoder(path, args.device)
        if args.control_from is not None:
            first = next(iter(sources.values()))
            sources[CONTROL] = initial_weights(args.control_from, first.frontend).to(args.device)
        frontend = next(iter(sources.values())).frontend if sources else FrontendConfig()
        if layer_specs and sources:  # validate the specs against every encoder before any work
            for ex in sources.values():
                for s in layer_specs:
                    parse_layers(s, ex.num_layers)
        probe_kwargs = dict(weight_decays=tuple(args.weight_decays), seed=args.seed, device=args.device)
        results = {}
        for task, train_csv, test_csv in tasks:
            t0 = time.perf_counter()
            tw, ty, names, t_skip, groups = load_split(train_csv, frontend.sample_rate, None)
            vw, vy, _, v_skip, _ = load_split(test_csv, frontend.sample_rate, names)
            variants = [(task, "multiclass", tw, ty, vw, vy, groups)]  # a group column: validation by group
            if args.polyphonic:  # mixtures of the same splits' clips: test sources stay out of training
                mtw, mty = make_mixtures(tw, ty, len(names), len(tw), seed=args.seed)
                mvw, mvy = make_mixtures(vw, vy, len(names), len(vw), seed=args.seed + 1)
                variants.append((POLY_PREFIX + task, "multilabel", mtw, mty, mvw, mvy, None))
            for name_t, kind, a_w, a_y, b_w, b_y, var_groups in variants:
                probe_kwargs["groups"] = var_groups
                rows = []
                for name, ex in sources.items():
                    pools = [p for p in poolings if p != "cls" or ex.encoder.cfg.num_extra_tokens > 0]
                    rows += evaluate(encoder_embeddings(ex, a_w, layer_specs, pools, args.batch_size), a_y,
                                     encoder_embeddings(ex, b_w, layer_specs, pools, args.batch_size), b_y, name,
                                     kind, **probe_kwargs)
                if not args.no_logmel:
                    rows += evaluate(logmel_embeddings(a_w, frontend, poolings), a_y,
                                     logmel_embeddings(b_w, frontend, poolings), b_y, LOGMEL, kind, **probe_kwargs)
                what = "mixtures of 2-3 clips, test mAP" if kind == "multilabel" else "clips, test accuracy"
                title = (f"{name_t}: {len(names)} classes, {len(a_y)} train / {len(b_y)} test {what}"
                         + (f", {t_skip + v_skip} skipped" if t_skip + v_skip else ""))
                print(format_table(rows, poolings, title) + "\n", flush=True)
                print(f"({time.perf_counter() - t0:.0f} s)\n", file=sys.stderr, flush=True)
                results[name_t] = {"classes": names, "train": len(a_y), "test": len(b_y), "skipped": t_skip + v_skip,
                                   "metric": "mAP" if kind == "multilabel" else "accuracy",
                                   "rows": [dataclasses.asdict(r) for r in rows],
                                   "selected": {src: dataclasses.asdict(r)
                                                for src, r in select_on_validation(rows).items()}}
    except (ExportError, ManifestError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.json is not None:
        args.json.write_text(json.dumps({"layers": layer_specs, "poolings": poolings, "tasks": results}, indent=1))


if __name__ == "__main__":
    main()
