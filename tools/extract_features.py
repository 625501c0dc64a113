"""Extract embeddings of every clip in a manifest with an exported encoder, in resumable shards.

    python tools/extract_features.py --encoder EXPORT --manifest train.tsv --out feats/ \\
        [--granularity utterance|frame|patch] [--pooling band-meanstd] [--layers all] [--batch-size 16] \\
        [--shard-size 1000] [--format safetensors|npy] [--device cuda]

Utterance embeddings use the registry of :mod:`eat.model.pooling`: ``--pooling`` is one of its poolings
(``mean``, ``meanstd``, ``band-mean``, ``band-meanstd``, ``cls``) and ``--layers`` a layer spec (``all``,
``-1``, ``0+2``), whose blocks are pooled and concatenated into one vector per clip; the default is the
registry's (every block, band mean+std), the probe protocol's best frozen embedding. Several ``--layers``
values (``--layers 0 -1``, the older form) keep a layer axis instead. Frame and patch embeddings read the
last block unless ``--layers`` says otherwise.

Output in ``--out``:

* ``shard_00000.safetensors`` (or ``shard_00000/`` with ``.npy`` files) holding ``embeddings``: utterance
  ``(clips, [layers,] D)``; frame/patch rows of all clips concatenated ``(rows, [layers,] D)`` with
  ``offsets`` ``(clips + 1,)`` (clip ``i`` is rows ``offsets[i]:offsets[i+1]``), ``timestamps`` (seconds, float64,
  one per row) and, for patches, ``patch_index`` (t, f) per row;
* ``shard_00000.json``: the clips of the shard in row order and the files that could not be read; it is
  written last, so a shard with its json is finished and a rerun skips it;
* ``settings.json`` (what was extracted; a rerun with other settings is refused) and ``index.json``
  (clip path -> [shard, row], bad files, totals), rewritten at the end of every run.

Clips are read in threads, sorted by length inside a shard to keep padding small, and batched (with a
padding mask, so batching never changes a clip's features). Unreadable files are skipped and counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from eat.audio.io import AudioError
from eat.cli import UsageError, check_workers, cli_main
from eat.data.manifest import ManifestError, read_manifest
from eat.export import ExportError, load_encoder
from eat.features import GRANULARITIES, FeatureExtractor, read_clips
from eat.model.pooling import DEFAULT_LAYERS, DEFAULT_POOLING, POOLINGS, parse_layers
from eat.utils.device import resolve_device


class ToolError(UsageError):
    """A user-facing problem with this tool's inputs or output folder."""


def shard_name(k: int) -> str:
    return f"shard_{k:05d}"


