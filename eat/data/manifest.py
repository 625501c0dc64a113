"""Clip lists and labels: fairseq tsv manifests and the label formats EAT, AST and ESC-50 ship with.

Every label reader returns the same :class:`LabelSet` (clip paths with class indices, the class names and
whether the task is multi-label), so datasets and samplers never care which format the labels came from.
Every malformed input raises :class:`ManifestError` naming the file (and line, where there is one).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from eat.audio.io import AudioError, audio_info, load_audio_with_rate
from eat.config import read_text


class ManifestError(ValueError):
    """A manifest or label file is missing or malformed; the message names the file and line."""


@dataclass
class Manifest:
    """A fairseq-style clip list: a root directory plus (relative path, number of samples) entries."""

    root: Path
    entries: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.entries)

    def path(self, i: int) -> Path:
        """Absolute (root-joined) path of entry ``i``."""
        return self.root / self.entries[i][0]

    def paths(self) -> list[Path]:
        return [self.root / rel for rel, _ in self.entries]

    def num_samples(self) -> list[int]:
        return [n for _, n in self.entries]


def read_manifest(path: str | Path) -> Manifest:
    """Read a tsv manifest: line 1 is the root directory, then ``relpath <whitespace> num_samples`` lines.

    A line with a tab must have exactly two tab-separated columns; a line without one is split at its last
    run of whitespace (the sample count is the last field, so a relative path may itself contain spaces).
    Blank lines are ignored.
    """
    path = Path(path)
    lines = _read_lines(path)
    if not lines or not lines[0].strip():
        raise ManifestError(f"{path}:1: empty manifest (the first line must be the root directory)")
    root = Path(lines[0].strip())
    entries: list[tuple[str, int]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        text = line.strip()
        if "\t" in text:  # what write_manifest writes: exactly two tab-separated columns
            parts = [p.strip() for p in text.split("\t")]
            if len(parts) != 2:
                raise ManifestError(f"{path}:{lineno}: {len(parts)} tab-separated columns, expected 2 "
                                    f"(<relative path>, <num_samples>): {text!r:.120}")
        else:
            parts = text.rsplit(None, 1)
            if len(parts) != 2:
                raise ManifestError(f"{path}:{lineno}: expected '<relative path> <num_samples>', got {text!r:.120}")
        rel, count = parts
        try:
            n = int(count)
        except ValueError:
            raise ManifestError(f"{path}:{lineno}: expected '<relative path> <num_samples>', but the last column "
                                f"{count!r:.40} is not a whole number of samples") from None
        if n < 0:
            raise ManifestError(f"{path}:{lineno}: num_samples {n} is negative")
        entries.append((rel, n))
    return Manifest(root=root, entries=entries)


def write_manifest(path: str | Path, root: str | Path, entries: Iterable[tuple[str, int]]) -> Path:
    """Write a tsv manifest (tab-separated, one entry per line) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{rel}\t{int(n)}\n" for rel, n in entries)
    path.write_text(f"{root}\n{body}", encoding="utf-8")
    return path


@dataclass(frozen=True)
class LabelledItem:
    """One labelled clip: its absolute path, its class indices (one index for single-label tasks) and its
    group (speaker / source / kit; ``""`` when the list names none)."""

    path: Path
    labels: tuple[int, ...]
    group: str = ""


@dataclass
class LabelSet:
    """Labelled clips of one split, with the class names that define the index space."""

    items: list[LabelledItem]
    class_names: list[str]
    multi_label: bool

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def targets(self, multi_label: bool | None = None) -> torch.Tensor:
        """Class indices ``(N,)`` or, for a multi-label set (or ``multi_label=True``), a 0/1 matrix ``(N, C)``."""
        if not (self.multi_label if multi_label is None else multi_label):
            return torch.tensor([it.labels[0] for it in self.items], dtype=torch.long)
        out = torch.zeros(len(self.items), self.num_classes)
        for i, it in enumerate(self.items):
            out[i, list(it.labels)] = 1.0
        return out

    def groups(self) -> list[str] | None:
        """Every clip's group, or None unless every clip names one (validation is then drawn by group)."""
        names = [it.group for it in self.items]
        return names if names and all(names) else None


def read_class_csv(path: str | Path) -> tuple[dict[str, int], list[str]]:
    """Read an ``index,mid,display_name`` csv (AudioSet ``class_labels_indices.csv`` / EAT label csv).

    Returns ``(mid -> index, class names)``; a header row is recognised by its non-numeric first cell.
    The indices must be exactly 0..K-1.
    """
    path = Path(path)
    mid_to_index: dict[str, int] = {}
    names: dict[int, str] = {}
    for lineno, row in _read_csv_rows(path):
        if lineno == 1 and row and not row[0].strip().lstrip("-").isdigit():
            continue  # header
        if len(row) < 2:
            raise ManifestError(f"{path}:{lineno}: expected 'index,mid[,display_name]', got {','.join(row)!r}")
        try:
            index = int(row[0])
        except ValueError:
            raise ManifestError(f"{path}:{lineno}: class index {row[0]!r} is not an integer") from None
        mid = row[1].strip()
        if mid in mid_to_index:
            raise ManifestError(f"{path}:{lineno}: class id {mid!r} appears twice")
        if index in names:
            raise ManifestError(f"{path}:{lineno}: class index {index} appears twice")
        mid_to_index[mid] = index
        names[index] = row[2].strip() if len(row) > 2 and row[2].strip() else mid
    if not names:
        raise ManifestError(f"{path}: no classes found")
    if sorted(names) != list(range(len(names))):
        raise ManifestError(f"{path}: class indices must be 0..{len(names) - 1} without gaps")
    return mid_to_index, [names[i] for i in range(len(names))]


