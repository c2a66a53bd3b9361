#!/usr/bin/env python
"""Benchmarks: e5mistral side by side with sentence-transformers and with the machine's own limits.

Every figure is printed as a ratio against its reference, both measured in the same run, on the
same model (a random Mistral-shaped ``E5MistralModel``, 4 layers x 512 hidden, big enough that
matrix products dominate), the same synthetic rows, batch, lengths and threads on both sides. The
numbers, the machine and the exact command are written to ``BENCHMARKS.md``.

    python scripts/benchmark.py                          # every section; minutes on a laptop CPU
    python scripts/benchmark.py --sections 4,5           # some sections
    python scripts/benchmark.py --quick --output /tmp/b.md   # seconds: the smoke test's settings

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

Timings on a shared machine are noisy: each ratio compares two runs made moments apart, and the
training and encoding figures take the fastest of ``Settings.repeats`` alternating runs per side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

REPO = Path(__file__).resolve().parents[1]
TEMPERATURE = 0.02  # the recipe's; sentence-transformers' scale is 1 / temperature
ALL_SECTIONS = (1, 2, 3, 4, 5, 6)


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------
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


QUICK = Settings(
    layers=1, hidden=64, intermediate=224, heads=4, kv_heads=2,
    batch=4, max_length=32, mini_batch=2, warmup_steps=1, steps=1,
    memory_batches=(16, 64), memory_layers=1, memory_hidden=64, memory_max_length=16, memory_mini_batch=8,
    encode_texts=16, encode_batch=8, repeats=1, matmul_n=256,
    latency=0.05, concurrencies=(1, 8), rounds=2,
    gpu_batch=2, gpu_query_length=16, gpu_document_length=32, gpu_steps=1,
)

MISTRAL_7B_SHAPE = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
)
TINY_GPU_SHAPE = dict(
    vocab_size=1000, hidden_size=64, intermediate_size=224, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
)


# ------------------------------------------------------------------------------------------------
# Report: rows of (figure, ours, reference, ratio, goal), printed as they come and written as Markdown
# ------------------------------------------------------------------------------------------------
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


def machine_info(threads: int) -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sentence_transformers
    import transformers

    info = {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} usable",
        "torch threads": str(threads),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    if hasattr(os, "getloadavg"):  # other work on the machine makes timings noisy: say how busy it was
        info["load average at start"] = "{:.2f} / {:.2f} / {:.2f} (1 / 5 / 15 min)".format(*os.getloadavg())
    return info


# ------------------------------------------------------------------------------------------------
# Model, tokenizer and data shared by both sides
# ------------------------------------------------------------------------------------------------
def bench_config(settings: Settings, vocab_size: int, memory: bool = False):
    from e5mistral.testing import tiny_config

    if memory:
        hidden, layers = settings.memory_hidden, settings.memory_layers
        shape = dict(hidden_size=hidden, intermediate_size=hidden * 7 // 2, num_hidden_layers=layers,
                     num_attention_heads=max(2, hidden // 64), num_key_value_heads=max(1, hidden // 256))
    else:
        shape = dict(hidden_size=settings.hidden, intermediate_size=settings.intermediate,
                     num_hidden_layers=settings.layers, num_attention_heads=settings.heads,
                     num_key_value_heads=settings.kv_heads)
    return tiny_config(vocab_size=vocab_size, **shape)


def non_embedding_parameters(model) -> int:
    """Parameters that do matrix work per token (the token embedding is a lookup)."""
    return sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)


def make_rows(n: int, seed: int = 0, short: bool = False) -> list[dict]:
    """``n`` deterministic training rows (the README's "Training" schema) of realistic, varied lengths.

    Words come from the bundled tokenizer corpus (about 2.6 tiny-tokenizer tokens per word);
    queries are 3-15 words after an instruction (~37 tokens), documents log-normal around a median
    of 20 words (~50 tokens, a few beyond the default 128-token truncation), so batches carry the
    padding real data carries. ``short`` keeps every text under ~12 words.
    """
    from importlib import resources

    from e5mistral.instructions import INSTRUCTIONS

    words = resources.files("e5mistral").joinpath("data/tokenizer_corpus.txt").read_text(encoding="utf-8").split()
    instructions = list(INSTRUCTIONS.values())
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(max(1, k)))

    def doc_words() -> int:
        return rng.randint(3, 12) if short else min(200, int(rng.lognormvariate(math.log(20), 0.6)))

    rows = []
    for i in range(n):
        rows.append({
            "query": text(rng.randint(2, 6) if short else rng.randint(3, 15)),
            "positive": text(doc_words()),
            "negatives": [text(doc_words())],
            "instruction": "" if short else instructions[i % len(instructions)],
            "task": "bench",
            "language": "en",
        })
    return rows


def make_texts(n: int, seed: int = 1) -> list[str]:
    """Documents for the encoding benchmark: varied lengths, as in :func:`make_rows`."""
    return [row["positive"] for row in make_rows(n, seed)]


# ------------------------------------------------------------------------------------------------
# Measuring instruments
# ------------------------------------------------------------------------------------------------
class TokenMeter:
    """Counts the tokens every forward of a Mistral backbone sees.

    ``real`` counts attended tokens and ``computed`` counts ``batch x seq_len`` positions (padding
    included), over all forwards; ``trained`` counts attended tokens of forwards run with grad
    (each text once per step, also under GradCache, whose first pass runs without grad).

    The backbone's ``forward`` is wrapped on the instance rather than hooked, because
    sentence-transformers calls ``model.forward(...)`` directly, which skips module hooks.
    """

    def __init__(self, model):
        from transformers import MistralModel

        self.backbone = next(m for m in model.modules() if isinstance(m, MistralModel))
        self.real = self.computed = self.trained = 0
        original = self.backbone.forward

        def counted_forward(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                mask = kwargs.get("attention_mask")
                real = int(mask.sum()) if mask is not None else ids.numel()
                self.real += real
                self.computed += ids.numel()
                if torch.is_grad_enabled():
                    self.trained += real
            return original(*args, **kwargs)

        self.backbone.forward = counted_forward

    def close(self) -> None:
        del self.backbone.forward  # back to the class's method


def make_step_clock(meter: TokenMeter):
    """A ``TrainerCallback`` recording the wall clock and ``meter`` after every optimizer step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks = []  # (time, trained tokens, real tokens, computed tokens)

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), meter.trained, meter.real, meter.computed))

    return StepClock()


