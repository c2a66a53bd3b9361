"""The benchmark harness: sizes, rows of figures, the Markdown report and the history it keeps.

Every section module (:mod:`benchmarks.training`, :mod:`benchmarks.flops`, ...) returns a
:class:`Section` of :class:`Row` s, each a figure of ours against its reference measured in the
same run; :func:`render` writes them as ``BENCHMARKS.md`` below the machine and the command, and
:func:`kept_history` carries over the hand-written history at the end of the file.

Example:

```python
>>> sec = Section(4, "Encoding")
>>> sec.add("texts/s", fmt(54.8, "texts/s"), fmt(48.8, "texts/s"), 54.8 / 48.8, ">= 1.1x", True)
>>> print(sec.markdown())
```
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]
TEMPERATURE = 0.02  # the recipe's; sentence-transformers' scale is 1 / temperature
ALL_SECTIONS = (1, 2, 3, 4, 5, 6, 7, 8)


@dataclass(frozen=True)
class Settings:
    """Sizes of every measurement; ``QUICK`` shrinks them for the smoke test."""

    # The model both sides train and encode with (Mistral's proportions: FFN 3.5x, 4 queries per KV head).
    layers: int = 4
    hidden: int = 512
    intermediate: int = 1792
    heads: int = 8
    kv_heads: int = 2
    # Training (sections 1-3): rows per step, truncation length of every text, GradCache chunk.
    batch: int = 16
    max_length: int = 128
    mini_batch: int = 4
    # GradCache's token budget per forward, both sides (ours: padded positions; CachedMNRL: real tokens).
    mini_batch_tokens: int = 512  # = mini_batch x max_length: the same memory bound
    warmup_steps: int = 1
    steps: int = 3
    # Peak memory (section 3): a smaller model and short texts, so batch 1024 fits and runs in seconds.
    memory_batches: tuple[int, ...] = (256, 1024)
    memory_layers: int = 2
    memory_hidden: int = 256
    memory_max_length: int = 32
    memory_mini_batch: int = 32
    # Encoding (section 4).
    encode_texts: int = 192
    encode_batch: int = 32
    repeats: int = 3
    # The SmolLM2-135M shape (sections 1, 2 and 4; random weights): its own batch, lengths, repeats.
    real_layers: int = 30
    real_hidden: int = 576
    real_intermediate: int = 1536
    real_heads: int = 9
    real_kv_heads: int = 3
    real_vocab: int = 49152
    real_batch: int = 8
    real_max_length: int = 64
    real_repeats: int = 3  # its figures sit near the goals: one more repeat steadies each side's best
    real_steps: int = 2
    real_encode_texts: int = 96
    # Large matrix product (sections 2 and 6).
    matmul_n: int = 2048
    # Data generation (section 5): fixed server latency, concurrency levels, requests = rounds x concurrency.
    latency: float = 0.5
    concurrencies: tuple[int, ...] = (1, 8, 64)
    rounds: int = 8
    # GPU (section 6): rows per step, query and document lengths (one positive, one hard negative each).
    gpu_batch: int = 16
    gpu_query_length: int = 128
    gpu_document_length: int = 512
    gpu_steps: int = 3
    # Local generation (section 7), on the real_* shape: new tokens per request, prompt length in words,
    # requests per run (more when the batch is larger), the batch sizes and the headline one.
    gen_new_tokens: int = 48
    gen_prompt_words: tuple[int, int] = (14, 28)
    gen_requests: int = 8
    gen_batches: tuple[int, ...] = (1, 4, 8, 16)
    gen_batch: int = 8
    gen_repeats: int = 3
    # How cost grows (section 8): exact search over random unit vectors (corpus sizes, queries, width, top k,
    # the search's block size: the library's default), best of search_repeats alternating rounds of fresh
    # processes; GradCache steps on section 3's memory-probe model at growth_batches rows, chunk memory_mini_batch.
    search_sizes: tuple[int, ...] = (10_000, 40_000, 160_000)
    search_queries: int = 1000
    search_dim: int = 4096
    search_top_k: int = 10
    search_block: int = 16384
    search_repeats: int = 2
    growth_batches: tuple[int, ...] = (64, 256, 1024)


QUICK = Settings(
    layers=1, hidden=64, intermediate=224, heads=4, kv_heads=2,
    batch=4, max_length=32, mini_batch=2, mini_batch_tokens=48, warmup_steps=1, steps=1,
    real_layers=2, real_hidden=64, real_intermediate=128, real_heads=4, real_kv_heads=2, real_vocab=2000,
    real_batch=4, real_max_length=32, real_repeats=1, real_steps=1, real_encode_texts=8,
    memory_batches=(16, 64), memory_layers=1, memory_hidden=64, memory_max_length=16, memory_mini_batch=8,
    encode_texts=16, encode_batch=8, repeats=1, matmul_n=256,
    latency=0.05, concurrencies=(1, 8), rounds=2,
    gpu_batch=2, gpu_query_length=16, gpu_document_length=32, gpu_steps=1,
    gen_new_tokens=4,
    gen_prompt_words=(4, 8), gen_batches=(1, 8), gen_repeats=1,
    search_sizes=(1000, 4000), search_queries=50, search_dim=32, search_block=1024, search_repeats=1,
    growth_batches=(16, 64),
)


@dataclass
class Row:
    figure: str
    ours: str
    reference: str
    ratio: float | None
    goal: str = ""
    met: bool | None = None


@dataclass
class Section:
    number: int
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = "ok"  # "ok", "skipped: ...", "error: ..."

    def add(self, figure, ours, reference, ratio=None, goal="", met=None) -> None:
        self.rows.append(Row(figure, ours, reference, ratio, goal, met))

    def markdown(self) -> str:
        lines = [f"## {self.number}. {self.title}", ""]
        if self.status != "ok":
            lines += [f"**{self.status}**", ""]
        if self.rows:
            lines += ["| figure | e5mistral | reference | ratio | goal |", "|---|---|---|---|---|"]
            for r in self.rows:
                ratio = "" if r.ratio is None else f"**{r.ratio:.2f}x**"
                goal = r.goal + ("" if r.met is None else (" (met)" if r.met else " (**missed**)"))
                lines.append(f"| {r.figure} | {r.ours} | {r.reference} | {ratio} | {goal} |")
            lines.append("")
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def text(self) -> str:
        lines = [f"[{self.number}] {self.title}" + ("" if self.status == "ok" else f": {self.status}")]
        for r in self.rows:
            ratio = "" if r.ratio is None else f"{r.ratio:6.2f}x"
            goal = r.goal + ("" if r.met is None else (" ok" if r.met else " MISSED"))
            lines.append(f"    {r.figure:<52} {r.ours:>22} vs {r.reference:<22} {ratio:>8}  {goal}")
        lines += [f"    - {note}" for note in self.notes]
        return "\n".join(lines)


def fmt(value: float, unit: str = "") -> str:
    """A number for a table: whole from 100 up, else 3 significant digits: ``fmt(1530.4, "MB") -> '1,530 MB'``."""
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """``"1.53 / 1.35 / 1.24 (1 / 5 / 15 min)"``: other work on the machine makes timings noisy."""
    try:
        return "{:.2f} / {:.2f} / {:.2f} (1 / 5 / 15 min)".format(*os.getloadavg())
    except (AttributeError, OSError):
        return "unknown"


def machine_info(threads: int) -> dict[str, str]:
    """The machine and library versions, as the report's first table."""
    import sentence_transformers
    import torch
    import transformers

    info = {
        "CPU": cpu_name(),
        "cores": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} usable",
        "torch threads": str(threads),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    if hasattr(os, "getloadavg"):
        info["load average at start"] = load_average()
    return info


