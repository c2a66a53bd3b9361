"""Benchmarks: e5mistral side by side with sentence-transformers and with the machine's own limits.

Every figure is printed as a ratio against its reference, both measured in the same run, on the
same model (a random Mistral-shaped ``E5MistralModel``, 4 layers x 512 hidden, big enough that
matrix products dominate), the same synthetic rows, batch, lengths and threads on both sides. The
numbers, the machine and the exact command are written to ``BENCHMARKS.md``.

    python scripts/benchmark.py                          # every section; minutes on a laptop CPU
    python scripts/benchmark.py --sections 4,5           # some sections
    python scripts/benchmark.py --quick --output /tmp/b.md   # seconds: the smoke test's settings
    python -m benchmarks --quick                         # the same, from the repository root

Sections:

1. Training throughput (examples/s, real tokens/s): ``E5Trainer`` against
   ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss``, and ``E5Trainer`` with
   GradCache (``mini_batch_size``) against ``CachedMultipleNegativesRankingLoss``. Goal >= 1.25x.
2. Model FLOP utilisation: 6 x non-embedding parameters x real tokens/s against a large matrix
   product's FLOP/s measured in the same run; share of computed tokens that are padding (< 10%).
3. GradCache: step time against the plain step at the same batch (ideal ~1.33x, one extra
   forward); peak memory against plain at batch 256 and 1024 (peak RSS increase of one training
   step, each configuration in its own subprocess).
4. Encoding: ``E5Embedder.encode`` against ``SentenceTransformer.encode`` on the same saved
   folder. Goal >= 1.1x.
5. Data generation (``run_generation`` + ``EndpointPool``) against a loopback OpenAI-compatible
   server with a fixed latency: requests/s against concurrency / latency at concurrency 1, 8, 64
   (goal >= 0.9), and against a sequential client.
6. GPU (only where CUDA is present): a Mistral-7B-shaped LoRA training step (random weights,
   bf16, gradient checkpointing): tokens/s and MFU against a bf16 matrix product measured in the
   run. Without CUDA it reports "skipped: no CUDA" (``--quick`` runs the same code on a tiny
   shape on CPU, to check the code path only).
7. Local generation: ``TransformersChatBackend`` on SmolLM2-135M's shape (random weights), 8 chat
   requests batched into one ``generate`` call against the same 8 one at a time: generated tokens/s
   (goal >= 4x), and tokens/s and seconds per request at batch 1, 4, 8, 16.
8. How cost grows: exact search time and peak memory against corpus size (against a plain
   ``queries @ corpus.T`` + topk), and a GradCache step's time and peak memory against batch size.

One module per section (``benchmarks.training``, ``flops``, ``gradcache``, ``encoding``,
``generation``, ``gpu``, ``local_generation``, ``scaling``), each returning a :class:`~benchmarks.harness.Section`; the harness
(``benchmarks.harness``) holds the settings, the rows, the Markdown and the history it keeps, and
``benchmarks.workload`` the model, data and training runs the sections share.

Timings on a shared machine are noisy: each ratio compares two runs made moments apart, and the
training and encoding figures take the fastest of ``Settings.repeats`` alternating runs per side.
"""


from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from .encoding import section_encoding
from .flops import section_mfu
from .generation import LoopbackServer, section_generation
from .gpu import section_gpu
from .gradcache import memory_probe, section_gradcache
from .harness import ALL_SECTIONS, QUICK, REPO, Section, Settings, kept_history, machine_info, render
from .local_generation import section_local_generation
from .scaling import search_probe, section_scaling
from .training import section_training
from .workload import Bench


TITLES = {
    1: "Training throughput", 2: "Model FLOP utilisation and padding", 3: "GradCache: time overhead and peak memory",
    4: "Encoding", 5: "Data generation", 6: "GPU LoRA step",
    7: "Local generation: batched vs one request at a time", 8: "How cost grows",
}


def parse_sections(text: str) -> list[int]:
    try:
        sections = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sections {text!r}: write numbers separated by commas, e.g. 1,4,5") from None
    bad = [n for n in sections if n not in ALL_SECTIONS]
    if bad or not sections:
        raise argparse.ArgumentTypeError(f"--sections {text!r}: sections are {ALL_SECTIONS}; got {bad or 'none'}")
    return sections


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", type=parse_sections, default=list(ALL_SECTIONS), help="e.g. 1,2,4 (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds: checks that every section runs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, for both sides")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md", help="Markdown report to write")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: section 3's subprocess
    parser.add_argument("--loopback-server", type=float, help=argparse.SUPPRESS)  # internal: section 5's server
    parser.add_argument("--search-probe", help=argparse.SUPPRESS)  # internal: section 8's subprocess
    return parser


def main(argv: list[str] | None = None, command: str = "python scripts/benchmark.py") -> int:
    """Run the sections ``argv`` asks for and write the report; ``command`` is how the report says it was run.

    Example: ``main(["--quick", "--sections", "4", "--output", "/tmp/b.md"])`` (returns 1 if a section failed).
    """
    args = make_parser(prog=command).parse_args(argv)
    if args.loopback_server is not None:
        server = LoopbackServer(args.loopback_server)
        print(server.url, flush=True)
        server.serve_forever()
        return 0
    if args.memory_probe:
        print(json.dumps(memory_probe(json.loads(args.memory_probe))))
        return 0
    if args.search_probe:
        print(json.dumps(search_probe(json.loads(args.search_probe))))
        return 0
    if args.threads < 1:
        raise SystemExit(f"--threads {args.threads}: use a positive number of threads.")
    torch.set_num_threads(args.threads)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    settings = QUICK if args.quick else Settings()
    command = " ".join([command, *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    machine = machine_info(args.threads)
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()), flush=True)
    start = time.perf_counter()
    sections: list[Section] = []
    failed = False
    with tempfile.TemporaryDirectory() as work:
        bench = Bench(settings, Path(work), args.threads)
        print(f"model: {bench.describe()}", flush=True)
        runners = {
            1: section_training, 2: section_mfu, 3: section_gradcache, 4: section_encoding, 5: section_generation,
            6: lambda b: section_gpu(b, args.quick), 7: section_local_generation, 8: section_scaling,
        }
        for number in args.sections:
            print(f"\n[{number}] {TITLES[number]} ...", flush=True)
            try:
                sec = runners[number](bench)
            except Exception as error:  # noqa: BLE001  (one section failing must not hide the others)
                traceback.print_exc()
                failed = True
                first_line = str(error).splitlines()[0] if str(error) else ""
                sec = Section(number, TITLES[number], status=f"error: {type(error).__name__}: {first_line}")
            sections.append(sec)
            print(sec.text(), flush=True)
        report = render(sections, machine, command, bench.describe(), args.quick, time.perf_counter() - start)
    history = kept_history(args.output)
    args.output.write_text(report + (f"\n{history}" if history else ""), encoding="utf-8")
    print(f"\nwrote {args.output}" + (" (its history section kept)" if history else ""))
    return 1 if failed else 0
