"""Strong (time-stamped) labels for sound event detection: the field's tables, frames and windows.

Formats read:

* **strong tsv** (DESED, AudioSet-strong): a header row, then ``filename onset offset event_label`` rows
  (seconds; several rows per file). DESED lists a file without events as a row with only its name.
  AudioSet-strong's column names (``segment_id start_time_seconds end_time_seconds label``) are accepted
  too. :func:`read_strong_tsv`.
* **weak tsv**: ``filename event_labels`` with comma-separated labels (DESED's weak set). :func:`read_weak_tsv`.
* **class list**: one name per line (or the toolkit's class csv). :func:`read_class_list`.

**Bad rows** (onset >= offset, a negative onset, an offset past the end of the file by more than
``tolerance`` seconds, an unknown class, a missing or unreadable audio file) raise :class:`ManifestError`
naming file and line with ``on_bad="error"``, or are skipped and counted (``StrongLabels.skipped``, one
reason per row) with ``on_bad="skip"``. Offsets past the end by at most ``tolerance`` (annotation tools
round) are clipped to the duration.

**Frames.** Output frame ``j`` at hop ``h`` covers ``[j*h, (j+1)*h)``; it is active for an event
``[onset, offset)`` when the two intervals overlap: frames ``floor(onset/h) .. ceil(offset/h) - 1``.
Times and hops are turned into integer microseconds before dividing, so the boundaries are exact for any
hop (float seconds put ``0.91 / 0.01`` at 91.00000000000001 and a frame too many).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from eat.audio.io import AudioError, audio_info
from eat.data.manifest import ManifestError, read_class_csv

US = 1_000_000  # microseconds per second: the integer time base of frame alignment
STRONG_COLUMNS = (("filename", "onset", "offset", "event_label"),
                  ("segment_id", "start_time_seconds", "end_time_seconds", "label"))


@dataclass(frozen=True)
class Event:
    """One labelled event: ``[onset, offset)`` seconds, class name."""

    onset: float
    offset: float
    label: str


@dataclass
class StrongLabels:
    """Events per audio file (files without events map to ``[]``), the class list, file durations
    (seconds, from the audio headers when an audio root was given) and the skipped bad rows."""

    events: dict[str, list[Event]]
    class_names: list[str]
    durations: dict[str, float] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return list(self.events)

    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.class_names)}

    def ground_truth(self) -> dict[str, list[tuple[float, float, str]]]:
        """The ``{file: [(onset, offset, label), ...]}`` mapping that ``sed_scores_eval`` reads: overlapping or
        touching events of one class merged into their union (the library refuses them, and frame targets
        are the union anyway)."""
        return {f: [(e.onset, e.offset, e.label) for e in merge_events(ev)] for f, ev in self.events.items()}


def merge_events(events: Iterable[Event]) -> list[Event]:
    """Overlapping or touching events of the same class merged into one (their union), sorted by onset."""
    out: list[Event] = []
    last: dict[str, int] = {}
    for e in sorted(events, key=lambda e: (e.onset, e.offset, e.label)):
        i = last.get(e.label)
        if i is not None and e.onset <= out[i].offset:
            out[i] = Event(out[i].onset, max(out[i].offset, e.offset), e.label)
            continue
        last[e.label] = len(out)
        out.append(e)
    return out


def _to_us(seconds: float) -> int:
    return int(round(seconds * US))


def active_frames(onset: float, offset: float, hop: float) -> tuple[int, int]:
    """``(first, stop)``: the frames ``first .. stop - 1`` of hop ``hop`` seconds that overlap ``[onset, offset)``."""
    on, off, h = _to_us(onset), _to_us(offset), _to_us(hop)
    if h <= 0:
        raise ValueError(f"hop must be positive, got {hop}")
    return on // h, -((-off) // h)  # floor, ceil in integer arithmetic


def num_output_frames(duration: float, hop: float) -> int:
    """Frames of hop ``hop`` that cover ``duration`` seconds (the last one may reach past the end)."""
    return max(1, -((-_to_us(duration)) // _to_us(hop)))


def frame_targets(events: Iterable[Event], class_index: dict[str, int], num_frames: int, hop: float,
                  start: float = 0.0) -> torch.Tensor:
    """``(num_frames, C)`` 0/1 targets at hop ``hop`` for a window starting at ``start`` seconds.

    Events are taken relative to ``start`` and clipped to the window; see the module docstring for the rule."""
    y = torch.zeros(num_frames, len(class_index))
    for e in events:
        first, stop = active_frames(e.onset - start, e.offset - start, hop)
        first, stop = max(first, 0), min(stop, num_frames)
        if first < stop:
            y[first:stop, class_index[e.label]] = 1.0
    return y


def weak_targets(events: Iterable[Event], class_index: dict[str, int]) -> torch.Tensor:
    """``(C,)`` clip-level 0/1 targets: the classes with at least one event."""
    y = torch.zeros(len(class_index))
    for e in events:
        y[class_index[e.label]] = 1.0
    return y


def window_starts(duration: float, window: float, hop: float) -> list[float]:
    """Start times (seconds) of windows of ``window`` seconds every ``hop`` seconds covering ``duration``;
    a file shorter than one window gives one window at 0, the last window ends at the file's end."""
    if duration <= window:
        return [0.0]
    d, w, h = _to_us(duration), _to_us(window), _to_us(hop)
    starts = list(range(0, d - w + 1, h))
    if starts[-1] + w < d:
        starts.append(d - w)
    return [s / US for s in starts]


