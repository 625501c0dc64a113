"""Synthetic audio for demos and tests: an unlabelled corpus and an ESC-50-shaped labelled set.

The sounds are structured (harmonic notes with a timbre, exponential chirps, enveloped band noise,
click trains, amplitude and frequency modulation, rhythms, mixtures) over pink background noise, with a
random gain per clip so loudness carries no information. Classes come in families whose members differ
in *time structure or timbre*, not in average spectrum or level: an up-chirp and a down-chirp over the
same band, click trains or amplitude modulation at different rates, the same note with different
harmonic profiles, the same noise burst played forwards or backwards. The unlabelled corpus draws from
the same generators, so pretraining on it helps the labelled task.

Class k belongs to family ``k % 8`` with variant ``k // 8``; the class definitions do not depend on the
seed, which only picks the clip realisations (each clip has its own generator keyed by
``(seed, set, clip)``, so any subset is reproducible on its own).

    python tools/make_synthetic_data.py OUT [--what both|unlabelled|esc50] [--num-clips 200]
        [--num-classes 10] [--clips-per-class 40] [--duration 10] [--labelled-duration 5] [--seed 0]
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

FAMILIES = ("chirp", "clicks", "am", "harmonic", "vibrato", "burst", "rhythm", "mixture")
TIMBRES = ("saw", "odd", "soft", "formant")
TABLE = 2048  # wavetable length for harmonic tones
_UNLABELLED, _LABELLED = 0, 1  # generator streams


@dataclass(frozen=True)
class ClassSpec:
    """One synthetic class: a family and the parameters that define it."""

    name: str
    family: str
    params: dict


def class_spec(k: int) -> ClassSpec:
    """The definition of class ``k`` (independent of any seed)."""
    family, v = FAMILIES[k % len(FAMILIES)], k // len(FAMILIES)
    if family == "chirp":  # same band for an up/down pair; the band moves every second variant
        lo = 300.0 * 1.5 ** (v // 2 % 6)
        up = v % 2 == 0
        p = {"lo": lo, "hi": lo * 5.0, "up": up}
        return ClassSpec(f"chirp_{'up' if up else 'down'}_{lo:.0f}-{lo * 5:.0f}Hz", family, p)
    if family == "clicks":
        rate = 2.5 * 1.5 ** (v % 8)
        return ClassSpec(f"clicks_{rate:.1f}Hz", family, {"rate": rate})
    if family == "am":
        rate = 2.0 * 1.6 ** (v % 8)
        return ClassSpec(f"am_noise_{rate:.1f}Hz", family, {"rate": rate})
    if family == "harmonic":  # four timbres at one pitch, then the next pitch
        f0 = 196.0 * 2 ** ((v // 4 % 6) * 5 / 12)
        timbre = TIMBRES[v % 4]
        return ClassSpec(f"note_{timbre}_{f0:.0f}Hz", family, {"f0": f0, "timbre": timbre})
    if family == "vibrato":
        rate = (0.0, 3.0, 7.0, 12.0)[v % 4]
        carrier = 440.0 * 2 ** ((v // 4 % 6) * 4 / 12)
        return ClassSpec(f"vibrato_{rate:.0f}Hz_{carrier:.0f}Hz", family, {"rate": rate, "carrier": carrier})
    if family == "burst":  # forwards/backwards pairs over the same band
        lo = 500.0 * 1.6 ** (v // 2 % 6)
        attack = v % 2 == 1
        p = {"lo": lo, "hi": lo * 3.0, "reverse": attack}
        return ClassSpec(f"burst_{'swell' if attack else 'hit'}_{lo:.0f}Hz", family, p)
    if family == "rhythm":
        pattern = np.random.default_rng([1234, v]).permutation(np.r_[np.ones(6), np.zeros(10)]).astype(bool)
        pattern[0] = True
        return ClassSpec(f"rhythm_{''.join('x' if b else '.' for b in pattern)}", family, {"pattern": pattern})
    tone, clicks = class_spec(3 + 8 * (v % 12)), class_spec(1 + 8 * ((v // 2) % 8))
    return ClassSpec(f"mix_{tone.name}+{clicks.name}", family, {"tone": tone, "clicks": clicks})


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


def _wavetable(timbre: str, f0: float, sr: int) -> np.ndarray:
    """One period of a harmonic tone with the given amplitude profile (harmonics below 0.45 sr)."""
    h = np.arange(1, max(2, int(0.45 * sr / f0)) + 1)
    if timbre == "saw":
        a = 1.0 / h
    elif timbre == "odd":
        a = np.where(h % 2 == 1, 1.0 / h, 0.0)
    elif timbre == "soft":
        a = 1.0 / h**2.5
    else:  # formant: a resonance around 1.4 kHz
        a = np.exp(-0.5 * ((h * f0 - 1400.0) / 300.0) ** 2) + 0.05 / h
    phase = 2 * np.pi * np.arange(TABLE)[:, None] / TABLE * h[None, :]
    table = np.sin(phase) @ a
    return table / np.abs(table).max()


def _play(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Read a wavetable at fractional phase ``cycles`` (in periods), linear interpolation."""
    pos = (cycles % 1.0) * TABLE
    i = pos.astype(np.int64)
    frac = pos - i
    return table[i] * (1 - frac) + table[(i + 1) % TABLE] * frac


