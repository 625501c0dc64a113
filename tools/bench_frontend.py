"""Benchmark the audio front-end.

A thin command line: the program is :mod:`eat.apps.bench_frontend` (``--help`` prints its options).
"""

from eat.apps.bench_frontend import main

if __name__ == "__main__":
    main()
