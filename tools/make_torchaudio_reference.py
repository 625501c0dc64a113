"""Record torchaudio's Kaldi fbank and resampler on the test signals, for tests that must not need torchaudio.

    python tools/make_torchaudio_reference.py                       # writes tests/fixtures/torchaudio_reference.safetensors
    python tools/make_torchaudio_reference.py --out /tmp/ref.safetensors

The file holds the input signals themselves (so no random-number stream has to stay stable across torch
versions) and the outputs of ``torchaudio.compliance.kaldi.fbank`` (the call EAT and AST make, plus a few other
Kaldi options) and ``torchaudio.functional.resample``; the torch and torchaudio versions that made it are in
the file's metadata, with the Kaldi options of each case (ours and torchaudio's names). ``tests/test_fbank.py`` and ``tests/test_audio_io.py`` compare against it always, and against
live torchaudio in addition when torchaudio imports. Run it again only to add a case; commit the result.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

SR = 16000
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "torchaudio_reference.safetensors"

# The call EAT and AST make (torchaudio argument names).
EAT_KALDI = dict(htk_compat=True, sample_frequency=SR, use_energy=False, window_type="hanning", num_mel_bins=128,
                 dither=0.0, frame_shift=10)
# Other Kaldi options: name -> (our fbank() keyword arguments, torchaudio keyword arguments).
OPTION_CASES = {
    "hamming_nosnip_80": (dict(window="hamming", snip_edges=False, num_mel_bins=80, low_freq=50.0, high_freq=-400.0),
                          dict(window_type="hamming", snip_edges=False, num_mel_bins=80, low_freq=50.0,
                               high_freq=-400.0)),
    "povey_plain": (dict(window="povey", preemphasis=0.0, remove_dc_offset=False),
                    dict(window_type="povey", preemphasis_coefficient=0.0, remove_dc_offset=False)),
    "rect_nosnip": (dict(window="rectangular", preemphasis=0.9, snip_edges=False, remove_dc_offset=False),
                    dict(window_type="rectangular", preemphasis_coefficient=0.9, snip_edges=False,
                         remove_dc_offset=False)),
    "blackman_32ms": (dict(window="blackman", frame_length_ms=32.0, frame_shift_ms=12.0, num_mel_bins=40,
                           high_freq=6000.0),
                      dict(window_type="blackman", frame_length=32.0, frame_shift=12.0, num_mel_bins=40,
                           high_freq=6000.0)),
}
TONES = (100.0, 440.0, 3000.0, 7000.3)
RESAMPLE_RATES = (44100, 22050, 32000, 8000)


def white(n: int, seed: int, std: float = 0.1) -> torch.Tensor:
    return std * torch.randn(n, generator=torch.Generator().manual_seed(seed))


def pink(n: int, seed: int, std: float) -> torch.Tensor:
    spec = torch.fft.rfft(torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    spec = spec / torch.arange(spec.shape[0], dtype=torch.float64).clamp_min(1).sqrt()
    x = torch.fft.irfft(spec, n=n)
    return (x / x.std() * std).float()


def tone(n: int, freq: float, sr: int = SR, amp: float = 0.5, phase: float = 0.0) -> torch.Tensor:
    """float64 samples of a sine; deterministic from the formula, so tests rebuild it instead of storing it."""
    t = torch.arange(n, dtype=torch.float64) / sr
    return amp * torch.sin(2 * math.pi * freq * t + phase)


def clicks(n: int) -> torch.Tensor:
    x = torch.zeros(n)
    x[[500, 9001, 20017, n - 300]] = torch.tensor([0.9, -0.5, 0.7, 0.3])
    return x


def signals() -> dict[str, torch.Tensor]:
    """The fbank test signals (float32), stored in the file as ``signal.<name>``."""
    n = 2 * SR + 77
    chord = sum(tone(2 * SR + 5, f, amp=a, phase=i) for i, (f, a) in enumerate([(440.0, 0.3), (1234.5, 0.2),
                                                                                 (5000.0, 0.1)]))
    return {
        "white_2s_plus_77": white(n, 0),
        "pink_2s": pink(2 * SR, 2, 0.1),
        "silence_with_clicks": clicks(n),
        "chord_over_pink_floor": chord.float() + pink(2 * SR + 5, 3, 0.03),
        "short_401": white(401, 4),
        "pink_options": pink(SR + 123, 5, 0.1),
    }


def resample_inputs() -> dict[int, torch.Tensor]:
    """Half a second at each rate: a 440 Hz tone, a tone above 8 kHz where the rate allows, and noise."""
    out = {}
    for sr in RESAMPLE_RATES:
        n = sr // 2 + 13
        x = tone(n, 440.0, sr, 0.4) + (tone(n, 11000.0, sr, 0.2) if sr > 22000 else 0.0)
        out[sr] = (x.float() + white(n, sr, 0.05))
    return out


def build() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import torchaudio
    import torchaudio.compliance.kaldi as kaldi
    import torchaudio.functional as taf

    def ref(wave: torch.Tensor, **kw) -> torch.Tensor:
        return kaldi.fbank(wave[None], **{**EAT_KALDI, **kw}).contiguous()

    tensors: dict[str, torch.Tensor] = {}
    sig = signals()
    for name, wave in sig.items():
        tensors[f"signal.{name}"] = wave.contiguous()
        if name != "pink_options":
            tensors[f"fbank.{name}"] = ref(wave)
    for name, (_, theirs) in OPTION_CASES.items():
        tensors[f"options.{name}"] = ref(sig["pink_options"], **theirs)
    for f in TONES:  # the float64 result is the near-exact reference; float32 is what torchaudio gives users
        wave = tone(2 * SR, f)
        tensors[f"tone.{f}"] = wave.float().contiguous()
        tensors[f"tone64.{f}"] = ref(wave).float().contiguous()
        tensors[f"tone32.{f}"] = ref(wave.float())
    for sr, x in resample_inputs().items():
        tensors[f"resample_in.{sr}"] = x.contiguous()
        tensors[f"resample_out.{sr}"] = taf.resample(x, sr, SR).contiguous()
    meta = {"torch": torch.__version__, "torchaudio": torchaudio.__version__,
            "made_by": "tools/make_torchaudio_reference.py", "sample_rate": str(SR),
            "eat_kaldi": json.dumps(EAT_KALDI), "options": json.dumps(OPTION_CASES)}
    return tensors, meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file (default: {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    try:
        tensors, meta = build()
    except Exception as e:  # torchaudio missing or unloadable (e.g. built for another torch)
        sys.exit(f"error: torchaudio is needed to record the reference and could not be imported: {e}")
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(args.out), metadata=meta)
    except OSError as e:
        sys.exit(f"error: cannot write {args.out}: {e}")
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({len(tensors)} tensors, {size / 1e6:.2f} MB) with torch {meta['torch']}, "
          f"torchaudio {meta['torchaudio']}")


if __name__ == "__main__":
    main()