@dataclass
class TrainRun:
    """Throughput of the measured steps (after warm-up): data loading, collation, step, optimizer."""

    name: str
    seconds_per_step: float
    examples_per_s: float
    tokens_per_s: float  # real (attended) tokens trained per second
    padding_share: float  # of computed positions, over the measured steps


def summarise_clock(name: str, clock, batch: int, warmup: int) -> TrainRun:
    marks = clock.marks
    if len(marks) <= warmup:
        raise RuntimeError(f"{name}: only {len(marks)} steps recorded; need more than {warmup} warm-up steps.")
    (t0, tr0, r0, c0), (t1, tr1, r1, c1) = marks[warmup - 1], marks[-1]
    steps = len(marks) - warmup
    seconds = t1 - t0
    return TrainRun(
        name=name,
        seconds_per_step=seconds / steps,
        examples_per_s=steps * batch / seconds,
        tokens_per_s=(tr1 - tr0) / seconds,
        padding_share=1 - (r1 - r0) / max(1, c1 - c0),
    )


def measure_matmul(n: int, dtype=torch.float32, device: str = "cpu", seconds: float = 1.0) -> float:
    """Best FLOP/s of ``(n, n) @ (n, n)`` over about ``seconds`` of repeats (2 n^3 FLOP each)."""
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


def read_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# ------------------------------------------------------------------------------------------------
# Training runs (sections 1-3)
# ------------------------------------------------------------------------------------------------
def common_training_arguments(out_dir: str, batch: int, max_steps: int) -> dict:
    """What both trainers share: plain AdamW at a constant rate, fp32, no logging, no saving."""
    return dict(
        output_dir=out_dir, per_device_train_batch_size=batch, max_steps=max_steps,
        learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_drop_last=True, seed=0, use_cpu=True,  # sections 1-5 measure the CPU
    )


