"""Section 3, GradCache: step time against the plain step at the same batch (ideal at most 1.33x:
one extra forward, less the last mini-batch's, whose graph is kept), and peak memory against plain
at two batch sizes, each configuration one training step in its own process
(``python -m benchmarks --memory-probe SPEC``).

Example: ``print(section_gradcache(bench).text())``; ``run_memory_probe(256, 32, QUICK, 1)``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .harness import Section, Settings, fmt, run_probe
from .workload import Bench, bench_config, make_rows, train_e5


def read_status_kb(key: str) -> int:
    """A ``/proc/self/status`` figure in kB: ``read_status_kb("VmHWM")``, the peak resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def memory_probe(spec: dict) -> dict:
    """Run in a fresh process: one training step; the peak RSS increase over the RSS just before it, the
    run's seconds (with the model load and trainer set-up) and the step's (``step_seconds``, section 8)."""
    from e5mistral import E5MistralModel, save_model_folder
    from e5mistral.testing import make_tiny_tokenizer

    torch.set_num_threads(spec["threads"])
    settings = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["settings"].items()})
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(0)
    model = E5MistralModel(bench_config(settings, len(tokenizer), memory=True))
    with tempfile.TemporaryDirectory() as work:
        folder = save_model_folder(model, tokenizer, Path(work) / "model", max_seq_length=settings.memory_max_length)
        del model
        rows = make_rows(spec["batch"], seed=0, short=True)
        from transformers import TrainerCallback

        class PeakAtStart(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                self.before = read_status_kb("VmRSS")
                Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
                self.began = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self.step_seconds = time.perf_counter() - self.began  # the step alone, without the set-up

        peak = PeakAtStart()
        start = time.perf_counter()
        train_e5(folder, rows, spec["batch"], settings.memory_max_length, spec["mini_batch"], 1, callbacks=[peak])
        seconds = time.perf_counter() - start
        return {"peak_increase_mb": (read_status_kb("VmHWM") - peak.before) / 1024, "seconds": seconds,
                "step_seconds": peak.step_seconds}


def run_memory_probe(batch: int, mini_batch: int | None, settings: Settings, threads: int) -> dict:
    spec = {"batch": batch, "mini_batch": mini_batch, "threads": threads, "settings": asdict(settings)}
    return run_probe("--memory-probe", spec, f"memory probe batch={batch} mini_batch={mini_batch}")


def section_gradcache(bench: Bench) -> Section:
    s = bench.settings
    sec = Section(3, "GradCache: time overhead and peak memory")
    plain, cached = bench.run("e5"), bench.run("e5_gradcache")
    overhead = cached.seconds_per_step / plain.seconds_per_step
    sec.add(f"step time, batch {s.batch}, token budget {s.mini_batch_tokens} (vs plain step)", fmt(cached.seconds_per_step, "s"),
            fmt(plain.seconds_per_step, "s"), overhead, "about 1.33x, the ideal (one extra forward); checked as <= 1.4x",
            overhead <= 1.4)
    expected = 4 / 3 * (1 - plain.padding_share) / (1 - cached.padding_share)
    sec.notes.append(
        f"Counting computed positions (chunks are trimmed to their own longest text: padding {cached.padding_share:.0%} "
        f"vs {plain.padding_share:.0%}), one extra forward predicts {expected:.2f}x (an upper bound: the last mini-batch keeps its graph and is not re-embedded); a measured ratio well below that "
        "means the plain step's large activations (batch x padded length) run slower per position than small chunks "
        "on this machine (memory traffic, fresh pages), not that GradCache is free."
    )
    if "st" in bench.runs and "st_cached" in bench.runs:  # when section 1 ran them
        st_plain = bench.runs["st"]
        st_cached = min((bench.runs[n] for n in ("st_cached", "st_cached_rows") if n in bench.runs),
                        key=lambda run: run.seconds_per_step)
        sec.add("for reference: CachedMNRL step time (vs MNRL step)", fmt(st_cached.seconds_per_step, "s"),
                fmt(st_plain.seconds_per_step, "s"), st_cached.seconds_per_step / st_plain.seconds_per_step)
    peaks = {}
    for batch in s.memory_batches:
        for mini in (None, s.memory_mini_batch):
            print(f"    memory probe: batch {batch}, {'plain' if mini is None else f'GradCache chunk {mini}'}", flush=True)
            peaks[batch, mini] = run_memory_probe(batch, mini, s, bench.threads)
    for batch in s.memory_batches:
        a, b = peaks[batch, s.memory_mini_batch], peaks[batch, None]
        sec.add(f"peak RSS increase, batch {batch}, chunk {s.memory_mini_batch} (vs plain)",
                fmt(a["peak_increase_mb"], "MB"), fmt(b["peak_increase_mb"], "MB"),
                a["peak_increase_mb"] / b["peak_increase_mb"])
    small, large = s.memory_batches[0], s.memory_batches[-1]
    growth = peaks[large, s.memory_mini_batch]["peak_increase_mb"] / peaks[small, s.memory_mini_batch]["peak_increase_mb"]
    plain_growth = peaks[large, None]["peak_increase_mb"] / peaks[small, None]["peak_increase_mb"]
    sec.add(f"peak growth from batch {small} to {large}: GradCache (vs plain)", f"{growth:.2f}x",
            f"{plain_growth:.2f}x", growth / plain_growth,
            f"GradCache growth <= 1.5x (bounded by the chunk) while the batch grows {large / small:g}x", growth <= 1.5)
    sec.notes.append(
        "Peak memory: each configuration runs one E5Trainer step in its own subprocess; the figure is the peak "
        "resident set size (Linux VmHWM, reset through /proc/self/clear_refs when training begins) minus the RSS at "
        "that moment, so it covers activations, gradients, optimizer state and allocator overhead, not the model load."
    )
    sec.notes.append(
        f"Memory probes use a smaller model ({s.memory_layers} layers x {s.memory_hidden} hidden) and short texts "
        f"(<= {s.memory_max_length} tokens, 1 hard negative) so that plain batch {large} fits and runs in seconds; the "
        "question is how memory scales with the batch, which does not depend on the model's size."
    )
    return sec
