"""Write a fairseq-style tsv manifest for every audio file under a folder.

    python tools/make_manifest.py AUDIO_DIR OUT.tsv [--ext wav,flac] [--workers 8] [--verify]

The first line is the absolute AUDIO_DIR, then one ``relative/path<TAB>num_samples`` line per readable
file, sorted by path; ``num_samples`` is the file's frame count at its own sample rate. Headers are read
in parallel threads; a WAV whose header promises more frames than the file holds (truncated) is refused;
``--verify`` decodes every file completely, which also catches files whose header reads but whose data
does not decode (e.g. a damaged flac) or holds NaN/inf samples. Files shorter than one 25 ms frame are
refused too. Unreadable or empty files are left out and
listed at the end as a warning; the exit status stays 0 so a few bad files do not stop a pipeline.
"""

from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from eat.audio.io import AudioError, audio_info, load_audio_with_rate
from eat.cli import cli_main
from eat.data.manifest import write_manifest

MIN_SECONDS = 0.025  # one analysis frame of the EAT/AST front-end


def probe(path: Path, verify: bool = False) -> int | str:
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


def scan(audio_dir: Path, exts: list[str], workers: int = 8, verify: bool = False,
         progress: bool = False) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """``(good entries, bad files)`` under ``audio_dir``: ``(relpath, frames)`` and ``(relpath, reason)``,
    each sorted by path; ``exts`` are matched case-insensitively without the dot."""
    wanted = {"." + e.lower().lstrip(".") for e in exts}
    files = sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() in wanted and p.is_file())
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(lambda p: probe(p, verify), files), total=len(files), desc="scanning",
                            disable=not progress))
    good, bad = [], []
    for path, result in zip(files, results, strict=True):
        rel = path.relative_to(audio_dir).as_posix()
        (good if isinstance(result, int) else bad).append((rel, result))
    return good, bad


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("audio_dir", type=Path, help="folder to scan (recursively)")
    ap.add_argument("out", type=Path, help="manifest to write, e.g. data/train.tsv")
    ap.add_argument("--ext", default="wav,flac", help="comma-separated extensions to include (default wav,flac)")
    ap.add_argument("--workers", type=int, default=8, help="threads reading headers (default 8)")
    ap.add_argument("--verify", action="store_true", help="decode every file completely (slower, stricter)")
    args = ap.parse_args(argv)
    if not args.audio_dir.is_dir():
        sys.exit(f"error: {args.audio_dir} is not a directory")
    exts = [e.strip() for e in args.ext.split(",") if e.strip()]
    if not exts:
        sys.exit("error: --ext names no extension")
    root = args.audio_dir.resolve()
    good, bad = scan(root, exts, args.workers, args.verify, progress=True)
    if not good:
        found = f"none of the {len(bad)} {'/'.join(exts)} files is readable" if bad else f"no {'/'.join(exts)} files"
        sys.exit(f"error: {found} under {root}")
    try:
        write_manifest(args.out, root, good)
    except OSError as e:
        sys.exit(f"error: cannot write {args.out}: {e}")
    print(f"wrote {len(good)} clips to {args.out}")
    if bad:
        lines = "".join(f"\n  {rel}: {reason}" for rel, reason in bad)
        print(f"warning: {len(bad)} unreadable file(s) left out of {args.out}:{lines}", file=sys.stderr)


if __name__ == "__main__":
    main()
