"""A real-audio benchmark built from Debian packages: synthesised speech and sampled instruments.

The sounds are recorded or modelled material shipped by Debian, not procedural signals: festival's
diphone and HTS voices (recorded speakers), flite's voices, and General-MIDI soundfonts (recorded
instrument and drum samples) played by fluidsynth from MIDI files written here. Four tasks, each with
*held-out sources* in the test split, so a probe cannot win by memorising a speaker or a sample bank:

* ``keywords`` (10 classes): the words yes/no/up/down/left/right/on/off/stop/go. Train: voices kal
  (festival diphone and flite), slt (festival HTS and flite), awb (flite). Test: ked (festival) and rms
  (flite), two speakers never heard in training.
* ``language`` (4 classes): random sentences in English, Italian, Finnish and Czech (ASCII word lists
  below). Train: English kal/slt/awb, Italian pc, Finnish lj, Czech machac/ph/krb. Test: English ked and
  rms, Italian lp, Finnish mv, Czech dita; every test speaker is unseen, and for three languages the
  test speaker has the other gender than the training one(s), so pitch does not give the language away.
* ``instruments`` (10 classes): short random melodies on 10 General-MIDI programs. Train: the
  FluidR3_GM and TimGM6mb soundfonts. Test: MuseScore_General (a different sample set).
* ``drums`` (12 classes): one to three hits of one General-MIDI percussion sound (three hi-hats, two toms,
  side stick and snare, ride and ride bell among them) and, in half the clips, a quieter hit of another one;
  same soundfont split.

Every labelled clip is 2 s at 16 kHz mono. Each rendering is varied with a seeded generator: speed
(resampling, which moves pitch and rate together: +-12 % for speech), position in the clip, level
(peak -24..-3 dBFS) and background noise (white, pink or brown, 5-30 dB SNR, in 80 % of the clips).

The unlabelled pretraining set (``unlabelled/train.tsv``, a fairseq manifest) holds 3 s clips of
other sentences from the *training* voices in all four languages, plus melodies on 24 GM programs and
drum patterns from the *training* soundfonts. No held-out voice or soundfont is in it, and no
labelled clip is in it.

Output: ``OUT/unlabelled/{train.tsv,wav/}``, ``OUT/<task>/{train.csv,test.csv,wav/}`` (``path,label``
rows, paths relative to the csv) and ``OUT/benchmark.json`` (seed, scale, splits, counts, and the Debian
package versions used). Needs the packages in :data:`PACKAGES` (``apt-get install -y ...``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from eat.audio.io import AudioError, load_audio
from eat.data.manifest import write_manifest

SAMPLE_RATE = 16000
PACKAGES = (
    "festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts", "festvox-italp16k",
    "festvox-itapc16k", "festlex-ifd", "festvox-suopuhe-lj", "festvox-suopuhe-mv", "festvox-suopuhe-common",
    "festival-czech", "festvox-czech-dita", "festvox-czech-krb", "festvox-czech-machac", "festvox-czech-ph",
    "flite", "fluidsynth", "fluid-soundfont-gm", "timgm6mb-soundfont", "musescore-general-soundfont-small",
)
TASKS = ("keywords", "language", "instruments", "drums")


class BenchmarkError(Exception):
    """A missing program/file or a failed render; the message says which."""


# ---------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Voice:
    """A speaker as rendered by one engine. ``speaker`` is the person (two engines may share one)."""

    name: str
    engine: str  # "festival" (ident = voice function suffix) or "flite" (ident = -voice name)
    ident: str
    language: str
    speaker: str
    test: bool  # held out: only in the test split of the labelled tasks, never in the unlabelled set


VOICES = (
    Voice("fest_kal", "festival", "kal_diphone", "english", "kal", False),
    Voice("flite_kal16", "flite", "kal16", "english", "kal", False),
    Voice("fest_slt", "festival", "cmu_us_slt_arctic_hts", "english", "slt", False),
    Voice("flite_slt", "flite", "slt", "english", "slt", False),
    Voice("flite_awb", "flite", "awb", "english", "awb", False),
    Voice("fest_ked", "festival", "ked_diphone", "english", "ked", True),
    Voice("flite_rms", "flite", "rms", "english", "rms", True),
    Voice("fest_it_pc", "festival", "pc_diphone", "italian", "pc", False),
    Voice("fest_it_lp", "festival", "lp_diphone", "italian", "lp", True),
    Voice("fest_fi_lj", "festival", "suo_fi_lj_diphone", "finnish", "lj", False),
    Voice("fest_fi_mv", "festival", "hy_fi_mv_diphone", "finnish", "mv", True),
    Voice("fest_cs_machac", "festival", "czech_machac", "czech", "machac", False),
    Voice("fest_cs_ph", "festival", "czech_ph", "czech", "ph", False),
    Voice("fest_cs_krb", "festival", "czech_krb", "czech", "krb", False),
    Voice("fest_cs_dita", "festival", "czech_dita", "czech", "dita", True),
)
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# ASCII-only words (no encoding questions with festival's lexicons); sentences are random draws.
WORDS = {
    "english": KEYWORDS + tuple(
        "the house is very good and we will walk to market today after work with my friend who likes green "
        "apples coffee in morning time people water small large city night sun river mountain book school "
        "speak listen always never because this that".split()),
    "italian": tuple(
        "casa buono sempre oggi domani cane gatto mangiare bere acqua vino pane amico lavoro grande piccolo "
        "bello strada notte giorno sole luna mare montagna libro scuola tempo parlare andare venire molto "
        "questo quello anche ancora adesso lettera finestra tavolo".split()),
    "finnish": tuple(
        "talo koira kissa vesi kirja koulu tuli kuusi joki kala lumi talvi aurinko kuu meri tie auto juna "
        "kaupunki hyvin paljon kaksi kolme viisi kahdeksan yksi sana olla tulla nukkua puhua kuulla sanoa "
        "kaikki minun sinun huomenna kiitos anteeksi".split()),
    "czech": tuple(
        "dobry den prosim voda chleba pivo mesto ulice skola kniha pes kocka dum strom rano vecer zitra dnes "
        "velky maly pracovat mluvit jit hodne proc tento tamten okno stul auto vlak doma potom jeste".split()),
}
LANGUAGES = tuple(WORDS)


@dataclass(frozen=True)
class SoundFont:
    name: str
    path: str
    test: bool


SOUNDFONTS = (
    SoundFont("fluidr3", "/usr/share/sounds/sf2/FluidR3_GM.sf2", False),
    SoundFont("timgm6mb", "/usr/share/sounds/sf2/TimGM6mb.sf2", False),
    SoundFont("musescore", "/usr/share/sounds/sf3/MuseScore_General.sf3", True),
)
# General-MIDI programs (0-based) of the instrument task and the pitch range each is played in.
INSTRUMENTS = {
    "piano": (0, 48, 84), "marimba": (12, 55, 84), "organ": (19, 43, 79), "guitar": (24, 43, 76),
    "bass": (32, 28, 55), "violin": (40, 55, 88), "trumpet": (56, 55, 82), "choir": (52, 48, 76),
    "clarinet": (71, 50, 82), "flute": (73, 60, 93),
}
# General-MIDI percussion keys (channel 10) of the drum task: confusable pairs on purpose (three hi-hats, two
# toms, side stick vs snare, ride vs ride bell), and in half the clips a quieter hit of another class.
DRUMS = {"kick": 36, "side_stick": 37, "snare": 38, "clap": 39, "closed_hat": 42, "pedal_hat": 44, "open_hat": 46,
         "low_tom": 45, "high_tom": 50, "crash": 49, "ride": 51, "ride_bell": 53}
UNLABELLED_PROGRAMS = tuple(range(0, 120, 5))  # 24 programs for the unlabelled music


@dataclass(frozen=True)
class Scale:
    """Clip counts of one build (per split and class unless said otherwise)."""

    keyword_variants: int = 12  # renderings of each (word, voice)
    language_train: int = 120  # training clips per language (spread over its training voices)
    language_test: int = 60  # test clips per language (spread over its test voices)
    instrument_clips: int = 30  # clips per (instrument, soundfont)
    drum_clips: int = 30  # clips per (drum, soundfont)
    unlabelled_speech: int = 1800
    unlabelled_music_per_program: int = 16  # per (program, training soundfont)
    unlabelled_drums: int = 60  # drum-pattern clips per training soundfont
    clip_s: float = 2.0  # labelled clip length
    unlabelled_s: float = 3.0


FULL = Scale()
QUICK = Scale(keyword_variants=1, language_train=6, language_test=5, instrument_clips=2, drum_clips=2,
              unlabelled_speech=15, unlabelled_music_per_program=1, unlabelled_drums=2)


# ---------------------------------------------------------------------------------------------- checks


def check_requirements() -> None:
    """Raise :class:`BenchmarkError` naming the first missing program, voice or soundfont."""
    for prog in ("festival", "flite", "fluidsynth"):
        if shutil.which(prog) is None:
            raise BenchmarkError(f"program '{prog}' not found; install: apt-get install -y {' '.join(PACKAGES)}")
    for sf in SOUNDFONTS:
        if not Path(sf.path).is_file():
            raise BenchmarkError(f"soundfont {sf.path} not found; install: apt-get install -y {' '.join(PACKAGES)}")
    voices_root = Path("/usr/share/festival/voices")
    have = {p.name for p in voices_root.glob("*/*")} if voices_root.is_dir() else set()
    for v in VOICES:
        if v.engine == "festival" and v.ident not in have:
            raise BenchmarkError(f"festival voice '{v.ident}' not found under {voices_root}; "
                                 f"install: apt-get install -y {' '.join(PACKAGES)}")


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed Debian versions (``dpkg-query``); a package that is not installed maps to ``""``."""
    out = {}
    for pkg in packages:
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
            out[pkg] = r.stdout.strip() if r.returncode == 0 else ""
        except FileNotFoundError:
            out[pkg] = ""
    return out


