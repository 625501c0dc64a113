"""A real-audio sound event detection benchmark: polyphonic soundscapes with known onsets and offsets.

Sources are the recorded material of the real-audio benchmark (:mod:`eat.data.real_benchmark`, Debian's
festival/flite voices and General-MIDI soundfonts played by fluidsynth); they are rendered one event at a
time, so every event's extent is known. Six classes: ``speech`` (a random English sentence), ``piano``,
``violin``, ``trumpet``, ``flute`` (a short melody of that General-MIDI program) and ``drums`` (a pattern of
kick, snare and hi-hat hits).

Source *groups* keep sources apart: training soundscapes are built from group ``A`` (voices kal, the
FluidR3 soundfont) or group ``B`` (voices slt and awb, the TimGM6mb soundfont), one group per soundscape
(``train_groups.tsv``: validation by group holds a whole group out); test soundscapes from the held-out
group ``test`` (voices ked and rms, the MuseScore soundfont), which no training or pretraining clip uses.

A soundscape (10 s, 16 kHz mono) is background noise (white, pink or brown, -50..-35 dBFS RMS) plus 1 to 5
events of random classes at random times, overlapping freely (polyphony), each at a peak level of
-22..-6 dBFS. An event's label is the extent of its source above -40 dB of the source's peak (in 10 ms
frames) placed at its sample offset, widened to whole milliseconds; events are cut at the soundscape's end.

Output: ``OUT/{train,test}/scape_NNNN.wav``, ``OUT/{train,test}.tsv`` (DESED strong tables),
``OUT/train_groups.tsv`` (``filename group``), ``OUT/classes.txt`` and ``OUT/sed_benchmark.json`` (seed,
scale, counts, Debian package versions). Same seed and package versions, same soundscapes.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from eat.apps.real_benchmark import (
    SAMPLE_RATE,
    SOUNDFONTS,
    VOICES,
    WORDS,
    check_requirements,
    coloured_noise,
    drum_events,
    melody_events,
    package_versions,
    render_segments,
    render_speech,
    stream,
)
from eat.data.strong_labels import Event, write_strong_tsv

CLASSES = ("speech", "piano", "violin", "trumpet", "flute", "drums")
PROGRAMS = {"piano": (0, 48, 84), "violin": (40, 55, 88), "trumpet": (56, 55, 82), "flute": (73, 60, 93)}
DRUM_KEYS = (36, 38, 42)  # kick, snare, closed hi-hat
GROUPS = {  # group -> (voices, soundfont)
    "A": (("fest_kal", "flite_kal16"), "fluidr3"),
    "B": (("fest_slt", "flite_slt", "flite_awb"), "timgm6mb"),
    "test": (("fest_ked", "flite_rms"), "musescore"),
}


@dataclass(frozen=True)
class SEDScale:
    """Counts of one build."""

    train_scapes: int = 240  # training soundscapes (half from each training group)
    test_scapes: int = 80
    pool: int = 16  # rendered sources per (group, class)
    scape_s: float = 10.0
    max_events: int = 5


FULL = SEDScale()
QUICK = SEDScale(train_scapes=8, test_scapes=4, pool=2)


def active_extent(wave: np.ndarray, floor_db: float = -40.0, frame: int = 160) -> tuple[int, int]:
    """``(first, stop)`` samples of the 10 ms frames whose peak is within ``floor_db`` of the whole peak."""
    peak = float(np.abs(wave).max()) if len(wave) else 0.0
    if peak == 0.0:
        return 0, 0
    n = len(wave) // frame * frame
    frames = np.abs(wave[:n]).reshape(-1, frame).max(axis=1) if n else np.abs(wave)[None]
    on = np.flatnonzero(frames >= peak * 10 ** (floor_db / 20))
    return int(on[0] * frame), int(min(len(wave), (on[-1] + 1) * frame))


def trim(wave: np.ndarray) -> np.ndarray:
    a, b = active_extent(wave)
    return wave[a:b]


def mix_scape(sources: list[tuple[str, np.ndarray]], rng: np.random.Generator, seconds: float,
              max_events: int) -> tuple[np.ndarray, list[Event]]:
    """One soundscape from trimmed ``(class, wave)`` sources: background + 1..``max_events`` events."""
    n = int(round(seconds * SAMPLE_RATE))
    colour = str(rng.choice(["white", "pink", "brown"]))
    x = coloured_noise(rng, n, colour) * 10 ** (rng.uniform(-50, -35) / 20)
    events = []
    for _ in range(int(rng.integers(1, max_events + 1))):
        label, src = sources[int(rng.integers(0, len(sources)))]
        src = src[: n - 1]
        start = int(rng.integers(0, n - len(src) + 1))
        gain = 10 ** (rng.uniform(-22, -6) / 20) / max(float(np.abs(src).max()), 1e-9)
        x[start : start + len(src)] += gain * src
        a, b = active_extent(src)  # sources are trimmed: (0, len) up to the frame rounding
        on = (start + a) * 1000 // SAMPLE_RATE / 1000  # whole milliseconds that cover the sounding samples
        off = -(-min(start + b, n) * 1000 // SAMPLE_RATE) / 1000
        if off > on:
            events.append(Event(on, off, label))
    events.sort(key=lambda e: (e.onset, e.offset, e.label))
    return np.clip(x, -1, 1).astype(np.float32), events


def render_pool(group: str, scale: SEDScale, seed: int, work: Path, log: Callable[[str], None]) -> dict:
    """Trimmed sources of every class for one group: ``{class: [wave, ...]}``."""
    voice_names, sf_name = GROUPS[group]
    sf = next(s for s in SOUNDFONTS if s.name == sf_name)
    pool: dict[str, list[np.ndarray]] = {c: [] for c in CLASSES}
    voices = [v for v in VOICES if v.name in voice_names]
    for k, v in enumerate(voices):
        rng = stream(seed, "sed", group, v.name)
        count = scale.pool // len(voices) + (k < scale.pool % len(voices))
        words = WORDS["english"]
        texts = [" ".join(words[i] for i in rng.integers(0, len(words), int(rng.integers(2, 6))))
                 for _ in range(count)]
        pool["speech"] += [trim(w) for w in render_speech(v, texts, work)]
    log(f"  group {group}: {len(pool['speech'])} utterances from {', '.join(voice_names)}; soundfont {sf_name}")
    for label, (program, low, high) in PROGRAMS.items():
        rng = stream(seed, "sed", group, label)
        lengths = rng.uniform(0.6, 3.0, scale.pool)
        segs = render_segments(lambda i, s, r=rng, p=program, lo=low, hi=high, ln=lengths: melody_events(
            r, p, lo, hi, s, float(ln[i])), scale.pool, 3.0, sf, work, f"sed_{group}_{label}")
        pool[label] = [trim(w) for w in segs]
    rng = stream(seed, "sed", group, "drums")
    segs = render_segments(lambda i, s, r=rng: drum_events(r, list(DRUM_KEYS), s, float(r.uniform(1.0, 3.0)),
                                                           (60, 127), (1, 3)),
                           scale.pool, 3.0, sf, work, f"sed_{group}_drums")
    pool["drums"] = [trim(w) for w in segs]
    for c in CLASSES:
        pool[c] = [w for w in pool[c] if len(w) > SAMPLE_RATE // 20]  # at least 50 ms of sound
        if not pool[c]:
            raise RuntimeError(f"group {group}: no usable {c} source was rendered")
    return pool


def build_sed(out: Path, scale: SEDScale = FULL, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Build the benchmark under ``out`` (module docstring); returns what ``sed_benchmark.json`` holds."""
    check_requirements()
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eat-sedbench-") as tmp:
        pools = {g: render_pool(g, scale, seed, Path(tmp), log) for g in GROUPS}
    counts, groups_rows = {}, ["filename\tgroup"]
    for split, n in (("train", scale.train_scapes), ("test", scale.test_scapes)):
        (out / split).mkdir(exist_ok=True)
        table: dict[str, list[Event]] = {}
        for i in range(n):
            group = ("A", "B")[i % 2] if split == "train" else "test"
            sources = [(c, w) for c in CLASSES for w in pools[group][c]]
            rng = stream(seed, "sed", split, str(i))
            wave, events = mix_scape(sources, rng, scale.scape_s, scale.max_events)
            name = f"scape_{i:04d}.wav"
            soundfile.write(out / split / name, wave, SAMPLE_RATE, subtype="PCM_16")
            table[name] = events
            if split == "train":
                groups_rows.append(f"{name}\t{group}")
        write_strong_tsv(out / f"{split}.tsv", table)
        counts[split] = {"soundscapes": n, "events": sum(len(e) for e in table.values())}
        log(f"  {split}: {n} soundscapes, {counts[split]['events']} events")
    (out / "train_groups.tsv").write_text("\n".join(groups_rows) + "\n")
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    info = {"seed": seed, "scale": dataclasses.asdict(scale), "classes": list(CLASSES), "counts": counts,
            "groups": {g: {"voices": list(v), "soundfont": s} for g, (v, s) in GROUPS.items()},
            "packages": package_versions(), "seconds": round(time.perf_counter() - t0, 1)}
    (out / "sed_benchmark.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
