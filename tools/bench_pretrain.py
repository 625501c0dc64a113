"""Benchmark the EAT pretraining step: clips/s, where the time goes, MFU, peak memory.

A thin command line: the program is :mod:`eat.apps.bench_pretrain` (``--help`` prints its options).
"""

from eat.apps.bench_pretrain import main

if __name__ == "__main__":
    main()
