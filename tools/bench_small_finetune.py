"""Small-data fine-tuning against the linear probe of the same encoder, per task and seed.

A thin command line: the program is :mod:`eat.apps.bench_small_finetune` (``--help`` prints its options).
"""

from eat.apps.bench_small_finetune import main

if __name__ == "__main__":
    main()
