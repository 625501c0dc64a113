"""Benchmark fine-tuning and inference of an audio classifier on 10 s clips, with and without patchout.

A thin command line: the program is :mod:`eat.apps.bench_finetune` (``--help`` prints its options).
"""

from eat.apps.bench_finetune import main

if __name__ == "__main__":
    main()