def train_e5(folder: Path, rows: list[dict], batch: int, max_length: int, mini_batch: int | None,
             max_steps: int, callbacks=()):
    """One ``E5Trainer`` run on ``rows`` from the weights in ``folder``; returns its step clock."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from transformers.trainer_callback import PrinterCallback

    from e5mistral import E5MistralModel
    from e5mistral.training.arguments import E5TrainingArguments
    from e5mistral.training.trainer import E5Trainer

    model = E5MistralModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    meter = TokenMeter(model)
    clock = make_step_clock(meter)
    with tempfile.TemporaryDirectory() as out_dir:
        args = E5TrainingArguments(
            **common_training_arguments(out_dir, batch, max_steps),
            temperature=TEMPERATURE, query_max_length=max_length, passage_max_length=max_length,
            num_negatives=1, mini_batch_size=mini_batch,
        )
        trainer = E5Trainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
            callbacks=[clock, *callbacks],
        )
        trainer.remove_callback(PrinterCallback)  # no end-of-training metrics dict on stdout
        trainer.train()
    meter.close()
    return clock


def train_st(folder: Path, rows: list[dict], batch: int, max_length: int, mini_batch: int | None,
             max_steps: int, callbacks=()):
    """The same run with ``SentenceTransformerTrainer`` and (Cached)MultipleNegativesRankingLoss."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from transformers.trainer_callback import PrinterCallback

    from e5mistral import format_query

    model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    model.max_seq_length = max_length
    if mini_batch is None:
        loss = MultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE)
    else:
        loss = CachedMultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE, mini_batch_size=mini_batch)
    dataset = Dataset.from_dict({
        "anchor": [format_query(r["instruction"], r["query"]) for r in rows],
        "positive": [r["positive"] for r in rows],
        "negative": [r["negatives"][0] for r in rows],
    })
    meter = TokenMeter(model)
    clock = make_step_clock(meter)
    with tempfile.TemporaryDirectory() as out_dir:
        args = SentenceTransformerTrainingArguments(**common_training_arguments(out_dir, batch, max_steps))
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[clock, *callbacks]
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    meter.close()
    return clock


class Bench:
    """Holds the shared model folder, data and the training runs (each made at most once)."""

    def __init__(self, settings: Settings, work: Path, threads: int):
        from e5mistral import E5MistralModel, save_model_folder
        from e5mistral.testing import make_tiny_tokenizer

        self.settings = settings
        self.work = work
        self.threads = threads
        self.tokenizer = make_tiny_tokenizer()
        torch.manual_seed(0)
        model = E5MistralModel(bench_config(settings, len(self.tokenizer))).eval()
        self.params = non_embedding_parameters(model)
        self.total_params = sum(p.numel() for p in model.parameters())
        self.folder = save_model_folder(model, self.tokenizer, work / "model", max_seq_length=settings.max_length)
        s = settings
        self.rows = make_rows(s.batch * (s.warmup_steps + s.steps), seed=0)
        self.runs: dict[str, TrainRun] = {}
        self._primed = False
        self._matmul: float | None = None

    def describe(self) -> str:
        s = self.settings
        return (f"random E5MistralModel, {s.layers} layers x {s.hidden} hidden, FFN {s.intermediate}, "
                f"{s.heads} heads / {s.kv_heads} KV heads, vocab {len(self.tokenizer)}: "
                f"{self.params / 1e6:.2f}M non-embedding parameters ({self.total_params / 1e6:.2f}M in all), fp32")

    def matmul_flops(self) -> float:
        """The machine's fp32 matmul rate: the best of a measurement now and any made before.

        Measured again at each call (1 s) and never lowered: one measurement during a slow spell
        (another process on the cores) would understate the rate and overstate every ratio to it.
        """
        self._matmul = max(self._matmul or 0.0, measure_matmul(self.settings.matmul_n))
        return self._matmul

    def run(self, name: str) -> TrainRun:
        """``name`` in e5, e5_gradcache, st, st_cached: its fastest of the runs made so far (one if none)."""
        if name not in self.runs:
            self.run_pair(name)
        return self.runs[name]

    def run_pair(self, *names: str) -> None:
        """Train each of ``names`` ``settings.repeats`` times, alternating (a, b, a, b), and keep each one's
        fastest run: machine noise (another process, frequency changes) only ever slows a run down, and
        alternating spreads any slow spell over both sides instead of one."""
        s = self.settings
        if not self._primed:
            # The first training of a process pays one-time costs (allocator growth, lazy imports, first
            # page faults) beyond its own warm-up step; spend them on an untimed step so that whichever
            # side is measured first is not penalised.
            train_e5(self.folder, self.rows, s.batch, s.max_length, None, 1)
            self._primed = True
            self.matmul_flops()  # the reference rate, before and (section 2) after the training runs
        for repeat in range(s.repeats):
            for name in names:
                mini = s.mini_batch if name.endswith(("gradcache", "cached")) else None
                train = train_e5 if name.startswith("e5") else train_st
                print(f"    training: {name}, run {repeat + 1} of {s.repeats} ({s.warmup_steps} warm-up + {s.steps} "
                      f"measured steps of {s.batch} rows)", flush=True)
                clock = train(self.folder, self.rows, s.batch, s.max_length, mini, s.warmup_steps + s.steps)
                result = summarise_clock(name, clock, s.batch, s.warmup_steps)
                if name not in self.runs or result.seconds_per_step < self.runs[name].seconds_per_step:
                    self.runs[name] = result


