"""The frozen-feature probe protocol: which layer(s), which pooling, side by side, for every feature source.

SSL papers and HEAR-style evaluations do not read one fixed vector out of an encoder: they report the
linear probe on several layers (or a concatenation of them) and several poolings of the token sequence.
This module runs that grid with one probe (:func:`eat.eval.probe.probe`) and one table:

* **layer specs** (:func:`parse_layers`): ``"-1"`` (the last block), ``"0"`` (the first), ``"0+2"`` (the
  per-layer pooled vectors of blocks 0 and 2 concatenated), ``"all"`` (every block concatenated);
* **poolings** (:data:`POOLINGS`) of a layer's patch tokens: ``mean`` (mean over the clip's patches, the
  padding excluded), ``meanstd`` (that mean and the per-dimension standard deviation over the same
  patches, concatenated: 2 D values), ``band-mean`` / ``band-meanstd`` (the same over time within each
  frequency band of the patch grid, the bands concatenated: F' D / 2 F' D values; see
  :mod:`eat.model.pooling`) and ``cls`` (the CLS token);
* **sources**: any number of encoders (a pretrained export, the same network's initial weights, ...)
  and the no-network baseline ``log-mel``, which gets the same poolings of its frames (``mean``: the
  per-mel-bin mean over time; ``meanstd``: mean and std, as :func:`eat.features.logmel_statistics`;
  every mel bin is a band of its own, so ``band-mean`` / ``band-meanstd`` are the same vectors; it has no
  layers and no CLS token).

A layer-concatenated embedding is ``[pool(layer a), pool(layer b), ...]``; for ``meanstd`` each layer
contributes its ``[mean, std]`` block. The probe standardises every dimension, so neither the order nor
the scale of the blocks changes the result.
"""

from __future__ import annotations

import dataclasses
import statistics
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eat.audio.fbank import FrontendConfig
from eat.config import ConfigError, check_value, json_type, read_json
from eat.eval.probe import probe
from eat.features import FeatureExtractor, logmel_statistics
from eat.model.pooling import POOLINGS, TOKEN_POOLINGS, check_poolings, parse_layers, pool_tokens  # noqa: F401 (re-exported)

LOGMEL = "log-mel"
CONTROL = "initial weights"


def encoder_embeddings(
    extractor: FeatureExtractor, waves: Sequence[Tensor], layer_specs: Sequence[str], poolings: Sequence[str],
    batch_size: int = 32,
) -> dict[tuple[str, str], Tensor]:
    """Utterance embeddings ``{(layer spec, pooling): (N, D')}`` of ``waves`` (1-D clips at the extractor's
    rate): every needed block is run once per clip, pooled, and concatenated per spec."""
    poolings = check_poolings(poolings)
    specs = {s: parse_layers(s, extractor.num_layers) for s in layer_specs}
    needed = sorted({i for layers in specs.values() for i in layers})
    per_layer: dict[tuple[int, str], list[Tensor]] = {(i, p): [] for i in needed for p in poolings}
    for lo in range(0, len(waves), batch_size):
        batch = list(waves[lo : lo + batch_size])
        token_pools = [p for p in poolings if p != "cls"]
        if token_pools:
            out = extractor.extract_features(batch, layers=needed, granularity="patch", batch_size=batch_size)
            for k, i in enumerate(needed):
                for p in token_pools:
                    pooled = pool_tokens(out.embeddings[:, k].float(), out.mask, p, extractor.encoder.num_freq_patches)
                    per_layer[(i, p)].append(pooled.cpu())
        if "cls" in poolings:
            out = extractor.extract_features(batch, layers=needed, utterance="cls", batch_size=batch_size)
            for k, i in enumerate(needed):
                per_layer[(i, "cls")].append(out.embeddings[:, k].float().cpu())
    stacked = {key: torch.cat(v) for key, v in per_layer.items()}
    return {(s, p): torch.cat([stacked[(i, p)] for i in layers], dim=1) for s, layers in specs.items() for p in poolings}