# ---------------------------------------------------------------------------------------------- rendering


def _run(cmd: list[str], what: str, timeout: float = 600) -> None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{what}: {cmd[0]} did not finish in {timeout:.0f} s") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BenchmarkError(f"{what}: {cmd[0]} exited with status {r.returncode} ({tail[0]})")


def render_speech(voice: Voice, texts: list[str], work: Path) -> list[np.ndarray]:
    """``texts`` spoken by ``voice``: float32 waveforms at 16 kHz (one festival process per voice)."""
    work.mkdir(parents=True, exist_ok=True)
    paths = [work / f"{voice.name}_{i:05d}.wav" for i in range(len(texts))]
    if voice.engine == "festival":
        script = [f"(voice_{voice.ident})"]
        script += [f'(utt.save.wave (utt.synth (Utterance Text "{t}")) "{p}" \'riff)' for t, p in zip(texts, paths, strict=True)]
        scm = work / f"{voice.name}.scm"
        scm.write_text("\n".join(script) + "\n", encoding="ascii")
        _run(["festival", "-b", str(scm)], f"festival voice {voice.ident}")
    else:
        for t, p in zip(texts, paths, strict=True):
            _run(["flite", "-voice", voice.ident, "-t", t, "-o", str(p)], f"flite voice {voice.ident}", 60)
    waves = []
    for p in paths:
        try:
            waves.append(load_audio(p, SAMPLE_RATE).numpy())
        except AudioError as e:
            raise BenchmarkError(f"{voice.name} rendered no usable audio: {e}") from None
        p.unlink()
    return waves