def events_in_window(events: Sequence[Event], start: float, end: float) -> list[Event]:
    """The events overlapping ``[start, end)``, clipped to it and shifted so ``start`` is 0."""
    out = []
    for e in events:
        on, off = max(e.onset, start), min(e.offset, end)
        if on < off:
            out.append(Event(round(on - start, 6), round(off - start, 6), e.label))
    return out


# ---------------------------------------------------------------------------------------------- readers


def read_class_list(path: str | Path) -> list[str]:
    """Class names: one per line, or the toolkit's class csv (``index,mid,display_name``)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return read_class_csv(path)[1]
    names = [ln.strip() for ln in _lines(path) if ln.strip()]
    if not names:
        raise ManifestError(f"{path}: no class names")
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: a class name appears twice")
    return names


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    lines = _lines(path)
    rows = [(i, row) for i, row in enumerate(csv.reader(lines, delimiter="\t"), start=1) if any(c.strip() for c in row)]
    if not rows:
        raise ManifestError(f"{path}: empty label table")
    header = [c.strip() for c in rows[0][1]]
    return header, rows[1:]


def read_strong_tsv(
    path: str | Path,
    class_names: Sequence[str] | None = None,
    audio_root: str | Path | None = None,
    on_bad: Literal["error", "skip"] = "skip",
    tolerance: float = 0.05,
) -> StrongLabels:
    """Read a DESED / AudioSet-strong table (see the module docstring).

    ``class_names`` fixes the class list (rows with other classes are bad rows); without it the sorted set
    of labels in the table is the list. With ``audio_root`` each file is looked up there (a missing or
    unreadable file is a bad row), its duration read from the header, and offsets are checked against it.
    """
    path = Path(path)
    header, rows = _rows(path)
    cols = None
    for names in STRONG_COLUMNS:
        if all(n in header for n in names):
            cols = [header.index(n) for n in names]
    if cols is None:
        raise ManifestError(f"{path}:1: header must name the columns {' '.join(STRONG_COLUMNS[0])} "
                            f"(or AudioSet-strong's {' '.join(STRONG_COLUMNS[1])}), got {' '.join(header)}")
    known = set(class_names) if class_names is not None else None
    events: dict[str, list[Event]] = {}
    durations: dict[str, float] = {}
    paths: dict[str, Path] = {}
    bad_files: dict[str, str] = {}
    skipped: list[str] = []

    def bad(lineno: int, reason: str) -> None:
        msg = f"{path}:{lineno}: {reason}"
        if on_bad == "error":
            raise ManifestError(msg)
        skipped.append(msg)

    for lineno, row in rows:
        cells = [c.strip() for c in row] + [""] * 4
        name, on_s, off_s, label = (cells[c] for c in cols)
        if not name:
            bad(lineno, "no file name")
            continue
        if audio_root is not None and name not in durations and name not in bad_files:
            try:
                frames, sr = audio_info(Path(audio_root) / name)
                durations[name], paths[name] = frames / sr, Path(audio_root) / name
            except AudioError as e:
                bad_files[name] = str(e)
        if name in bad_files:
            bad(lineno, f"audio file unusable ({bad_files[name]})")
            continue
        if not on_s and not off_s and not label:  # DESED: a file without events
            events.setdefault(name, [])
            continue
        try:
            onset, offset = float(on_s), float(off_s)
        except ValueError:
            bad(lineno, f"onset/offset {on_s!r}/{off_s!r} are not numbers")
            continue
        if not (math.isfinite(onset) and math.isfinite(offset)) or onset < 0 or onset >= offset:
            bad(lineno, f"need 0 <= onset < offset, got {onset} and {offset}")
            continue
        if known is not None and label not in known:
            bad(lineno, f"unknown class {label!r} (not in the class list)")
            continue
        if not label:
            bad(lineno, "no event label")
            continue
        if name in durations:
            dur = durations[name]
            if onset >= dur or offset > dur + tolerance:
                bad(lineno, f"event {onset}-{offset} s reaches past the end of the file ({dur:.3f} s)")
                continue
            offset = min(offset, dur)
        events.setdefault(name, []).append(Event(onset, offset, label))
    if not events:
        raise ManifestError(f"{path}: no usable rows ({len(skipped)} bad, first: {skipped[0] if skipped else '-'})")
    names = list(class_names) if class_names is not None else sorted({e.label for ev in events.values() for e in ev})
    if not names:
        raise ManifestError(f"{path}: no event labels and no class list")
    for ev in events.values():
        ev.sort(key=lambda e: (e.onset, e.offset, e.label))
    return StrongLabels(events, names, durations, paths, skipped)


def read_weak_tsv(path: str | Path, class_names: Sequence[str], on_bad: Literal["error", "skip"] = "skip",
                  ) -> tuple[dict[str, list[str]], list[str]]:
    """DESED weak table (``filename event_labels``, labels comma-separated) -> ``({file: labels}, skipped)``."""
    path = Path(path)
    header, rows = _rows(path)
    if header[:2] != ["filename", "event_labels"]:
        raise ManifestError(f"{path}:1: header must be 'filename<TAB>event_labels', got {' '.join(header)}")
    known, out, skipped = set(class_names), {}, []
    for lineno, row in rows:
        name = row[0].strip()
        labels = [c.strip() for c in (row[1] if len(row) > 1 else "").split(",") if c.strip()]
        unknown = [c for c in labels if c not in known]
        if not name or unknown:
            msg = f"{path}:{lineno}: " + (f"unknown class {unknown[0]!r}" if unknown else "no file name")
            if on_bad == "error":
                raise ManifestError(msg)
            skipped.append(msg)
            continue
        out[name] = labels
    return out, skipped


def read_groups(path: str | Path, files: Sequence[str]) -> list[str]:
    """Each file's group from a ``filename<TAB>group`` tsv (optional header): speaker / source / kit."""
    p = Path(path)
    table = {}
    for lineno, line in enumerate(_lines(p), start=1):
        parts = line.rstrip("\n").split("\t")
        if lineno == 1 and parts[:2] == ["filename", "group"]:
            continue
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise ManifestError(f"{p}:{lineno}: expected 'filename<TAB>group'")
        table[parts[0]] = parts[1]
    missing = [f for f in files if f not in table]
    if missing:
        raise ManifestError(f"{p}: no group for {len(missing)} training file(s), e.g. {missing[0]}")
    return [table[f] for f in files]


def write_strong_tsv(path: str | Path, events: dict[str, list[Event]]) -> Path:
    """Write a DESED-style table (files without events get a name-only row)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["filename\tonset\toffset\tevent_label"]
    for name, ev in events.items():
        if not ev:
            lines.append(f"{name}\t\t\t")
        lines.extend(f"{name}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}" for e in ev)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
