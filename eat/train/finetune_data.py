"""Where the labelled clips of a fine-tuning task come from: one train/eval pair of :class:`LabelSet`.

Formats (``data.format``):

* ``esc50``: ``root/meta/esc50.csv`` + ``root/<audio_dir>/``; one cross-validation round trains on the
  folds other than ``fold`` and evaluates on ``fold``.
* ``eat``: fairseq tsv manifests + EAT ``.lbl`` label files + a class csv (``index,mid,display_name``).
* ``ast_json``: AST ``{"data": [{"wav", "labels"}]}`` files + the class csv.
* ``csv``: plain ``path,label`` files (the ``generic`` task).
* ``shards``: ``train`` / ``valid`` are shard folders (or their ``index.json``) written by
  ``tools/make_shards.py`` from a labelled set; classes and labels come from the index.
* ``spc2``: the Speech Commands v2 folder as distributed (``<word>/<file>.wav``,
  ``validation_list.txt``, ``testing_list.txt``); train = every clip in neither list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from eat.audio.fbank import FrontendConfig
from eat.config import read_text
from eat.data.manifest import (
    LabelledItem,
    LabelSet,
    ManifestError,
    read_ast_json,
    read_eat_labels,
    read_esc50,
    read_path_label_csv,
)
from eat.data.shards import ShardSet

ESC50_FOLDS = (1, 2, 3, 4, 5)
SPC2_NOISE_DIR = "_background_noise_"


@dataclass
class DataSection:
    """Labelled data, front-end and loader settings of a fine-tuning run.

    ``train`` / ``valid`` are the split files (tsv manifest, AST json or csv, by ``format``); the ``eat``
    format also needs ``train_labels`` / ``valid_labels`` (``.lbl``) and every label format but ``csv``
    and ``esc50`` needs ``class_csv``. ``folds`` are the ESC-50 rounds to run. ``eval_split`` picks the
    SPC-2 list used for evaluation (``valid`` or ``test``). Weighted sampling (AS-2M) draws
    ``epoch_samples`` clips per epoch without replacement, weights from ``sample_weights`` (one number per
    line, AST/PSLA-style file) or, when empty, computed as the sum over a clip's labels of
    1000 / (class count + 100). ``fbank_on_device`` makes the loaders return waveforms and computes the
    fbank in the training step (on the GPU); waveform mixup and the ``pooled`` head (whose padding mask
    needs each clip's length) turn it on. ``val_fraction`` > 0 holds out that stratified fraction of the
    training clips (:func:`eat.eval.probe.validation_split` seeded with ``train.seed``: the split the linear
    probe of the same seed uses); periodic evaluation and the best checkpoint then use those clips, and the
    evaluation split is scored once, for the selected checkpoint. ``shard_window`` is the
    shuffle window (clips) of the training order with ``format: shards`` (see ``eat.data.shards``).
    """

    format: Literal["esc50", "eat", "ast_json", "csv", "spc2", "shards"] = "esc50"
    root: str = ""
    audio_dir: str = "audio"
    folds: list[int] = field(default_factory=lambda: list(ESC50_FOLDS))
    eval_split: Literal["valid", "test"] = "test"
    train: str = ""
    valid: str = ""
    train_labels: str = ""
    valid_labels: str = ""
    class_csv: str = ""
    weighted_sampling: bool = False
    sample_weights: str = ""
    epoch_samples: int = 0
    batch_size: int = 48
    eval_batch_size: int = 0  # 0: same as batch_size
    num_workers: int | Literal["auto"] = "auto"  # loader processes: auto = one per available core, at most 8
    fbank_on_device: bool = False
    max_bad_fraction: float = 0.01  # stop when more of an epoch's clips (per rank) are unreadable than this
    max_bad_clips: int = 10  # ... and than this many (below half the epoch): one bad file never stops a small set
    shard_window: int = 4096
    val_fraction: float = 0.0
    frontend: FrontendConfig = field(default_factory=FrontendConfig)


def _need(value: str, key: str) -> str:
    if not value:
        raise ManifestError(f"data.{key} is not set (needed by this data.format)")
    return value


def task_splits(data: DataSection, fold: int | None = None) -> tuple[LabelSet, LabelSet]:
    """(train, eval) label sets for ``data``; ``fold`` is the held-out ESC-50 fold."""
    if data.format == "esc50":
        if fold not in ESC50_FOLDS:
            raise ManifestError(f"data.folds: ESC-50 fold must be one of {list(ESC50_FOLDS)}, got {fold}")
        root = _need(data.root, "root")
        train = read_esc50(root, [f for f in ESC50_FOLDS if f != fold], data.audio_dir)
        return train, read_esc50(root, [fold], data.audio_dir)
    if data.format == "eat":
        csv = _need(data.class_csv, "class_csv")
        train = read_eat_labels(_need(data.train, "train"), _need(data.train_labels, "train_labels"), csv)
        valid = read_eat_labels(_need(data.valid, "valid"), _need(data.valid_labels, "valid_labels"), csv,
                                multi_label=train.multi_label)
        return train, valid
    if data.format == "ast_json":
        csv = _need(data.class_csv, "class_csv")
        train = read_ast_json(_need(data.train, "train"), csv)
        return train, read_ast_json(_need(data.valid, "valid"), csv, multi_label=train.multi_label)
    if data.format == "csv":
        train = read_path_label_csv(_need(data.train, "train"))
        return train, read_path_label_csv(_need(data.valid, "valid"), class_names=train.class_names)
    if data.format == "shards":
        train = ShardSet(_need(data.train, "train")).label_set()
        valid = ShardSet(_need(data.valid, "valid")).label_set()
        return train, valid
    if data.format == "spc2":
        root = _need(data.root, "root")
        return read_speech_commands(root, "train"), read_speech_commands(root, data.eval_split)
    raise ManifestError(f"data.format: unknown format {data.format!r}")


def speech_commands_classes(root: Path) -> list[str]:
    """The word folders of a Speech Commands root, sorted (35 in v0.02)."""
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not words:
        raise ManifestError(f"{root}: no word folders; is this the Speech Commands v2 root?")
    return words


def read_speech_commands(root: str | Path, split: Literal["train", "valid", "test"]) -> LabelSet:
    """One split of a Speech Commands v2 folder (the official list files decide valid/test)."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: {'a file, not' if root.exists() else 'not found:'} the Speech Commands v2 "
                            "folder (word folders + validation_list.txt, testing_list.txt)")
    words = speech_commands_classes(root)
    index = {w: i for i, w in enumerate(words)}
    lists = {}
    for name, fname in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        path = root / fname
        if not path.is_file():
            raise ManifestError(f"{path}: file not found (part of the Speech Commands v2 layout)")
        lists[name] = [ln.strip() for ln in read_text(path, ManifestError).splitlines() if ln.strip()]
    if split == "train":
        held_out = set(lists["valid"]) | set(lists["test"])
        rels = sorted(f"{w}/{p.name}" for w in words for p in (root / w).glob("*.wav"))
        rels = [r for r in rels if r not in held_out]
    else:
        rels = lists[split]
    items = []
    for lineno, rel in enumerate(rels, start=1):
        word = rel.split("/", 1)[0]
        if word not in index:
            raise ManifestError(f"{root}: {split} entry {lineno} {rel!r} names no word folder")
        items.append(LabelledItem(root / rel, (index[word],)))
    if not items:
        raise ManifestError(f"{root}: the {split} split is empty")
    return LabelSet(items, words, multi_label=False)


def read_weights(path: str | Path, count: int) -> list[float]:
    """Per-clip sampling weights, one number per line, exactly ``count`` of them."""
    path = Path(path)
    lines = [ln.strip() for ln in read_text(path, ManifestError).splitlines() if ln.strip()]
    if len(lines) != count:
        raise ManifestError(f"{path}: {len(lines)} weights for {count} training clips")
    weights = []
    for lineno, line in enumerate(lines, start=1):
        try:
            w = float(line.split(",")[-1])
        except ValueError:
            raise ManifestError(f"{path}: weight {lineno} ({line!r:.40}) is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise ManifestError(f"{path}: weight {lineno} is {w}; weights must be finite and >= 0")
        weights.append(w)
    if not any(weights):
        raise ManifestError(f"{path}: every weight is 0")
    return weights