def logmel_embeddings(waves: Sequence[Tensor], frontend: FrontendConfig, poolings: Sequence[str]) -> dict[tuple[str, str], Tensor]:
    """The log-mel baseline under the same poolings: ``{("-", pooling): (N, F or 2F)}`` (no ``cls``; a mel bin
    is a band, so ``band-mean`` = ``mean`` and ``band-meanstd`` = ``meanstd``)."""
    poolings = check_poolings(poolings)
    stats = logmel_statistics(list(waves), frontend)  # [mean over time, std over time] per mel bin
    f = frontend.num_mel_bins
    out = {}
    for p in poolings:
        if p != "cls":
            out[("-", p)] = stats if p.endswith("meanstd") else stats[:, :f]
    return out


@dataclass
class Row:
    """One probe result of the protocol table."""

    source: str
    layers: str
    pooling: str
    score: float
    dim: int
    weight_decay: float
    val_score: float = float("nan")  # the best validation score over the weight-decay grid


def read_probe_json(path: str | Path) -> dict:
    """A ``tools/probe_protocol.py --json`` file, checked: ``{"tasks": {task: {"rows": [Row fields]}}}``
    with every :class:`Row` field of the right type (extra keys are left alone); anything else is one
    :class:`~eat.config.ConfigError` naming the file and the entry."""
    doc = read_json(path, what="probe_protocol.py --json")
    tasks = doc.get("tasks") if isinstance(doc, dict) else None
    if not isinstance(tasks, dict):
        raise ConfigError(f"{path}: not a probe_protocol.py --json file (no 'tasks' object at the top)")
    hints = typing.get_type_hints(Row)
    required = [f.name for f in dataclasses.fields(Row) if f.default is dataclasses.MISSING]
    for task, result in tasks.items():
        rows = result.get("rows") if isinstance(result, dict) else None
        if not isinstance(rows, list):
            raise ConfigError(f"{path}: tasks.{task}: expected an object with a 'rows' list")
        for i, row in enumerate(rows):
            where = f"tasks.{task}.rows[{i}]"
            if not isinstance(row, dict):
                raise ConfigError(f"{path}: {where}: expected an object, got {json_type(row)}")
            missing = [k for k in required if k not in row]
            if missing:
                raise ConfigError(f"{path}: {where}: missing key '{missing[0]}'")
            for key, value in row.items():
                if key in hints:
                    try:
                        row[key] = check_value(hints[key], value, f"{where}.{key}")
                    except ConfigError as e:
                        raise ConfigError(f"{path}: {e}") from None
    return doc


def select_on_validation(rows: Sequence[Row]) -> dict[str, Row]:
    """Per source, the cell (layer spec, pooling) with the best validation score (the probe's own 20 % split
    of the training clips), ties to the earlier row: the protocol's reported number, chosen without looking
    at the test split. Reporting the best *test* cell of a grid would flatter every source."""
    best: dict[str, Row] = {}
    for r in rows:
        if r.source not in best or r.val_score > best[r.source].val_score:
            best[r.source] = r
    return best


def evaluate(
    train: dict[tuple[str, str], Tensor], train_y: Tensor, test: dict[tuple[str, str], Tensor], test_y: Tensor,
    source: str, task: str = "multiclass", **probe_kwargs,
) -> list[Row]:
    """Probe every ``(layer spec, pooling)`` embedding of one source (same keys in ``train`` and ``test``);
    ``task="multilabel"`` (``(N, C)`` multi-hot labels, e.g. :mod:`eat.eval.polyphonic`) scores by mAP."""
    rows = []
    for key, x in train.items():
        r = probe(x, train_y, test[key], test_y, task, **probe_kwargs)
        val = max(r["val_scores"].values()) if r["val_scores"] else float("nan")
        rows.append(Row(source, key[0], key[1], r["score"], r["dim"], r["weight_decay"], val))
    return rows


