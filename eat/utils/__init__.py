"""Old home of the benchmark helpers; :mod:`eat.utils.bench` is now an alias of :mod:`eat.apps.bench_common`."""