def _place(n: int, template: np.ndarray, onsets: np.ndarray, amps: np.ndarray | None = None) -> np.ndarray:
    """Sum copies of ``template`` starting at sample ``onsets`` (clipped at the clip end)."""
    out = np.zeros(n)
    for j, start in enumerate(onsets):
        seg = template[: max(0, n - start)]
        out[start : start + seg.size] += seg * (1.0 if amps is None else amps[j])
    return out


def _event_onsets(rng: np.random.Generator, n: int, sr: int, length: float, gap: tuple[float, float]) -> np.ndarray:
    """Non-overlapping event starts: events of ``length`` s separated by uniform random gaps."""
    starts, t = [], rng.uniform(0.0, 0.5)
    while t < n / sr - 0.1:
        starts.append(int(t * sr))
        t += length + rng.uniform(*gap)
    return np.asarray(starts, dtype=np.int64)


def _ramp(m: int, sr: int, ms: float = 5.0) -> np.ndarray:
    """Flat envelope of ``m`` samples with raised-cosine edges of ``ms`` milliseconds."""
    r = min(m // 2, int(sr * ms / 1000))
    env = np.ones(m)
    if r > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)
        env[:r], env[m - r :] = edge, edge[::-1]
    return env


def _chirp(rng, n, sr, lo, hi, up):
    lo, hi = lo * rng.uniform(0.97, 1.03), hi * rng.uniform(0.97, 1.03)
    dur = 0.45
    tau = np.arange(int(dur * sr)) / sr
    k = hi / lo if up else lo / hi
    f_start = lo if up else hi
    cycles = f_start * dur / np.log(k) * (k ** (tau / dur) - 1.0)  # exponential sweep, integrated frequency
    sweep = (np.sin(2 * np.pi * cycles) + 0.3 * np.sin(4 * np.pi * cycles)) * _ramp(tau.size, sr, 20)
    onsets = _event_onsets(rng, n, sr, dur, (0.1, 0.6))
    return _place(n, sweep, onsets, rng.uniform(0.7, 1.0, onsets.size))


def _click_train(rng, n, sr, rate):
    rate *= rng.uniform(0.96, 1.04)
    tau = np.arange(int(0.01 * sr)) / sr
    click = np.exp(-tau / 0.002) * np.sin(2 * np.pi * 2500.0 * tau + 0.5)
    period = sr / rate
    count = int(n / period) + 1
    onsets = (rng.uniform(0, period) + np.arange(count) * period + rng.normal(0, 0.01 * period, count)).astype(np.int64)
    onsets = onsets[(onsets >= 0) & (onsets < n)]
    return _place(n, click, onsets, rng.uniform(0.8, 1.0, onsets.size))


def _am_noise(rng, n, sr, rate):
    rate *= rng.uniform(0.96, 1.04)
    t = np.arange(n) / sr
    env = (0.5 + 0.5 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))) ** 2
    return _band_noise(rng, n, sr, 800.0, 2500.0) * env


def _notes(rng, n, sr, f0, timbre):
    f0 *= rng.uniform(0.98, 1.02)
    table = _wavetable(timbre, f0, sr)
    t = np.arange(n) / sr
    tone = _play(table, f0 * t + rng.uniform())
    gate = np.zeros(n)
    length = rng.uniform(0.3, 0.7)
    for start in _event_onsets(rng, n, sr, length, (0.05, 0.4)):
        m = min(int(length * sr), n - start)
        decay = np.exp(-np.arange(m) / (0.5 * sr))
        gate[start : start + m] = _ramp(m, sr, 15) * decay
    return tone * gate


