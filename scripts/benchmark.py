#!/usr/bin/env python
"""Benchmarks: e5mistral side by side with sentence-transformers and with the machine's own limits.

A thin entry point of :mod:`benchmarks.run` (also ``python -m benchmarks``); the numbers, the
machine and this command are written to ``BENCHMARKS.md``.

    python scripts/benchmark.py                              # every section; minutes on a laptop CPU
    python scripts/benchmark.py --sections 4,5               # some sections
    python scripts/benchmark.py --quick --output /tmp/b.md   # seconds: the smoke test's settings
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

from benchmarks.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