def embed_shard(extractor: FeatureExtractor, paths: list[Path], lengths: list[int], args: argparse.Namespace,
                progress: tqdm) -> tuple[dict[str, torch.Tensor], list[int], list[tuple[int, str]]]:
    """Tensors of one shard, the positions (within ``paths``) of its rows' clips, and the bad files."""
    layers = args.blocks
    order = sorted(range(len(paths)), key=lambda i: -lengths[i])  # similar lengths share a batch
    results: dict[int, dict[str, torch.Tensor]] = {}
    bad: list[tuple[int, str]] = []
    for lo in range(0, len(order), args.batch_size):
        idx = order[lo : lo + args.batch_size]
        clips = read_clips([paths[i] for i in idx], extractor.sample_rate, workers=args.workers)
        good = [(i, c) for i, c in zip(idx, clips, strict=True) if not isinstance(c, AudioError)]
        bad += [(i, str(c)) for i, c in zip(idx, clips, strict=True) if isinstance(c, AudioError)]
        results |= _embed_batch(extractor, good, paths, args, layers, bad)
        progress.update(len(idx))
    kept = sorted(results)
    tensors: dict[str, torch.Tensor] = {}
    if kept:
        keys = results[kept[0]].keys()
        tensors = {k: torch.cat([results[i][k] for i in kept]) for k in keys if k != "num_rows"}
        if args.granularity != "utterance":
            counts = torch.tensor([int(results[i]["num_rows"]) for i in kept])
            tensors["offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    return tensors, kept, sorted(bad)


def _embed_batch(extractor: FeatureExtractor, good: list[tuple[int, torch.Tensor]], paths: list[Path],
                 args: argparse.Namespace, layers: int | list[int], bad: list[tuple[int, str]]) -> dict[int, dict]:
    """Rows of every clip in ``good``; if the batch fails (a clip shorter than one frame), clip by clip."""
    if not good:
        return {}

    def run(waves: list[torch.Tensor]) -> Any:
        out = extractor.extract_features(waves, granularity=args.granularity, utterance=args.pooling,
                                         layers=layers, batch_size=args.batch_size)
        if args.concat:  # one layer spec: the blocks' pooled vectors concatenated (FeatureExtractor.clip_embeddings)
            out.embeddings = out.embeddings.flatten(1)
        return out

    try:
        out = run([c for _, c in good])
        return {i: _rows(out, b) for b, (i, _) in enumerate(good)}
    except ValueError:
        pass
    results = {}
    for i, c in good:
        try:
            results[i] = _rows(run([c]), 0)
        except ValueError as err:
            bad.append((i, f"cannot embed '{paths[i]}': {err}"))
    return results


def _rows(out: Any, b: int) -> dict[str, torch.Tensor]:
    """Rows of clip ``b`` of a :class:`~eat.features.Features` result (padding removed), on the CPU."""
    emb = out.embeddings[b]
    if out.granularity == "utterance":
        return {"embeddings": emb[None].float().cpu()}
    valid = ~out.mask[b]
    n = int(valid.sum())
    if emb.dim() == 3:  # (layers, rows, D) -> (rows, layers, D)
        emb = emb.transpose(0, 1)
    rows = {"embeddings": emb[:n].float().cpu(), "timestamps": out.timestamps[b, :n].double().cpu(),
            "num_rows": torch.tensor(n)}
    if out.patch_index is not None:
        rows["patch_index"] = out.patch_index[:n].cpu()
    return rows


def write_shard(out_dir: Path, k: int, tensors: dict[str, torch.Tensor], info: dict, fmt: str) -> None:
    """Write the tensors, then the json that marks the shard finished (each via a temp name + rename)."""
    name = shard_name(k)
    if fmt == "safetensors":
        tmp = out_dir / f".{name}.safetensors.tmp"
        save_file({key: v.contiguous() for key, v in tensors.items()}, tmp)
        os.replace(tmp, out_dir / f"{name}.safetensors")
    else:
        tmp = out_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for key, v in tensors.items():
            np.save(tmp / f"{key}.npy", v.numpy())
        shutil.rmtree(out_dir / name, ignore_errors=True)
        os.replace(tmp, out_dir / name)
    _write_json(out_dir / f"{name}.json", info)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def check_settings(out_dir: Path, settings: dict) -> None:
    path = out_dir / "settings.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise ToolError(f"{path}: unreadable; remove it or use another --out") from None
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            raise ToolError(f"{out_dir} holds features made with other settings ({', '.join(diff)}); "
                            "use another --out or delete it")
    else:
        _write_json(path, settings)


def resolve_layers(items: list[str], granularity: str, num_layers: int) -> tuple[int | list[int], bool]:
    """The blocks to read for ``--layers`` and whether the utterance vectors of several blocks are concatenated.

    One value is a layer spec (:func:`eat.model.pooling.parse_layers`): for utterances its blocks' pooled
    vectors are concatenated; for frames and patches a single block gives no layer axis. Several values (the
    older ``--layers 0 -1``) are block indices kept on a layer axis."""
    if len(items) == 1:
        blocks = parse_layers(items[0], num_layers)
        if granularity == "utterance":
            return blocks, True
        return (blocks[0] if len(blocks) == 1 and items[0] != "all" else blocks), False
    return [b for item in items for b in parse_layers(item, num_layers)], False


def run(args: argparse.Namespace) -> dict:
    manifest = read_manifest(args.manifest)
    if len(manifest) == 0:
        raise ToolError(f"{args.manifest}: no clips listed")
    extractor = load_encoder(args.encoder, args.device)
    args.blocks, args.concat = resolve_layers(args.layers_spec, args.granularity, extractor.num_layers)  # fails early
    if args.pooling == "cls" and args.granularity == "utterance" and extractor.encoder.cfg.num_extra_tokens == 0:
        raise ToolError(f"{args.encoder}: this encoder has no CLS token; use another --pooling")
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"encoder": str(Path(args.encoder).resolve()), "manifest": str(Path(args.manifest).resolve()),
                "num_clips": len(manifest), "granularity": args.granularity, "pooling": args.pooling,
                "layers": args.layers, "shard_size": args.shard_size, "format": args.format}
    check_settings(out_dir, settings)
    num_shards = (len(manifest) + args.shard_size - 1) // args.shard_size
    done = [k for k in range(num_shards) if (out_dir / f"{shard_name(k)}.json").is_file()]
    start_count = sum(min(args.shard_size, len(manifest) - k * args.shard_size) for k in done)
    with tqdm(total=len(manifest), initial=start_count, desc="clips", unit="clip") as progress:
        for k in range(num_shards):
            if k in done:
                continue
            lo, hi = k * args.shard_size, min((k + 1) * args.shard_size, len(manifest))
            rels = [manifest.entries[i][0] for i in range(lo, hi)]
            tensors, kept, bad = embed_shard(extractor, [manifest.path(i) for i in range(lo, hi)],
                                             [manifest.entries[i][1] for i in range(lo, hi)], args, progress)
            info = {"clips": [rels[i] for i in kept], "bad": [[rels[i], reason] for i, reason in bad]}
            write_shard(out_dir, k, tensors, info, args.format)
    return write_index(out_dir, num_shards, settings)