def _vibrato(rng, n, sr, rate, carrier):
    carrier *= rng.uniform(0.98, 1.02)
    t = np.arange(n) / sr
    depth = 0.04 if rate > 0 else 0.0
    freq = carrier * (1.0 + depth * np.sin(2 * np.pi * rate * rng.uniform(0.95, 1.05) * t + rng.uniform(0, 6.3)))
    tone = _play(_wavetable("soft", carrier, sr), np.cumsum(freq) / sr)
    gate = np.zeros(n)
    for start in _event_onsets(rng, n, sr, 1.2, (0.1, 0.5)):
        m = min(int(1.2 * sr), n - start)
        gate[start : start + m] = _ramp(m, sr, 40)
    return tone * gate


def _burst(rng, n, sr, lo, hi, reverse):
    length = int(0.3 * sr)
    tau = np.arange(length) / sr
    env = np.exp(-tau / 0.06) * _ramp(length, sr, 2)
    env = env[::-1] if reverse else env
    onsets = _event_onsets(rng, n, sr, 0.3, (0.1, 0.7))
    gate = _place(n, env, onsets, rng.uniform(0.7, 1.0, onsets.size))
    return _band_noise(rng, n, sr, lo, hi) * gate


def _rhythm(rng, n, sr, pattern):
    step = 0.125 * rng.uniform(0.97, 1.03)
    steps = np.arange(int(n / sr / step) + 1)
    hits = steps[pattern[steps % pattern.size]]
    onsets = ((hits * step + rng.uniform(0, 0.2)) * sr).astype(np.int64)
    onsets = onsets[onsets < n]
    m = int(0.07 * sr)
    pip = _play(_wavetable("saw", 660.0, sr), 660.0 * np.arange(m) / sr) * np.exp(-np.arange(m) / (0.02 * sr))
    return _place(n, pip * _ramp(m, sr, 2), onsets, rng.uniform(0.8, 1.0, onsets.size))


def _source(rng: np.random.Generator, spec: ClassSpec, n: int, sr: int) -> np.ndarray:
    p = spec.params
    if spec.family == "mixture":
        a, b = _unit(_source(rng, p["tone"], n, sr)), _unit(_source(rng, p["clicks"], n, sr))
        return a + rng.uniform(0.4, 1.0) * b
    gen: Callable[..., np.ndarray] = {
        "chirp": _chirp, "clicks": _click_train, "am": _am_noise, "harmonic": _notes,
        "vibrato": _vibrato, "burst": _burst, "rhythm": _rhythm,
    }[spec.family]
    return gen(rng, n, sr, **p)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def render_clip(rng: np.random.Generator, specs: list[ClassSpec], duration: float, sr: int) -> np.ndarray:
    """One clip: the sum of ``specs``' sources, pink background noise at 10-30 dB SNR, random level.

    The level (RMS between -48 and -28 dBFS, lowered only where a peak would pass 0.99) is drawn per
    clip, so loudness tells nothing about the class.
    """
    n = int(round(duration * sr))
    x = sum(_unit(_source(rng, s, n, sr)) * rng.uniform(0.6, 1.0) for s in specs)
    x = _unit(x) + _pink_noise(rng, n) * 10 ** (-rng.uniform(10, 30) / 20)
    x = _unit(x) * 10 ** (rng.uniform(-48, -28) / 20)
    peak = np.abs(x).max()
    return (x * min(1.0, 0.99 / peak) if peak > 0 else x).astype(np.float32)


# ---------------------------------------------------------------------------------------------- data sets


def make_unlabelled_corpus(
    out_dir: str | Path, num_clips: int = 200, duration: float = 10.0, seed: int = 0,
    sample_rate: int = 16000, num_classes: int = 64, progress: bool = False,
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
    out_dir: str | Path, num_classes: int = 10, clips_per_class: int = 40, duration: float = 5.0,
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
        soundfile.write(root / "audio" / name, render_clip(rng, [specs[k]], duration, sample_rate), sample_rate,
                        subtype="PCM_16")
        rows.append((name, fold, k, specs[k].name, k < 10, clip_id, "A"))
    rows.sort(key=lambda r: r[0])
    with open(root / "meta" / "esc50.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return root


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder (gets unlabelled/ and esc50/)")
    ap.add_argument("--what", choices=("both", "unlabelled", "esc50"), default="both")
    ap.add_argument("--num-clips", type=int, default=200, help="unlabelled clips (default 200)")
    ap.add_argument("--duration", type=float, default=10.0, help="unlabelled clip length in seconds (default 10)")
    ap.add_argument("--num-classes", type=int, default=10, help="labelled classes (default 10)")
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
