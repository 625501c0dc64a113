"""Sound event detection inference on an hour-long file: speed (x real time on CPU), memory, timestamps.

A thin command line: the program is :mod:`eat.apps.bench_sed_infer` (``--help`` prints its options).
"""

from eat.apps.bench_sed_infer import main

if __name__ == "__main__":
    main()