def section_training(bench: Bench) -> Section:
    s = bench.settings
    sec = Section(1, "Training throughput: E5Trainer vs SentenceTransformerTrainer")
    for ours, ref, what in (("e5", "st", "plain"), ("e5_gradcache", "st_cached", f"GradCache, chunk {s.mini_batch}")):
        bench.run_pair(ours, ref)
        a, b = bench.run(ours), bench.run(ref)
        ref_name = "MultipleNegativesRankingLoss" if ref == "st" else "CachedMultipleNegativesRankingLoss"
        for unit, x, y in (("examples/s", a.examples_per_s, b.examples_per_s), ("real tokens/s", a.tokens_per_s, b.tokens_per_s)):
            ratio = x / y
            sec.add(f"{what}: {unit} (vs {ref_name})", fmt(x, unit), fmt(y, unit), ratio, ">= 1.25x", ratio >= 1.25)
    sec.notes.append(
        f"{s.batch} rows per step (query with instruction, positive, 1 hard negative), every text truncated to "
        f"{s.max_length} tokens on both sides, temperature {TEMPERATURE} (scale {1 / TEMPERATURE:g}), AdamW lr 1e-5, fp32, "
        f"{s.warmup_steps} warm-up step(s) then {s.steps} timed; the time runs from the end of the last warm-up step "
        "to the end of the last step, so it includes data loading, collation (tokenisation) and the optimizer. "
        f"Each side trained {s.repeats} times, alternating with the other (ours, reference, ours, ...); the "
        "fastest run of each counts."
    )
    sec.notes.append("Real tokens = attended tokens of each text, counted once per step by a hook on the backbone.")
    return sec


