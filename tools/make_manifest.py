"""Write a fairseq-style tsv manifest for every audio file under a folder.

    python tools/make_manifest.py AUDIO_DIR OUT.tsv [--ext wav,flac] [--workers 8] [--verify]

The first line is the absolute AUDIO_DIR, then one ``relative/path<TAB>num_samples`` line per readable
file, sorted by path; ``num_samples`` is the file's frame count at its own sample rate. Headers are read
in parallel threads (``soundfile.info``); ``--verify`` decodes every file completely, which also catches
files whose header reads but whose data does not decode (e.g. a damaged flac). Unreadable or empty files are left out and
listed at the end as a warning; the exit status stays 0 so a few bad files do not stop a pipeline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eat.cli import check_workers, cli_main
from eat.data.manifest import scan_audio, write_manifest


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("audio_dir", type=Path, help="folder to scan (recursively)")
    ap.add_argument("out", type=Path, help="manifest to write, e.g. data/train.tsv")
    ap.add_argument("--ext", default="wav,flac", help="comma-separated extensions to include (default wav,flac)")
    ap.add_argument("--workers", type=int, default=8, help="threads reading headers (default 8; 0: none)")
    ap.add_argument("--verify", action="store_true", help="decode every file completely (slower, stricter)")
    args = ap.parse_args(argv)
    check_workers(args.workers)
    if not args.audio_dir.is_dir():
        sys.exit(f"error: {args.audio_dir} is not a directory")
    exts = [e.strip() for e in args.ext.split(",") if e.strip()]
    if not exts:
        sys.exit("error: --ext names no extension")
    root = args.audio_dir.resolve()
    good, bad = scan_audio(root, exts, args.workers, args.verify, progress=True)
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