def child_process(*flags: str) -> tuple[list[str], dict[str, str]]:
    """Command and environment of ``python -m benchmarks FLAGS`` in a child process, wherever this one runs."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return [sys.executable, "-m", "benchmarks", *flags], {**os.environ, "PYTHONPATH": path}


def real_shape(settings: Settings) -> dict:
    """The SmolLM2-135M shape of ``settings.real_*`` as Llama config keywords (vocabulary apart).

    Example: ``LlamaConfig(vocab_size=settings.real_vocab, **real_shape(settings))``.
    """
    s = settings
    return dict(hidden_size=s.real_hidden, intermediate_size=s.real_intermediate, num_hidden_layers=s.real_layers,
                num_attention_heads=s.real_heads, num_key_value_heads=s.real_kv_heads, rope_theta=100000.0)


def run_probe(flag: str, spec: dict, what: str) -> dict:
    """Run ``python -m benchmarks FLAG SPEC`` in a fresh process; the JSON its last line prints.

    Example: ``run_probe("--memory-probe", spec, "memory probe batch=256")``.
    """
    import json
    import subprocess

    command, env = child_process(flag, json.dumps(spec))
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_matmul(n: int, dtype=None, device: str = "cpu", seconds: float = 1.0) -> float:
    """Best FLOP/s of ``(n, n) @ (n, n)`` (``dtype`` default float32) over about ``seconds`` of repeats (2 n^3 FLOP each)."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    best, start = math.inf, time.perf_counter()
    while time.perf_counter() - start < seconds or best == math.inf:
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def render(sections: list[Section], machine: dict, command: str, model: str, quick: bool, seconds: float) -> str:
    """The report: the command, the machine (and ``model``, the benchmark model described) and every section."""
    lines = [
        "# Benchmarks",
        "",
        ("Written by `scripts/benchmark.py`. Each figure is a ratio against its reference, both measured in the "
         "same run on the same model, data, batch, lengths and threads."),
        "",
        "Command:",
        "",
        "```bash",
        command,
        "```",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine.items()],
        f"| model | {model} |",
        f"| load average at end | {' / '.join(f'{x:.2f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else '?'} |",
        f"| run time | {seconds:.0f} s{' (--quick: sizes too small to mean anything)' if quick else ''} |",
        "",
    ]
    for sec in sections:
        lines.append(sec.markdown())
    return "\n".join(lines).rstrip() + "\n"


HISTORY_MARKER = "<!-- history: written by hand, kept as is when scripts/benchmark.py rewrites this file -->"


def kept_history(path: Path) -> str:
    """The part of an existing report from :data:`HISTORY_MARKER` on (before/after records of past
    fixes, with their commands), so that a fresh run replaces the figures but not the history."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return ""
    at = text.find(HISTORY_MARKER)
    return text[at:] if at >= 0 else ""