def section_mfu(bench: Bench) -> Section:
    s = bench.settings
    sec = Section(2, "Model FLOP utilisation and padding")
    bench.run("e5")  # the others are shown when sections 1 or 3 ran them
    peak = bench.matmul_flops()  # the best of this and the measurement before training
    labels = {"e5": "E5Trainer", "st": "ST + MNRL", "e5_gradcache": "E5Trainer, GradCache", "st_cached": "ST + CachedMNRL"}
    runs = [(labels[name], bench.runs[name]) for name in labels if name in bench.runs]
    for label, run in runs:
        achieved = 6 * bench.params * run.tokens_per_s
        sec.add(f"{label}: 6 x N x real tokens/s vs {s.matmul_n}^3 fp32 matmul", fmt(achieved / 1e9, "GFLOP/s"),
                fmt(peak / 1e9, "GFLOP/s"), achieved / peak)
    for label, run in runs:
        sec.add(f"{label}: padding share of computed positions", f"{run.padding_share:.1%}", "", None, "< 10%",
                run.padding_share < 0.10)
    sec.notes.append(
        f"N = {bench.params / 1e6:.2f}M non-embedding parameters; 6N FLOP per trained token (forward 2N, backward 4N). "
        "Attention's own FLOPs and GradCache's extra forward are not counted (model FLOPs, not hardware FLOPs), so the "
        "ratio is the share of the machine's matmul rate that turns into training. The matmul rate is the best of "
        "two 1-second measurements, before the training runs and after them."
    )
    sec.notes.append("Padding share = 1 - attended tokens / (batch x padded length), summed over every forward of the "
                     "measured steps (GradCache's no-grad pass included).")
    return sec


def memory_probe(spec: dict) -> dict:
    """Run in a fresh process: one training step; the peak RSS increase over the RSS just before it."""
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

        peak = PeakAtStart()
        start = time.perf_counter()
        train_e5(folder, rows, spec["batch"], settings.memory_max_length, spec["mini_batch"], 1, callbacks=[peak])
        seconds = time.perf_counter() - start
        return {"peak_increase_mb": (read_status_kb("VmHWM") - peak.before) / 1024, "seconds": seconds}


def run_memory_probe(batch: int, mini_batch: int | None, settings: Settings, threads: int) -> dict:
    spec = {"batch": batch, "mini_batch": mini_batch, "threads": threads, "settings": asdict(settings)}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-probe", json.dumps(spec)],
        check=False, capture_output=True, text=True, timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe batch={batch} mini_batch={mini_batch} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def section_gradcache(bench: Bench) -> Section:
    s = bench.settings
    sec = Section(3, "GradCache: time overhead and peak memory")
    plain, cached = bench.run("e5"), bench.run("e5_gradcache")
    overhead = cached.seconds_per_step / plain.seconds_per_step
    sec.add(f"step time, batch {s.batch}, chunk {s.mini_batch} (vs plain step)", fmt(cached.seconds_per_step, "s"),
            fmt(plain.seconds_per_step, "s"), overhead, "~1.33x (one extra forward)", overhead <= 1.5)
    expected = 4 / 3 * (1 - plain.padding_share) / (1 - cached.padding_share)
    sec.notes.append(
        f"Counting computed positions (chunks are trimmed to their own longest text: padding {cached.padding_share:.0%} "
        f"vs {plain.padding_share:.0%}), one extra forward predicts {expected:.2f}x; a measured ratio well below that "
        "means the plain step's large activations (batch x padded length) run slower per position than small chunks "
        "on this machine (memory traffic, fresh pages), not that GradCache is free."
    )
    if "st" in bench.runs and "st_cached" in bench.runs:  # when section 1 ran them
        st_plain, st_cached = bench.runs["st"], bench.runs["st_cached"]
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


