"""Smoke test of scripts/benchmark.py (the ``benchmarks`` package): its --quick mode runs every section and writes the report.

Not a timed test: the sizes are too small for the numbers to mean anything; it checks that each
section runs, prints its figures as ratios and lands in the Markdown file with the machine and
the command.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import HISTORY_MARKER

REPO = Path(__file__).resolve().parents[1]


def test_quick_benchmark_prints_ratios_and_writes_markdown(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    history = f"{HISTORY_MARKER}\n\n## Before and after a past fix\n\n| figure | before | after |\n"
    output.write_text("# Benchmarks\n\nstale figures of an older run\n\n" + history, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    script = REPO / "scripts" / "benchmark.py"
    command = [sys.executable, str(script), "--quick", "--threads", "1", "--output", str(output)]
    proc = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    for number in range(1, 9):
        assert re.search(rf"^\[{number}\] ", proc.stdout, re.MULTILINE), f"section {number} missing:\n{proc.stdout}"
    ratios = re.findall(r"\d+\.\d\dx", proc.stdout)
    assert len(ratios) >= 25, proc.stdout  # sections 1-5, 7 and 8 print ratios; 6 runs its code path on CPU

    report = output.read_text(encoding="utf-8")
    assert "python scripts/benchmark.py --quick --threads 1 --output" in report  # the exact command
    assert "| torch threads | 1 |" in report and f"| torch | {__import__('torch').__version__} |" in report
    for title in ("## 1. Training throughput", "## 2. Model FLOP utilisation", "## 3. GradCache", "## 4. Encoding",
                  "## 5. Data generation", "## 6. GPU", "## 7. Local generation", "## 8. How cost grows"):
        assert title in report, report
    assert "error:" not in report, report
    assert "stale figures" not in report and report.endswith(history)  # new figures, the history kept as is
    assert re.search(r"\*\*\d+\.\d\dx\*\*", report)
    if not __import__("torch").cuda.is_available():
        assert "skipped: no CUDA" in report
