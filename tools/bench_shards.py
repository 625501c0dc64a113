"""Benchmark the input pipeline per CPU core: tar shards (FLAC, WAV) against one file per clip.

A thin command line: the program is :mod:`eat.apps.bench_shards` (``--help`` prints its options).
"""

from eat.apps.bench_shards import main

if __name__ == "__main__":
    main()
