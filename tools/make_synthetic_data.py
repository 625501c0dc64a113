"""Synthetic audio for demos and tests: an unlabelled corpus and an ESC-50-shaped labelled set.

The labelled task is built so that *temporal structure* decides the class, not the average spectrum
or the loudness. Classes come in five families, and the four members of a family use the same sound
material in the same band and differ only in how it is arranged in time:

* ``sweep``  - a harmonic tone gliding over the same two octaves: up, down, up-then-down, down-then-up;
* ``melody`` - the same three notes (root, major third, fifth) in four different orders;
* ``pulse``  - band-noise bursts with a decaying envelope: hit (sharp attack), swell (the hit reversed),
  two half-length hits, two half-length swells (all four share the envelope's level distribution);
* ``am``     - band noise whose loudness is modulated at 2, 3, 4.5 or 7 Hz;
* ``rhythm`` - short pips on an 8-step grid in four patterns with the same number of hits.

So per-band log-mel statistics (mean and std over time) can tell the family but hardly the member,
while a model that sees local time-frequency shapes and their order can tell both. Class ``k`` is
family ``k % 5``, member ``(k // 5) % 4``, register ``k // 20`` (each register moves the band or pitch,
so larger class counts stay well defined); the first five classes are one per family and differ in
spectrum too. Every clip varies: timbre, event length (+-10 %), gaps between events, tempo and pitch
(a few %), a random level (loudness tells nothing), pink background noise at 10-30 dB SNR, and in half
the labelled clips a quieter event of another family overlapping it. The unlabelled corpus mixes one
or two sources from the first ``num_classes`` (default 40, two registers) definitions.

The class definitions do not depend on the seed, which only picks the clip realisations (each clip has
its own generator keyed by ``(seed, set, clip)``, so any subset is reproducible on its own).

    python tools/make_synthetic_data.py OUT [--what both|unlabelled|esc50] [--num-clips 200]
        [--num-classes 20] [--clips-per-class 40] [--duration 10] [--labelled-duration 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from eat.cli import cli_main

FAMILIES = ("sweep", "melody", "pulse", "am", "rhythm")
MEMBERS = {
    "sweep": ("up", "down", "updown", "downup"),
    "melody": ((0, 4, 7), (7, 4, 0), (0, 7, 4), (4, 0, 7)),  # semitones above the root, in playing order
    "pulse": ("hit", "swell", "hits", "swells"),
    "am": (2.0, 3.0, 4.5, 7.0),  # modulation rate in Hz
    "rhythm": ("x.x.x.x.", "xx..xx..", "xxx..x..", "x..x.xx."),  # 4 hits on 8 steps each
}
TABLE = 2048  # wavetable length for harmonic tones
_UNLABELLED, _LABELLED = 0, 1  # generator streams


@dataclass(frozen=True)
class ClassSpec:
    """One synthetic class: a family and the parameters that define it."""

    name: str
    family: str
    params: dict


def class_spec(k: int) -> ClassSpec:
    """The definition of class ``k`` (independent of any seed); see the module docstring."""
    family = FAMILIES[k % len(FAMILIES)]
    member, register = (k // len(FAMILIES)) % 4, k // (4 * len(FAMILIES))
    which = MEMBERS[family][member]
    if family == "sweep":
        lo = 350.0 * 2 ** (1.3 * (register % 3))
        return ClassSpec(f"sweep_{which}_{lo:.0f}Hz", family, {"lo": lo, "hi": 4 * lo, "shape": which})
    if family == "melody":
        f0 = 220.0 * 2 ** (7 * (register % 4) / 12)
        return ClassSpec(f"melody_{'-'.join(map(str, which))}_{f0:.0f}Hz", family, {"f0": f0, "steps": which})
    if family == "pulse":
        lo = 1800.0 * 1.5 ** (register % 3)
        return ClassSpec(f"pulse_{which}_{lo:.0f}Hz", family, {"lo": lo, "hi": 2.2 * lo, "shape": which})
    if family == "am":
        lo = 500.0 * 1.7 ** (register % 3)
        return ClassSpec(f"am_{which:g}Hz_{lo:.0f}Hz", family, {"rate": which, "lo": lo, "hi": 2.5 * lo})
    freq = 900.0 * 1.6 ** (register % 3)
    return ClassSpec(f"rhythm_{which}_{freq:.0f}Hz", family, {"freq": freq, "pattern": which})


# ---------------------------------------------------------------------------------------------- generators


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """White noise band-limited to [lo, hi] Hz with 10 % cosine skirts, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    skirt = 0.1 * (hi - lo)
    gain = np.clip(np.minimum(f - (lo - skirt), (hi + skirt) - f) / skirt, 0.0, 1.0)
    x = np.fft.irfft(spec * np.sin(0.5 * np.pi * gain) ** 2, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[1:] /= np.sqrt(np.arange(1, spec.size))
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _wavetable(f0: float, sr: int, tilt: float) -> np.ndarray:
    """One period of a harmonic tone, harmonic h at amplitude h^-tilt (harmonics below 0.45 sr of ``f0``)."""
    h = np.arange(1, max(2, int(0.45 * sr / f0)) + 1)
    phase = 2 * np.pi * np.arange(TABLE)[:, None] / TABLE * h[None, :]
    table = np.sin(phase) @ (1.0 / h**tilt)
    return table / np.abs(table).max()


def _play(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Read a wavetable at fractional phase ``cycles`` (in periods), linear interpolation."""
    pos = (cycles % 1.0) * TABLE
    i = pos.astype(np.int64)
    frac = pos - i
    return table[i] * (1 - frac) + table[(i + 1) % TABLE] * frac


def _ramp(m: int, sr: int, ms: float = 5.0) -> np.ndarray:
    """Flat envelope of ``m`` samples with raised-cosine edges of ``ms`` milliseconds."""
    r = min(m // 2, int(sr * ms / 1000))
    env = np.ones(m)
    if r > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)
        env[:r], env[m - r :] = edge, edge[::-1]
    return env


def _event_onsets(rng: np.random.Generator, n: int, sr: int, length: float, gap: tuple[float, float]) -> np.ndarray:
    """Non-overlapping event starts: events of ``length`` s separated by uniform random gaps."""
    starts, t = [], rng.uniform(0.0, 0.4)
    while t < n / sr - 0.1:
        starts.append(int(t * sr))
        t += length + rng.uniform(*gap)
    return np.asarray(starts, dtype=np.int64)


def _place(n: int, template: np.ndarray, onsets: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Sum copies of ``template`` scaled by ``amps`` starting at sample ``onsets`` (clipped at the end)."""
    out = np.zeros(n)
    for start, amp in zip(onsets, amps, strict=True):
        seg = template[: max(0, n - start)]
        out[start : start + seg.size] += seg * amp
    return out


def _events(rng: np.random.Generator, n: int, sr: int, template: np.ndarray, gap: tuple[float, float]) -> np.ndarray:
    onsets = _event_onsets(rng, n, sr, template.size / sr, gap)
    return _place(n, template, onsets, rng.uniform(0.7, 1.0, onsets.size))


def _sweep(rng, n, sr, lo, hi, shape):
    """Glides of ~0.5 s between ``lo`` and ``hi`` (exponential in frequency) in the member's shape."""
    m = int(0.5 * rng.uniform(0.9, 1.1) * sr)
    u = np.arange(m) / m
    pos = {"up": u, "down": 1 - u, "updown": 1 - np.abs(2 * u - 1), "downup": np.abs(2 * u - 1)}[shape]
    scale = rng.uniform(0.97, 1.03)
    cycles = np.cumsum(lo * scale * (hi / lo) ** pos) / sr
    tone = _play(_wavetable(lo * scale, sr, rng.uniform(1.5, 3.0)), cycles) * _ramp(m, sr, 20)
    return _events(rng, n, sr, tone, (0.1, 0.5))


def _melody(rng, n, sr, f0, steps):
    """Three-note phrases (~0.16 s per note) in the member's order."""
    f0 *= rng.uniform(0.97, 1.03)
    m = int(0.16 * rng.uniform(0.9, 1.1) * sr)
    table = _wavetable(f0, sr, rng.uniform(1.0, 2.0))
    t = np.arange(m) / sr
    phrase = np.concatenate([_play(table, f0 * 2 ** (s / 12) * t) * _ramp(m, sr, 8) for s in steps])
    return _events(rng, n, sr, phrase, (0.1, 0.4))


def _pulse(rng, n, sr, lo, hi, shape):
    """Band-noise bursts of ~0.3 s: one decay (tau 60 ms) or two half-length ones (tau 30 ms), or reversed."""
    m = int(0.3 * rng.uniform(0.9, 1.1) * sr)
    if shape in ("hit", "swell"):
        env = np.exp(-np.arange(m) / (0.06 * sr))
    else:
        half = np.exp(-np.arange(m // 2) / (0.03 * sr))
        env = np.concatenate([half, half, np.zeros(m - 2 * half.size)])
    if shape in ("swell", "swells"):
        env = env[::-1]
    gate = _events(rng, n, sr, env * _ramp(m, sr, 2), (0.1, 0.5))
    return _band_noise(rng, n, sr, lo, hi) * gate


def _am(rng, n, sr, rate, lo, hi):
    """Band noise under a raised-sine-squared loudness envelope at ``rate`` Hz (+-4 %)."""
    t = np.arange(n) / sr
    env = (0.5 + 0.5 * np.sin(2 * np.pi * rate * rng.uniform(0.96, 1.04) * t + rng.uniform(0, 2 * np.pi))) ** 2
    return _band_noise(rng, n, sr, lo, hi) * env


def _rhythm(rng, n, sr, freq, pattern):
    """50 ms two-partial pips on a grid of ~110 ms steps following the 8-step ``pattern``."""
    step = 0.11 * rng.uniform(0.93, 1.07)
    hits = np.array([c == "x" for c in pattern])
    steps = np.arange(int(n / sr / step) + 1)
    onsets = ((steps[hits[steps % hits.size]] * step + rng.uniform(0, 0.3)) * sr).astype(np.int64)
    onsets = onsets[onsets < n]
    m = int(0.05 * sr)
    tau = np.arange(m) / sr
    f = freq * rng.uniform(0.95, 1.05)
    pip = (np.sin(2 * np.pi * f * tau) + 0.5 * np.sin(2 * np.pi * 2.7 * f * tau)) * np.exp(-tau / 0.012)
    return _place(n, pip * _ramp(m, sr, 1), onsets, rng.uniform(0.8, 1.0, onsets.size))


_GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "sweep": _sweep, "melody": _melody, "pulse": _pulse, "am": _am, "rhythm": _rhythm,
}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def render_clip(rng: np.random.Generator, specs: list[ClassSpec], duration: float, sr: int,
                rel_levels: list[float] | None = None) -> np.ndarray:
    """One clip: the sum of ``specs``' sources, pink background noise at 10-30 dB SNR, random level.

    ``rel_levels`` scales each source after it is brought to unit RMS (default: U[0.6, 1] each). The
    level (RMS between -48 and -28 dBFS, lowered only where a peak would pass 0.99) is drawn per clip,
    so loudness tells nothing about the class.
    """
    n = int(round(duration * sr))
    levels = rel_levels if rel_levels is not None else [rng.uniform(0.6, 1.0) for _ in specs]
    x = sum(_unit(_GENERATORS[s.family](rng, n, sr, **s.params)) * g for s, g in zip(specs, levels, strict=True))
    x = _unit(x) + _pink_noise(rng, n) * 10 ** (-rng.uniform(10, 30) / 20)
    x = _unit(x) * 10 ** (rng.uniform(-48, -28) / 20)
    peak = np.abs(x).max()
    return (x * min(1.0, 0.99 / peak) if peak > 0 else x).astype(np.float32)


def render_labelled(rng: np.random.Generator, k: int, num_classes: int, duration: float, sr: int) -> np.ndarray:
    """A clip of class ``k``; half the time with a quieter (-6 to -14 dB) source of another family on top."""
    if rng.uniform() >= 0.5:
        return render_clip(rng, [class_spec(k)], duration, sr, [1.0])
    others = [j for j in range(max(num_classes, len(FAMILIES))) if j % len(FAMILIES) != k % len(FAMILIES)]
    other = class_spec(int(rng.choice(others)))
    return render_clip(rng, [class_spec(k), other], duration, sr, [1.0, 10 ** (-rng.uniform(6, 14) / 20)])


# ---------------------------------------------------------------------------------------------- data sets


def make_unlabelled_corpus(
    out_dir: str | Path, num_clips: int = 200, duration: float = 10.0, seed: int = 0,
    sample_rate: int = 16000, num_classes: int = 40, progress: bool = False,
) -> Path:
    """Write ``out_dir/audio/NNNNNN.wav`` and the manifest ``out_dir/train.tsv``; return the manifest path.

    Each clip holds one or two sources drawn from the first ``num_classes`` class definitions.
    """
    out = Path(out_dir).resolve()
    (out / "audio").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in tqdm(range(num_clips), desc="unlabelled clips", disable=not progress):
        rng = np.random.default_rng([seed, _UNLABELLED, i])
        ks = rng.choice(num_classes, size=rng.integers(1, 3), replace=False)
        wave = render_clip(rng, [class_spec(int(k)) for k in ks], duration, sample_rate)
        rel = f"audio/{i:06d}.wav"
        soundfile.write(out / rel, wave, sample_rate, subtype="PCM_16")
        entries.append((rel, wave.size))
    manifest = out / "train.tsv"
    manifest.write_text(f"{out}\n" + "".join(f"{rel}\t{n}\n" for rel, n in entries), encoding="utf-8")
    return manifest


def make_esc50_like(
    out_dir: str | Path, num_classes: int = 20, clips_per_class: int = 40, duration: float = 5.0,
    seed: int = 0, sample_rate: int = 16000, progress: bool = False,
) -> Path:
    """Write an ESC-50-shaped set (``audio/{fold}-{id}-A-{target}.wav`` + ``meta/esc50.csv``); return its root.

    Clip ``j`` of every class goes to fold ``j % 5 + 1``, so classes are balanced across the 5 folds
    (exactly when ``clips_per_class`` is a multiple of 5).
    """
    root = Path(out_dir).resolve()
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    specs = [class_spec(k) for k in range(num_classes)]
    rows = []
    jobs = [(k, j) for k in range(num_classes) for j in range(clips_per_class)]
    for k, j in tqdm(jobs, desc="labelled clips", disable=not progress):
        clip_id = 100000 + k * clips_per_class + j
        fold = j % 5 + 1
        rng = np.random.default_rng([seed, _LABELLED, k, j])
        name = f"{fold}-{clip_id}-A-{k}.wav"
        wave = render_labelled(rng, k, num_classes, duration, sample_rate)
        soundfile.write(root / "audio" / name, wave, sample_rate, subtype="PCM_16")
        rows.append((name, fold, k, specs[k].name, k < 10, clip_id, "A"))
    rows.sort(key=lambda r: r[0])
    with open(root / "meta" / "esc50.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return root


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder (gets unlabelled/ and esc50/)")
    ap.add_argument("--what", choices=("both", "unlabelled", "esc50"), default="both")
    ap.add_argument("--num-clips", type=int, default=200, help="unlabelled clips (default 200)")
    ap.add_argument("--duration", type=float, default=10.0, help="unlabelled clip length in seconds (default 10)")
    ap.add_argument("--num-classes", type=int, default=20, help="labelled classes (default 20)")
    ap.add_argument("--clips-per-class", type=int, default=40, help="labelled clips per class (default 40)")
    ap.add_argument("--labelled-duration", type=float, default=5.0, help="labelled clip length in s (default 5)")
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for key in ("num_clips", "num_classes", "clips_per_class", "sample_rate"):
        if getattr(args, key) <= 0:
            sys.exit(f"error: --{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    if args.duration <= 0 or args.labelled_duration <= 0:
        sys.exit("error: --duration and --labelled-duration must be positive")
    try:
        if args.what in ("both", "unlabelled"):
            m = make_unlabelled_corpus(args.out / "unlabelled", args.num_clips, args.duration, args.seed,
                                       args.sample_rate, progress=True)
            print(f"unlabelled: {args.num_clips} clips, manifest {m}")
        if args.what in ("both", "esc50"):
            r = make_esc50_like(args.out / "esc50", args.num_classes, args.clips_per_class, args.labelled_duration,
                                args.seed, args.sample_rate, progress=True)
            print(f"esc50-like: {args.num_classes} classes x {args.clips_per_class} clips, root {r}")
    except OSError as e:
        sys.exit(f"error: cannot write under {args.out}: {e}")


if __name__ == "__main__":
    main()