def _varlen(value: int) -> bytes:
    """A MIDI variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi_file(events: list[tuple[float, bytes]]) -> bytes:
    """A format-0 standard MIDI file holding ``(time_s, message)`` events; 1 tick = 1 ms (500 ticks per
    quarter at the default 120 bpm)."""
    track = b""
    now = 0
    for t, msg in sorted(events, key=lambda e: (e[0], e[1][0] & 0xF0 != 0x80)):  # note-offs first at a tie
        tick = int(round(t * 1000))
        track += _varlen(tick - now) + msg
        now = tick
    track += b"\x00\xff\x2f\x00"  # end of track
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 500) + b"MTrk" + struct.pack(">I", len(track)) + track


def render_midi(events: list[tuple[float, bytes]], soundfont: SoundFont, work: Path, tag: str) -> np.ndarray:
    """Play ``events`` with ``soundfont`` through fluidsynth; a 16 kHz mono float32 waveform."""
    work.mkdir(parents=True, exist_ok=True)
    mid, wav = work / f"{tag}.mid", work / f"{tag}.wav"
    mid.write_bytes(midi_file(events))
    _run(["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(SAMPLE_RATE), "-F", str(wav), soundfont.path, str(mid)],
         f"fluidsynth {soundfont.name}")
    try:
        wave = load_audio(wav, SAMPLE_RATE).numpy()
    except AudioError as e:
        raise BenchmarkError(f"fluidsynth {soundfont.name} rendered no usable audio: {e}") from None
    mid.unlink()
    wav.unlink()
    return wave


def melody_events(rng: np.random.Generator, program: int, low: int, high: int, start: float, length: float,
                  channel: int = 0) -> list[tuple[float, bytes]]:
    """A program change and 1-5 random notes (or a chord) inside ``[start, start + length)``."""
    ev = [(start, bytes([0xC0 | channel, program]))]
    n = int(rng.integers(1, 6))
    bounds = np.sort(rng.uniform(0, length - 0.25, n))
    root = int(rng.integers(low, max(low + 1, high - 7)))
    for i, on in enumerate(bounds):
        off = min(length - 0.05, (bounds[i + 1] if i + 1 < n else length - 0.05) + rng.uniform(0, 0.1))
        off = max(off, on + 0.12)
        note = int(np.clip(root + rng.choice([0, 2, 3, 4, 5, 7, 9, 12]), low, high))
        vel = int(rng.integers(50, 120))
        ev += [(start + on, bytes([0x90 | channel, note, vel])), (start + off, bytes([0x80 | channel, note, 0]))]
    return ev


def drum_events(rng: np.random.Generator, keys: list[int], start: float, length: float,
                velocity: tuple[int, int] = (40, 127), hits: tuple[int, int] = (1, 3)) -> list[tuple[float, bytes]]:
    """``hits`` (min, max) hits per key at random times inside ``[start, start + length - 0.5)`` on channel 10,
    velocities drawn from ``velocity`` (inclusive)."""
    ev = []
    for key in keys:
        for on in np.sort(rng.uniform(0, length - 0.5, int(rng.integers(hits[0], hits[1] + 1)))):
            vel = int(rng.integers(velocity[0], velocity[1] + 1))
            ev += [(start + on, bytes([0x99, key, vel])), (start + on + 0.1, bytes([0x89, key, 0]))]
    return ev


def labelled_drum_events(rng: np.random.Generator, key: int, start: float, length: float) -> list[tuple[float, bytes]]:
    """1-3 hits of ``key`` (velocity 70-127) and, with probability 1/2, one quieter hit (20-50) of another
    drum of the task."""
    ev = drum_events(rng, [key], start, length, (70, 127))
    if rng.random() < 0.5:
        other = [k for k in DRUMS.values() if k != key]
        ev += drum_events(rng, [int(rng.choice(other))], start, length, (20, 50), (1, 1))
    return ev


def render_segments(make: Callable[[int, float], list], count: int, seg_s: float, soundfont: SoundFont,
                    work: Path, tag: str) -> list[np.ndarray]:
    """``count`` segments of ``seg_s`` seconds rendered in one fluidsynth run, 1 s of silence apart (release
    tails and reverb die away there); ``make(i, start_s)`` returns segment ``i``'s events."""
    period = seg_s + 1.0
    events = [e for i in range(count) for e in make(i, i * period)]
    wave = render_midi(events, soundfont, work, tag)
    n = int(round(seg_s * SAMPLE_RATE))
    wave = np.pad(wave, (0, max(0, int(round(count * period * SAMPLE_RATE)) - len(wave))))
    return [wave[int(round(i * period * SAMPLE_RATE)) : int(round(i * period * SAMPLE_RATE)) + n] for i in range(count)]


