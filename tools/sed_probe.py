"""Probe protocol, frame task: linear probes on frozen frame embeddings scored as sound event detection.

    python tools/sed_probe.py --encoder pretrained=EXPORT [--control-from RUN_DIR] \\
        --train BENCH/train.tsv --train-audio BENCH/train --test BENCH/test.tsv --test-audio BENCH/test \\
        [--groups BENCH/train_groups.tsv] [--layers all] [--seed 0] [--json out.json]

Sources: every ``--encoder [NAME=]DIR`` (one vector per 160 ms column: frequency patches averaged, the blocks
of ``--layers`` concatenated), with ``--control-from RUN_DIR`` the network that pretraining run started from
("initial weights", same front-end), and log-mel (each column's mel-bin mean and std). The probe's penalty is
chosen on held-out training files by PSDS1 (whole groups with ``--groups``), then it is refitted on every
training file and the test files are scored once: PSDS1, PSDS2, segment F1 (1 s), event F1 (collar). ``--mlp H``
adds a small MLP probe (one hidden layer of H units) chosen the same way. Details:
eat/eval/frame_probe.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eat.apps.probe_protocol import initial_weights
from eat.cli import UsageError, cli_main
from eat.data.strong_labels import read_groups, read_strong_tsv
from eat.eval.frame_probe import column_features, frame_probe
from eat.export import load_encoder
from eat.model.pooling import parse_layers
from eat.model.sed import column_geometry


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", action="append", default=[], metavar="[NAME=]DIR", help="exported encoder")
    ap.add_argument("--control-from", type=Path, metavar="RUN_DIR", help="pretraining run: its initial weights")
    ap.add_argument("--train", type=Path, required=True, help="strong tsv of the training files")
    ap.add_argument("--train-audio", type=Path, required=True, help="their folder")
    ap.add_argument("--test", type=Path, required=True, help="strong tsv of the test files")
    ap.add_argument("--test-audio", type=Path, required=True, help="their folder")
    ap.add_argument("--groups", type=Path, help="filename<TAB>group tsv: validation holds out whole groups")
    ap.add_argument("--layers", default="all", help="layer spec of the encoder sources (-1, 0+2, all)")
    ap.add_argument("--hop", type=float, default=0.04, help="output hop of the scored frames (s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the validation split (and of the MLP)")
    ap.add_argument("--mlp", type=int, default=0, metavar="HIDDEN", help="also a small MLP probe of this width")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if not args.encoder:
        raise UsageError("name at least one --encoder (its front-end also feeds the log-mel source)")
    train = read_strong_tsv(args.train, audio_root=args.train_audio)
    test = read_strong_tsv(args.test, train.class_names, args.test_audio)
    groups = read_groups(str(args.groups), train.files) if args.groups else None
    sources = {}
    for spec in args.encoder:
        name, _, path = spec.rpartition("=")
        sources[name or Path(path).name] = load_encoder(path)
    first = next(iter(sources.values()))
    if args.control_from is not None:
        sources["initial weights"] = initial_weights(args.control_from, first.frontend)
    col_hop, c0 = column_geometry(first.encoder.cfg, first.frontend.sample_rate, first.frontend.frame_shift_ms,
                                  first.frontend.frame_length_ms)
    results = {}
    for name, ext in [*sources.items(), ("log-mel", first)]:
        kind = "logmel" if name == "log-mel" else "encoder"
        layers = parse_layers(args.layers, len(ext.encoder.blocks))
        tr = column_features(ext, train, kind, layers)
        te = column_features(ext, test, kind, layers)
        results[name] = frame_probe(tr, te, train, test, col_hop, c0, args.hop, groups=groups, seed=args.seed,
                                    mlp_hidden=args.mlp)
        for kind, r in (("linear", results[name]), ("mlp", results[name].get("mlp"))):
            if r is not None:
                m = r["test"]
                print(f"{name} ({kind}): PSDS1 {m['psds1']:.4f}  PSDS2 {m['psds2']:.4f}  segment F1 "
                      f"{m['segment_f1']:.4f}  event F1 {m['event_f1']:.4f}  (weight decay {r['weight_decay']:g}, "
                      f"{results[name]['dim']} features)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
