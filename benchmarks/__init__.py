"""Benchmarks of e5mistral, each figure a ratio against a reference measured in the same run.

- ``python -m benchmarks`` (or ``python scripts/benchmark.py``): sections 1-6 into ``BENCHMARKS.md``
  (:mod:`benchmarks.run`; the harness in :mod:`benchmarks.harness`, one module per section);
- ``python -m benchmarks.engines``: DDP, FSDP2 and ZeRO-3 side by side on 2 CPU processes;
- ``python -m benchmarks.quality``: retrieval quality on a docstring corpus from installed libraries.

Run them from the repository root (``benchmarks`` is not installed with the package).
"""