# ---------------------------------------------------------------------------------------------- variation


def speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch and rate together), by linear-interpolation resampling."""
    n = max(1, int(round(len(wave) / factor)))
    return np.interp(np.arange(n) * factor, np.arange(len(wave)), wave).astype(np.float32)


def coloured_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    """Unit-RMS white, pink (1/f power) or brown (1/f^2 power) noise."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    spec *= {"white": 1.0, "pink": f ** -0.5, "brown": 1.0 / f}[colour]
    x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def vary(wave: np.ndarray, rng: np.random.Generator, seconds: float, speed_range: float) -> np.ndarray:
    """A ``seconds``-long clip of ``wave``: sped up/down by up to ``speed_range``, placed at a random offset
    (or randomly cropped), peak level -24..-3 dBFS, and in 80 % of clips noise at 5-30 dB SNR."""
    n = int(round(seconds * SAMPLE_RATE))
    if speed_range > 0:
        wave = speed(wave, float(rng.uniform(1 - speed_range, 1 + speed_range)))
    if len(wave) >= n:
        lo = int(rng.integers(0, len(wave) - n + 1))
        clip = wave[lo : lo + n].copy()
    else:
        clip = np.zeros(n, np.float32)
        lo = int(rng.integers(0, n - len(wave) + 1))
        clip[lo : lo + len(wave)] = wave
    peak = float(np.abs(clip).max())
    if peak > 0:
        clip *= 10 ** (rng.uniform(-24, -3) / 20) / peak
    if rng.random() < 0.8:
        signal_rms = float(np.sqrt(np.mean(clip**2))) or 1e-3
        snr = rng.uniform(5, 30)
        clip += coloured_noise(rng, n, str(rng.choice(["white", "pink", "brown"]))) * signal_rms / 10 ** (snr / 20)
    return np.clip(clip, -1, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------- build


def stream(seed: int, *names: str) -> np.random.Generator:
    """The generator of one part of the build (e.g. ``("language", "fest_kal")``): keyed by the seed and the
    names, so each part is reproducible on its own and adding a part does not change the others."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def _sentence(rng: np.random.Generator, language: str) -> str:
    words = WORDS[language]
    return " ".join(words[i] for i in rng.integers(0, len(words), int(rng.integers(4, 8))))


def _spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal counts."""
    return [total // parts + (i < total % parts) for i in range(parts)]


class _Writer:
    """Writes clips of one task/split and collects their csv rows or manifest entries."""

    def __init__(self, root: Path):
        self.root = root
        self.rows: list[tuple[str, str]] = []
        (root / "wav").mkdir(parents=True, exist_ok=True)

    def add(self, name: str, wave: np.ndarray, label: str = "") -> None:
        rel = f"wav/{name}.wav"
        soundfile.write(self.root / rel, wave, SAMPLE_RATE, subtype="PCM_16")
        self.rows.append((rel, label))

    def write_csv(self, name: str, rows: list[tuple[str, str]]) -> Path:
        path = self.root / name
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(rows)
        return path


def build(out: Path, scale: Scale = FULL, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Build the benchmark under ``out`` (see the module docstring); returns what ``benchmark.json`` holds."""
    check_requirements()
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, dict[str, list]] = {t: {"train": [], "test": []} for t in TASKS}
    writers = {t: _Writer(out / t) for t in TASKS}
    unl = _Writer(out / "unlabelled")
    with tempfile.TemporaryDirectory(prefix="eat-realbench-") as tmp:
        work = Path(tmp)
        # speech: one festival/flite session per voice renders its keywords, labelled and unlabelled sentences
        train_voices = [v for v in VOICES if not v.test]
        speech_share = dict(zip([v.name for v in train_voices], _spread(scale.unlabelled_speech, len(train_voices)), strict=True))
        for v in VOICES:
            split = "test" if v.test else "train"
            same_lang = [u for u in VOICES if u.language == v.language and u.test == v.test]
            per_lang = scale.language_test if v.test else scale.language_train
            n_lang = _spread(per_lang, len(same_lang))[same_lang.index(v)]
            n_unl = 0 if v.test else speech_share[v.name]
            keywords = list(KEYWORDS) if v.language == "english" else []
            rng = stream(seed, "text", v.name)
            sentences = [_sentence(rng, v.language) for _ in range(n_lang + n_unl)]
            log(f"  speech: {v.name} ({v.language}, {split}): {len(keywords)} keywords, {n_lang} labelled and "
                f"{n_unl} unlabelled sentences")
            waves = render_speech(v, keywords + sentences, work)
            rng = stream(seed, "keywords", v.name)
            for k, word in enumerate(keywords):
                for j in range(scale.keyword_variants):
                    name = f"{v.name}_{word}_{j:02d}"
                    writers["keywords"].add(name, vary(waves[k], rng, scale.clip_s, 0.12), word)
                    splits["keywords"][split].append(writers["keywords"].rows[-1])
            waves = waves[len(keywords):]
            rng = stream(seed, "language", v.name)
            for j in range(n_lang):
                writers["language"].add(f"{v.name}_{j:04d}", vary(waves[j], rng, scale.clip_s, 0.12), v.language)
                splits["language"][split].append(writers["language"].rows[-1])
            rng = stream(seed, "unlabelled", v.name)
            for j in range(n_unl):
                unl.add(f"speech_{v.name}_{j:05d}", vary(waves[n_lang + j], rng, scale.unlabelled_s, 0.12))
        # instruments and drums: one fluidsynth run per (class, soundfont)
        for sf in SOUNDFONTS:
            split = "test" if sf.test else "train"
            log(f"  music: soundfont {sf.name} ({split})")
            for label, (program, low, high) in INSTRUMENTS.items():
                rng = stream(seed, "instruments", sf.name, label)
                segs = render_segments(lambda i, s, r=rng, p=program, lo=low, hi=high: melody_events(r, p, lo, hi, s, scale.clip_s),
                                       scale.instrument_clips, scale.clip_s, sf, work, f"{sf.name}_{label}")
                for j, w in enumerate(segs):
                    writers["instruments"].add(f"{sf.name}_{label}_{j:03d}", vary(w, rng, scale.clip_s, 0.0), label)
                    splits["instruments"][split].append(writers["instruments"].rows[-1])
            for label, key in DRUMS.items():
                rng = stream(seed, "drums", sf.name, label)
                segs = render_segments(lambda i, s, r=rng, k=key: labelled_drum_events(r, k, s, scale.clip_s),
                                       scale.drum_clips, scale.clip_s, sf, work, f"{sf.name}_{label}")
                for j, w in enumerate(segs):
                    writers["drums"].add(f"{sf.name}_{label}_{j:03d}", vary(w, rng, scale.clip_s, 0.03), label)
                    splits["drums"][split].append(writers["drums"].rows[-1])
            if sf.test:
                continue
            for program in UNLABELLED_PROGRAMS:
                rng = stream(seed, "unlabelled", sf.name, str(program))
                lo = int(rng.integers(36, 60))
                segs = render_segments(
                    lambda i, s, r=rng, p=program, lo=lo: melody_events(r, p, lo, lo + 24, s, scale.unlabelled_s),
                    scale.unlabelled_music_per_program, scale.unlabelled_s, sf, work, f"{sf.name}_p{program}")
                for j, w in enumerate(segs):
                    unl.add(f"music_{sf.name}_p{program:03d}_{j:03d}", vary(w, rng, scale.unlabelled_s, 0.0))
            rng = stream(seed, "unlabelled", sf.name, "drums")
            segs = render_segments(
                lambda i, s, r=rng: drum_events(r, list(r.choice(list(DRUMS.values()), int(r.integers(2, 5)),
                                                                replace=False)), s, scale.unlabelled_s),
                scale.unlabelled_drums, scale.unlabelled_s, sf, work, f"{sf.name}_drumpatterns")
            for j, w in enumerate(segs):
                unl.add(f"drums_{sf.name}_{j:03d}", vary(w, rng, scale.unlabelled_s, 0.0))
    counts = {}
    for task in TASKS:
        for split in ("train", "test"):
            writers[task].write_csv(f"{split}.csv", splits[task][split])
        counts[task] = {s: len(splits[task][s]) for s in ("train", "test")}
    n_unl = int(round(scale.unlabelled_s * SAMPLE_RATE))
    write_manifest(out / "unlabelled" / "train.tsv", (out / "unlabelled").resolve(), [(r, n_unl) for r, _ in unl.rows])
    counts["unlabelled"] = len(unl.rows)
    info = {
        "seed": seed, "scale": dataclasses.asdict(scale), "sample_rate": SAMPLE_RATE, "counts": counts,
        "held_out": {
            "keywords": sorted(v.name for v in VOICES if v.test and v.language == "english"),
            "language": sorted(v.name for v in VOICES if v.test),
            "instruments": [sf.name for sf in SOUNDFONTS if sf.test],
            "drums": [sf.name for sf in SOUNDFONTS if sf.test],
        },
        "voices": [dataclasses.asdict(v) for v in VOICES],
        "soundfonts": [dataclasses.asdict(s) for s in SOUNDFONTS],
        "instruments": INSTRUMENTS, "drums": DRUMS, "packages": package_versions(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "benchmark.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
