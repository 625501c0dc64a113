"""Small helpers any layer may use (the layer above ``eat.config``; see "Layers" in docs/design.md).

:mod:`eat.utils.bench` is only an alias of :mod:`eat.apps.bench_common`, where the benchmark helpers moved.
"""