# ------------------------------------------------------------------------------------------------
# Encoding (section 4)
# ------------------------------------------------------------------------------------------------
def section_encoding(bench: Bench) -> Section:
    from sentence_transformers import SentenceTransformer

    from e5mistral import E5Embedder

    s = bench.settings
    sec = Section(4, "Encoding: E5Embedder vs SentenceTransformer.encode")
    texts = make_texts(s.encode_texts)
    embedder = E5Embedder.from_pretrained(bench.folder, device="cpu", max_length=s.max_length, batch_size=s.encode_batch)
    st = SentenceTransformer(str(bench.folder), trust_remote_code=True, device="cpu")
    st.max_seq_length = s.max_length
    tokens = sum(len(ids) for ids in bench.tokenizer(texts, truncation=True, max_length=s.max_length)["input_ids"])
    def ours():
        return embedder.encode(texts, show_progress_bar=False)

    def reference():
        return st.encode(texts, batch_size=s.encode_batch, convert_to_tensor=True, show_progress_bar=False)

    def timed(fn):
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result

    ours(), reference()  # warm-up (allocator, first-call paths)
    best_ours = best_ref = math.inf
    for _ in range(s.repeats):  # alternate, so load on a shared machine hits both sides alike
        seconds, a = timed(ours)
        best_ours = min(best_ours, seconds)
        seconds, b = timed(reference)
        best_ref = min(best_ref, seconds)
    diff = (a - b.cpu().float()).abs().max().item()
    ratio = best_ref / best_ours
    sec.add("texts/s", fmt(len(texts) / best_ours, "texts/s"), fmt(len(texts) / best_ref, "texts/s"), ratio, ">= 1.1x", ratio >= 1.1)
    sec.add("real tokens/s", fmt(tokens / best_ours, "tok/s"), fmt(tokens / best_ref, "tok/s"), ratio)
    sec.notes.append(
        f"{len(texts)} documents ({tokens} tokens, truncated to {s.max_length}), batch {s.encode_batch}, same saved "
        f"folder, fp32; best of {s.repeats} alternating runs per side after one warm-up each. Largest difference "
        f"between the two sides' embeddings: {diff:.1e}."
    )
    return sec


