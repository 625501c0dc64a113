"""Applications: whole programs built from the library, each with the ``main`` of a thin ``tools/`` script.

* :mod:`eat.apps.demo`: the toolkit end to end on synthetic audio (``tools/demo.py``, ``make demo``);
* :mod:`eat.apps.real_benchmark`: the real-audio corpus from Debian voices and soundfonts
  (``tools/make_real_benchmark.py``, ``make realbench``);
* :mod:`eat.apps.probe_protocol`: linear probes over layers x poolings (``tools/probe_protocol.py``);
* the benchmarks ``bench_pretrain``, ``bench_finetune``, ``bench_small_finetune``, ``bench_frontend`` and
  ``bench_shards`` (``tools/bench_*.py``), with what they share in :mod:`eat.apps.bench_common`.

This is the top layer of the package (see "Layers" in docs/design.md): it may import everything below, and
nothing in the library imports it.
"""