def write_index(out_dir: Path, num_shards: int, settings: dict) -> dict:
    clips: dict[str, list[int]] = {}
    bad: list[list[str]] = []
    for k in range(num_shards):
        info = json.loads((out_dir / f"{shard_name(k)}.json").read_text())
        clips |= {rel: [k, row] for row, rel in enumerate(info["clips"])}
        bad += info["bad"]
    suffix = ".safetensors" if settings["format"] == "safetensors" else "/"
    index = {**settings, "shards": [shard_name(k) + suffix for k in range(num_shards)],
             "num_embedded": len(clips), "num_bad": len(bad), "clips": clips, "bad": bad}
    _write_json(out_dir / "index.json", index)
    return index


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", type=Path, required=True, help="exported encoder directory")
    ap.add_argument("--manifest", type=Path, required=True, help="fairseq tsv manifest of the clips")
    ap.add_argument("--out", type=Path, required=True, help="output folder (a rerun resumes it)")
    ap.add_argument("--granularity", choices=GRANULARITIES, default="utterance")
    ap.add_argument("--pooling", choices=POOLINGS, default=DEFAULT_POOLING,
                    help=f"utterance embedding: pooling of each block's tokens, or cls (default {DEFAULT_POOLING})")
    ap.add_argument("--layers", nargs="+", default=None,
                    help=f"a layer spec: -1 (last block), 0+2, all (default {DEFAULT_LAYERS} for utterances, -1 for "
                         "frames and patches; write --layers=-1 or --layers -1); several values keep a layer axis")
    ap.add_argument("--batch-size", type=int, default=16, help="clips (and encoder windows) per batch")
    ap.add_argument("--shard-size", type=int, default=1000, help="clips per output shard (default 1000)")
    ap.add_argument("--format", choices=("safetensors", "npy"), default="safetensors")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when available)")
    ap.add_argument("--workers", type=int, default=4, help="threads decoding audio (default 4; 0: none)")
    args = ap.parse_args(argv)
    if args.layers is None:
        args.layers = [DEFAULT_LAYERS if args.granularity == "utterance" else "-1"]
    args.layers = [int(v) if v.lstrip("-").isdigit() else v for v in args.layers]  # settings.json as before: ints
    args.layers_spec = [str(v) for v in args.layers]
    check_workers(args.workers)
    if args.batch_size < 1 or args.shard_size < 1:
        sys.exit("error: --batch-size and --shard-size must be positive")
    try:
        args.device = resolve_device(args.device)
        index = run(args)
    except (ToolError, ExportError, ManifestError, ValueError) as e:
        sys.exit(f"error: {e}")
    if index["num_embedded"] == 0:
        path, reason = index["bad"][0]
        sys.exit(f"error: {args.manifest}: none of the {index['num_bad']} clips could be read (first: {path}: {reason})")
    print(f"embedded {index['num_embedded']} clips into {len(index['shards'])} shard(s) under {args.out}; "
          f"{index['num_bad']} unreadable file(s) skipped")
    for path, reason in index["bad"][:5]:
        print(f"  skipped {path}: {reason}", file=sys.stderr)


if __name__ == "__main__":
    main()