# ------------------------------------------------------------------------------------------------
# Data generation (section 5)
# ------------------------------------------------------------------------------------------------
class LoopbackServer:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 that answers after ``latency`` seconds.

    Every answer is a valid JSON example for any task kind, unique to the request's seed.
    """

    def __init__(self, latency: float):
        self.latency = latency
        self.count = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real server
            disable_nagle_algorithm = True  # TCP_NODELAY, as real servers set: no 40 ms delayed-ACK stalls
            wbufsize = -1  # headers and body leave in one write (flushed after each request)

            def log_message(self, *args):
                pass

            def do_GET(self):  # /count: chat completions answered so far
                payload = str(server.count).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(server.latency)
                seed = body.get("seed", 0)
                answer = {"S1": f"first {seed}", "S2": f"second {seed}", "S3": f"third {seed}",
                          "user_query": f"query {seed}", "positive_document": f"positive {seed}",
                          "hard_negative_document": f"negative {seed}"}
                payload = json.dumps({
                    "id": f"bench-{seed}", "object": "chat.completion", "created": 0, "model": body.get("model", ""),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": json.dumps(answer)}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
                }).encode()
                with server.lock:
                    server.count += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512  # the default backlog of 5 would refuse a burst of 64 connections

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()


class LoopbackServerProcess:
    """:class:`LoopbackServer` in a child process, so that its threads do not compete with the
    client under test for this process's GIL (a real LLM server is another process too).

    ``count()`` asks the server how many chat completions it has answered.
    """

    def __init__(self, latency: float):
        self.latency = latency

    def __enter__(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--loopback-server", str(self.latency)],
            stdout=subprocess.PIPE, text=True,
        )
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"the loopback server did not start (it printed {self.url!r}).")
        return self

    def count(self) -> int:
        import urllib.request

        with urllib.request.urlopen(self.url + "/count") as response:
            return int(response.read())

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def sequential_client(url: str, n: int) -> float:
    """Requests/s of a plain blocking loop: one request, wait for the answer, parse it, next."""
    import urllib.request

    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}], "seed": 0}).encode()
    start = time.perf_counter()
    for _ in range(n):
        request = urllib.request.Request(url + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as response:
            json.loads(response.read())
    return n / (time.perf_counter() - start)


def section_generation(bench: Bench) -> Section:
    from e5mistral.synthetic.generate import GenerationConfig, run_generation
    from e5mistral.synthetic.llm import EndpointPool

    s = bench.settings
    sec = Section(5, "Data generation against a loopback server with fixed latency")
    with LoopbackServerProcess(s.latency) as server:
        n_seq = max(4, s.rounds * 2)
        sequential = sequential_client(server.url, n_seq)
        cpu_ms = []
        for c in s.concurrencies:
            n = s.rounds * c
            config = GenerationConfig(kinds=("sts",), examples_per_kind=n, seed=c, languages={"en": 1.0})
            pool = EndpointPool([server.url], model="bench", token="EMPTY", json_mode="off", max_retries=0, timeout=60)
            before = server.count()
            with tempfile.TemporaryDirectory() as work:
                start, cpu_start = time.perf_counter(), time.process_time()
                summary = asyncio.run(run_generation(config, pool, Path(work) / "generations.jsonl",
                                                     concurrency=c, progress=False))
                seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            requests = server.count() - before
            failed = sum(summary["failures_by_reason"].values())
            if requests != n or failed:
                sec.notes.append(f"concurrency {c}: {requests} requests for {n} planned, {failed} failed "
                                 f"({summary['failures_by_reason']}).")
            rate, ideal = requests / seconds, c / s.latency
            sec.add(f"concurrency {c}: requests/s ({n} requests) vs concurrency / latency", fmt(rate, "req/s"),
                    fmt(ideal, "req/s"), rate / ideal, ">= 0.9x", rate / ideal >= 0.9)
            sec.add(f"concurrency {c}: requests/s vs a sequential client", fmt(rate, "req/s"),
                    fmt(sequential, "req/s"), rate / sequential)
            cpu_ms.append(1000 * cpu / max(1, requests))
    sec.notes.append(
        f"Server: http.server on 127.0.0.1 in its own process (a thread per connection, keep-alive), answering every chat completion "
        f"after a fixed {s.latency:g} s with a valid `sts` example. Ours: `run_generation` (plan, parse, validate, "
        "append to the JSONL log) over `EndpointPool` (one pooled aiohttp session). Sequential client: "
        f"urllib, one request at a time ({n_seq} requests), parsing each answer. Times include the run's start-up."
    )
    sec.notes.append(
        "Client CPU per request (this process, all threads): "
        + ", ".join(f"{ms:.1f} ms at concurrency {c}" for ms, c in zip(cpu_ms, s.concurrencies))
        + f" (the first includes the client's start-up). At the highest concurrency one event-loop thread tops out "
        f"near {1000 / cpu_ms[-1]:.0f} req/s on an idle core; the loopback server (another process) needs CPU too, so "
        f"on a busy or small machine concurrency {s.concurrencies[-1]} at {s.latency:g} s latency "
        f"({s.concurrencies[-1] / s.latency:g} req/s ideal) becomes CPU-bound."
    )
    return sec


# ------------------------------------------------------------------------------------------------
# GPU (section 6)
# ------------------------------------------------------------------------------------------------
def lora_step_benchmark(settings: Settings, device: str, shape: dict, dtype=torch.bfloat16) -> dict:
    """Tokens/s of a LoRA InfoNCE training step on a random model of ``shape`` (bf16, checkpointing)."""
    from peft import LoraConfig, get_peft_model

    from e5mistral import E5MistralConfig, E5MistralModel
    from e5mistral.training.arguments import LORA_TARGET_MODULES
    from e5mistral.training.loss import info_nce

    config = E5MistralConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=2, sliding_window=None)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise directly in bf16 on the device: no fp32 copy, no download
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = E5MistralModel(config)
    finally:
        torch.set_default_dtype(default_dtype)
    params = non_embedding_parameters(model)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules=LORA_TARGET_MODULES, task_type="FEATURE_EXTRACTION")
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    b, tq, td = settings.gpu_batch, settings.gpu_query_length, settings.gpu_document_length
    generator = torch.Generator().manual_seed(0)

    def ids(rows: int, length: int) -> dict:
        x = torch.randint(3, config.vocab_size, (rows, length), generator=generator)
        x[:, -1] = config.eos_token_id  # the EOS contract: the pooled token is EOS
        return {"input_ids": x.to(device), "attention_mask": torch.ones_like(x, device=device)}

    queries, documents = ids(b, tq), ids(2 * b, td)  # (B, Tq); (2B, Td): positives then hard negatives
    tokens = b * tq + 2 * b * td
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step():
        q = model(**queries).pooler_output  # (B, H)
        d = model(**documents).pooler_output  # (2B, H)
        loss, _ = info_nce(q, d, temperature=TEMPERATURE)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: kernels, allocator, optimizer state
    sync()
    if not any(state for state in optimizer.state.values()):
        raise RuntimeError("the LoRA step updated no parameter: no gradient reached the adapters.")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(settings.gpu_steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / settings.gpu_steps
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {"params": params, "trainable": trainable, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "peak_gb": peak_gb}


def section_gpu(bench: Bench, quick: bool) -> Section:
    s = bench.settings
    sec = Section(6, "GPU: Mistral-7B-shaped LoRA training step (bf16, gradient checkpointing)")
    if torch.cuda.is_available():
        device, shape, n = "cuda", MISTRAL_7B_SHAPE, 8192
    elif quick:
        device, shape, n = "cpu", TINY_GPU_SHAPE, s.matmul_n
        sec.status = "skipped: no CUDA (code path checked on CPU with a tiny shape; these numbers mean nothing)"
    else:
        sec.status = "skipped: no CUDA"
        sec.notes.append("Run the same command on a machine with a CUDA GPU to fill this section.")
        return sec
    result = lora_step_benchmark(s, device, shape)
    peak = measure_matmul(n, torch.bfloat16, device, seconds=2.0)
    tps = result["tokens_per_s"]
    for label, factor in (("6N (issue's definition)", 6), ("4N (LoRA: frozen weights get no weight gradient)", 4)):
        achieved = factor * result["params"] * tps
        sec.add(f"MFU, {label}, vs {n}^3 bf16 matmul", fmt(achieved / 1e12, "TFLOP/s"), fmt(peak / 1e12, "TFLOP/s"), achieved / peak)
    sec.add("tokens/s (all real: no padding)", fmt(tps, "tok/s"), "", None)
    sec.notes.append(
        f"{'Mistral-7B' if shape is MISTRAL_7B_SHAPE else 'tiny'} shape ({result['params'] / 1e9:.3g}B non-embedding "
        f"parameters), random weights built on the device in bf16; LoRA r 16, alpha 32, dropout 0.1 on "
        f"q/k/v/o/gate/up/down ({result['trainable'] / 1e6:.1f}M trainable); non-reentrant gradient checkpointing; "
        f"{s.gpu_batch} queries x {s.gpu_query_length} tokens + {2 * s.gpu_batch} documents x "
        f"{s.gpu_document_length} tokens per step ({result['tokens']} tokens), InfoNCE, AdamW; {s.gpu_steps} steps "
        f"timed after one warm-up; {result['seconds']:.3g} s/step; peak GPU memory {result['peak_gb']:.1f} GiB."
    )
    sec.notes.append("Checkpointing recomputes the forward (another 2N per token), not counted in either MFU figure.")
    return sec


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
TITLES = {
    1: "Training throughput", 2: "Model FLOP utilisation and padding", 3: "GradCache: time overhead and peak memory",
    4: "Encoding", 5: "Data generation", 6: "GPU LoRA step",
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


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", type=parse_sections, default=list(ALL_SECTIONS), help="e.g. 1,2,4 (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds: checks that every section runs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, for both sides")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md", help="Markdown report to write")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: section 3's subprocess
    parser.add_argument("--loopback-server", type=float, help=argparse.SUPPRESS)  # internal: section 5's server
    return parser


def render(sections: list[Section], machine: dict, command: str, bench: Bench, quick: bool, seconds: float) -> str:
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
        f"| model | {bench.describe()} |",
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


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.loopback_server is not None:
        server = LoopbackServer(args.loopback_server)
        print(server.url, flush=True)
        server.serve_forever()
        return 0
    if args.memory_probe:
        print(json.dumps(memory_probe(json.loads(args.memory_probe))))
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
    command = " ".join(["python scripts/benchmark.py", *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
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
            6: lambda b: section_gpu(b, args.quick),
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
        report = render(sections, machine, command, bench, args.quick, time.perf_counter() - start)
    history = kept_history(args.output)
    args.output.write_text(report + (f"\n{history}" if history else ""), encoding="utf-8")
    print(f"\nwrote {args.output}" + (" (its history section kept)" if history else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