def read_eat_labels(
    manifest: str | Path | Manifest, lbl_path: str | Path, class_csv: str | Path, multi_label: bool | None = None
) -> LabelSet:
    """EAT fine-tuning labels: ``{split}.lbl`` (``<id> <mid1,mid2,...>`` per manifest entry) + class csv.

    ``multi_label=None`` infers it: multi-label when any clip carries more than one label.
    """
    lbl_path = Path(lbl_path)
    man = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    mid_to_index, names = read_class_csv(class_csv)
    lines = [(n, line) for n, line in enumerate(_read_lines(lbl_path), start=1) if line.strip()]
    if len(lines) != len(man):
        raise ManifestError(f"{lbl_path}: {len(lines)} label lines but the manifest lists {len(man)} clips")
    items = []
    for i, (lineno, line) in enumerate(lines):
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ManifestError(f"{lbl_path}:{lineno}: expected '<id> <mid1,mid2,...>', got {line.strip()!r}")
        labels = _map_ids(parts[1], mid_to_index, f"{lbl_path}:{lineno}")
        items.append(LabelledItem(man.path(i), labels))
    return LabelSet(items, names, _infer_multi(items, multi_label))


def read_ast_json(
    json_path: str | Path, class_csv: str | Path, root: str | Path | None = None, multi_label: bool | None = None
) -> LabelSet:
    """AST-style ``{"data": [{"wav": path, "labels": "mid1,mid2"}]}`` + ``class_labels_indices.csv``.

    Relative ``wav`` paths are taken relative to ``root`` (default: the json file's folder).
    """
    json_path = Path(json_path)
    mid_to_index, names = read_class_csv(class_csv)
    try:
        data = json.loads(_read_text(json_path))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{json_path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ManifestError(f"{json_path}: expected an object with a 'data' list")
    base = Path(root) if root is not None else json_path.parent
    items = []
    for i, entry in enumerate(data["data"]):
        where = f"{json_path}: data[{i}]"
        if not isinstance(entry, dict) or "wav" not in entry or "labels" not in entry:
            raise ManifestError(f"{where}: expected an object with 'wav' and 'labels'")
        items.append(LabelledItem(base / entry["wav"], _map_ids(str(entry["labels"]), mid_to_index, where)))
    return LabelSet(items, names, _infer_multi(items, multi_label))


ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")


def read_esc50(root: str | Path, folds: Iterable[int] | None = None, audio_dir: str = "audio") -> LabelSet:
    """ESC-50 (``root/meta/esc50.csv`` + ``root/<audio_dir>/*.wav``), keeping only rows of ``folds``.

    Class names come from ``category`` ordered by ``target`` over the whole csv, so every fold split
    shares one index space. Single-label.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ManifestError(f"{root}: a file, not the ESC-50 folder (which holds meta/esc50.csv and audio/)")
    csv_path = root / "meta" / "esc50.csv"
    rows = list(_read_csv_rows(csv_path))
    if not rows:
        raise ManifestError(f"{csv_path}: empty file")
    header = [c.strip() for c in rows[0][1]]
    missing = [c for c in ("filename", "fold", "target", "category") if c not in header]
    if missing:
        raise ManifestError(f"{csv_path}:1: missing column(s) {', '.join(missing)}; expected {','.join(ESC50_COLUMNS)}")
    col = {name: header.index(name) for name in ("filename", "fold", "target", "category")}
    keep = None if folds is None else {int(f) for f in folds}
    names: dict[int, str] = {}
    items = []
    for lineno, row in rows[1:]:
        if len(row) < len(header):
            raise ManifestError(f"{csv_path}:{lineno}: expected {len(header)} columns, got {len(row)}")
        try:
            fold, target = int(row[col["fold"]]), int(row[col["target"]])
        except ValueError:
            raise ManifestError(f"{csv_path}:{lineno}: fold and target must be integers") from None
        category = row[col["category"]].strip()
        if names.setdefault(target, category) != category:
            raise ManifestError(f"{csv_path}:{lineno}: target {target} is {category!r} here but {names[target]!r} earlier")
        if keep is None or fold in keep:
            items.append(LabelledItem(root / audio_dir / row[col["filename"]].strip(), (target,)))
    if sorted(names) != list(range(len(names))):
        raise ManifestError(f"{csv_path}: targets must be 0..{len(names) - 1} without gaps")
    if keep is not None and not items:
        raise ManifestError(f"{csv_path}: no clips in fold(s) {sorted(keep)}")
    return LabelSet(items, [names[i] for i in range(len(names))], multi_label=False)


def read_path_label_csv(
    path: str | Path, root: str | Path | None = None, class_names: Sequence[str] | None = None
) -> LabelSet:
    """A plain ``path,label`` csv (optional header row ``path,label``), single-label. An optional third column
    ``group`` (header ``path,label,group``) names each clip's speaker / source / kit.

    Labels that are all integers are used as indices (classes ``"0".."max"``); otherwise the sorted
    distinct names become the classes. Pass ``class_names`` (e.g. from the training split) to map a
    second split into the same index space. Relative paths are taken relative to ``root`` (default:
    the csv's folder).
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    rows = []
    for lineno, row in _read_csv_rows(path):
        if not row or not any(c.strip() for c in row):
            continue
        if lineno == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
            continue
        if len(row) not in (2, 3) or not row[0].strip() or not row[1].strip():
            raise ManifestError(f"{path}:{lineno}: expected 'path,label' or 'path,label,group', got {','.join(row)!r}")
        rows.append((lineno, row[0].strip(), row[1].strip(), row[2].strip() if len(row) == 3 else ""))
    if not rows:
        raise ManifestError(f"{path}: no clips listed")
    if class_names is not None:
        names = list(class_names)
        index = {n: i for i, n in enumerate(names)}
    elif all(label.isdigit() for _, _, label, _ in rows):
        names = [str(i) for i in range(max(int(label) for _, _, label, _ in rows) + 1)]
        index = {n: i for i, n in enumerate(names)}
    else:
        names = sorted({label for _, _, label, _ in rows})
        index = {n: i for i, n in enumerate(names)}
    items = []
    for lineno, rel, label, group in rows:
        key = str(int(label)) if class_names is None and label.isdigit() else label
        if key not in index:
            raise ManifestError(f"{path}:{lineno}: unknown label {label!r} (not among the {len(names)} classes)")
        items.append(LabelledItem(base / rel, (index[key],), group))
    return LabelSet(items, names, multi_label=False)


def _map_ids(field: str, mid_to_index: dict[str, int], where: str) -> tuple[int, ...]:
    mids = [m.strip() for m in field.strip().strip('"').split(",") if m.strip()]
    if not mids:
        raise ManifestError(f"{where}: no labels")
    unknown = [m for m in mids if m not in mid_to_index]
    if unknown:
        raise ManifestError(f"{where}: unknown label id(s) {', '.join(unknown)} (not in the class csv)")
    return tuple(sorted({mid_to_index[m] for m in mids}))


def _infer_multi(items: list[LabelledItem], multi_label: bool | None) -> bool:
    if multi_label is not None:
        return multi_label
    return any(len(it.labels) > 1 for it in items)


def _read_text(path: Path) -> str:
    return read_text(path, ManifestError)


def _read_lines(path: Path) -> list[str]:
    return _read_text(path).splitlines()


def _read_csv_rows(path: Path) -> Iterable[tuple[int, list[str]]]:
    """(line number, cells) for every csv row, line numbers counted from 1."""
    reader = csv.reader(_read_lines(path))
    return [(reader.line_num, row) for row in reader]


# ---------------------------------------------------------------------------------------------- scanning


MIN_SECONDS = 0.025  # one analysis frame of the EAT/AST front-end


def probe_audio(path: Path, verify: bool = False) -> int | str:
    """The number of frames in ``path``, or a one-line reason why it cannot be used.

    The header alone (:func:`eat.audio.io.audio_info`) catches missing, empty, unreadable and truncated
    WAV files; ``verify`` decodes everything (:func:`eat.audio.io.load_audio_with_rate`), which also
    catches undecodable data and NaN/inf samples. Clips shorter than one 25 ms analysis frame are refused
    either way: no front-end can make a frame of them."""
    try:
        if verify:
            wave, sr = load_audio_with_rate(path)
            frames = wave.numel()
        else:
            frames, sr = audio_info(path)
    except AudioError as e:
        return e.reason
    shortest = math.ceil(sr * MIN_SECONDS)
    if frames < shortest:
        return f"only {frames} sample(s), shorter than one {MIN_SECONDS * 1000:g} ms frame"
    return frames


def scan_audio(audio_dir: Path, exts: list[str], workers: int = 8, verify: bool = False,
               progress: bool = False) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """``(good entries, bad files)`` under ``audio_dir``: ``(relpath, frames)`` and ``(relpath, reason)``,
    each sorted by path; ``exts`` are matched case-insensitively without the dot."""
    wanted = {"." + e.lower().lstrip(".") for e in exts}
    files = sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() in wanted and p.is_file())
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(lambda p: probe_audio(p, verify), files), total=len(files), desc="scanning",
                            disable=not progress))
    good, bad = [], []
    for path, result in zip(files, results, strict=True):
        rel = path.relative_to(audio_dir).as_posix()
        (good if isinstance(result, int) else bad).append((rel, result))
    return good, bad