def format_table(rows: Sequence[Row], poolings: Sequence[str], title: str = "") -> str:
    """A markdown table: one row per (source, layer spec), one column per pooling (the test score: accuracy,
    or mAP for a multi-label task; ``-`` where the pooling does not apply, e.g. ``cls`` for log-mel; ``*``
    marks each source's cell chosen on validation), then one line per source naming that cell."""
    head = "| source | layers | " + " | ".join(poolings) + " |"
    lines = ([f"**{title}**", ""] if title else []) + [head, "|---|---|" + "---|" * len(poolings)]
    chosen = select_on_validation(rows)
    seen: dict[tuple[str, str], dict[str, Row]] = {}
    for r in rows:
        seen.setdefault((r.source, r.layers), {})[r.pooling] = r
    for (source, layers), by_pool in seen.items():
        cells = [f"{by_pool[p].score:.3f}" + ("*" if by_pool[p] is chosen[source] else "") if p in by_pool else "-"
                 for p in poolings]
        lines.append(f"| {source} | {layers} | " + " | ".join(cells) + " |")
    lines.append("")
    for source, r in chosen.items():
        lines.append(f"* chosen on validation for {source}: layers {r.layers}, {r.pooling} -> test {r.score:.3f} "
                     f"(validation {r.val_score:.3f})")
    return "\n".join(lines)


def source_kind(source: str) -> str:
    """``pretrained`` for an encoder source (any name but the two baselines), else the baseline's name."""
    return source if source in (LOGMEL, CONTROL) else "pretrained"


def _mean_std(vals: list[float], cells: set[str]) -> str:
    if not vals:
        return "-"
    spread = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
    return f"{statistics.mean(vals):.3f}{spread} ({', '.join(sorted(cells))})"


def fixed_cell(rows: Sequence[Row], layers: str, pooling: str) -> dict[str, Row]:
    """Per source, the row of one cell chosen in advance (log-mel: the same pooling, where ``band-X`` is ``X``:
    every mel bin is a band)."""
    out: dict[str, Row] = {}
    for r in rows:
        if r.source == LOGMEL:
            if r.pooling.removeprefix("band-") == pooling.removeprefix("band-"):
                out.setdefault(r.source, r)
        elif r.pooling == pooling and r.layers == layers:
            out[r.source] = r
    return out


def seed_summary(results: Sequence[dict], cell: tuple[str, str] | None = None) -> str:
    """Markdown: per task, the validation-chosen cell (or the fixed ``cell = (layers, pooling)``) of each
    source kind (pretrained / initial weights / log-mel) as mean ± sample std over ``results`` (one
    ``tools/probe_protocol.py --json`` document per seed, each with one pretrained encoder) and the cells
    used, then pretrained minus each baseline in points (means over seeds)."""
    scores: dict[str, dict[str, list[float]]] = {}
    cells: dict[str, dict[str, set[str]]] = {}
    for doc in results:
        for task, res in doc["tasks"].items():
            rows = [Row(**row) for row in res["rows"]]
            chosen = select_on_validation(rows) if cell is None else fixed_cell(rows, *cell)
            kinds = [source_kind(s) for s in chosen]
            if kinds.count("pretrained") != 1:
                raise ValueError(f"task {task}: expected one pretrained encoder per file, found {kinds.count('pretrained')}")
            for source, row in chosen.items():
                kind = source_kind(source)
                scores.setdefault(task, {}).setdefault(kind, []).append(row.score)
                cells.setdefault(task, {}).setdefault(kind, set()).add(f"{row.layers}/{row.pooling}")
    kinds = ["pretrained", CONTROL, LOGMEL]
    lines = ["| task | " + " | ".join(kinds) + " | pretrained - initial | pretrained - log-mel |",
             "|---|" + "---|" * (len(kinds) + 2)]
    for task, sc in scores.items():
        pre = statistics.mean(sc["pretrained"])
        gaps = [f"{100 * (pre - statistics.mean(sc[k])):+.1f}" if k in sc else "-" for k in (CONTROL, LOGMEL)]
        row = [_mean_std(sc.get(k, []), cells[task].get(k, set())) for k in kinds]
        lines.append(f"| {task} (n={len(sc['pretrained'])}) | " + " | ".join(row + gaps) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- moved names

# initial_weights rebuilds a pretraining run's starting network with the recipe's own build_model, so it
# moved up to the application that uses it (eval sits below training). Old imports keep working with a
# DeprecationWarning; the forwarding import is listed in the layer contract's ignore_imports.
_MOVED = {"initial_weights": "eat.apps.probe_protocol"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"eat.eval.protocol.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
        from eat.apps import probe_protocol  # deprecation shim: the upward import happens only for old code

        return getattr(probe_protocol, name)
    raise AttributeError(f"module 'eat.eval.protocol' has no attribute {name!r}")
