"""What the sections measure with: the shared model folder, synthetic rows, and training runs of
``E5Trainer`` and ``SentenceTransformerTrainer`` on them, each timed per step and counted in tokens.

:class:`Bench` holds the model folder and the rows, and makes each training run at most once for
all sections (sections 1-3 read the same runs).

Example:

```python
>>> bench = Bench(QUICK, Path("/tmp/work"), threads=1)
>>> bench.run("e5").examples_per_s
```
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .harness import TEMPERATURE, Settings, measure_matmul, real_shape


def bench_config(settings: Settings, vocab_size: int, memory: bool = False, shape: str = "bench"):
    """The config of a benchmark model: ``shape`` "bench" (Mistral, the default sections' model) or "real"
    (the SmolLM2-135M shape: Llama, its vocabulary; random weights); ``memory`` the small probe model."""
    from e5mistral.testing import tiny_backbone_config

    if memory:
        hidden, layers = settings.memory_hidden, settings.memory_layers
        dims = dict(hidden_size=hidden, intermediate_size=hidden * 7 // 2, num_hidden_layers=layers,
                    num_attention_heads=max(2, hidden // 64), num_key_value_heads=max(1, hidden // 256))
        return tiny_backbone_config("mistral", vocab_size, **dims)
    if shape == "real":
        return tiny_backbone_config("llama", max(vocab_size, settings.real_vocab), **real_shape(settings))
    dims = dict(hidden_size=settings.hidden, intermediate_size=settings.intermediate,
                num_hidden_layers=settings.layers, num_attention_heads=settings.heads,
                num_key_value_heads=settings.kv_heads)
    return tiny_backbone_config("mistral", vocab_size, **dims)


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


class TokenMeter:
    """Counts the tokens every forward of a Mistral backbone sees.

    ``real`` counts attended tokens and ``computed`` counts ``batch x seq_len`` positions (padding
    included), over all forwards; ``trained`` counts attended tokens of forwards run with grad
    (each text once per step, also under GradCache, whose first pass runs without grad).

    The backbone's ``forward`` is wrapped on the instance rather than hooked, because
    sentence-transformers calls ``model.forward(...)`` directly, which skips module hooks.
    """

    def __init__(self, model):
        from transformers import PreTrainedModel

        # The decoder itself (E5MistralModel, E5LlamaModel, or the same class loaded as remote code by ST).
        self.backbone = next(m for m in model.modules() if isinstance(m, PreTrainedModel) and hasattr(m, "embed_tokens"))
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


def common_training_arguments(out_dir: str, batch: int, max_steps: int) -> dict:
    """What both trainers share: fused AdamW (both trainers' default) at a constant rate, fp32, no logging, no saving."""
    return dict(
        output_dir=out_dir, per_device_train_batch_size=batch, max_steps=max_steps,
        learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch_fused",
        logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_drop_last=True, seed=0, use_cpu=True,  # sections 1-5 measure the CPU
    )


def train_e5(folder: Path, rows: list[dict], batch: int, max_length: int, mini_batch: int | None,
             max_steps: int, callbacks=(), **options):
    """One ``E5Trainer`` run on ``rows`` from the weights in ``folder``; returns its step clock.

    ``options`` are more ``E5TrainingArguments`` fields, e.g. ``mini_batch_positions=512``.
    """
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
            num_negatives=1, mini_batch_size=mini_batch, **options,
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
             max_steps: int, callbacks=(), mini_batch_num_tokens: int | None = None):
    """The same run with ``SentenceTransformerTrainer`` and (Cached)MultipleNegativesRankingLoss.

    ``mini_batch_num_tokens`` is CachedMNRL's token budget (sentence-transformers 6.2), its fastest
    setting for texts of varied length; ``mini_batch`` (rows) is ignored when it is set.
    """
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
    if mini_batch is None and mini_batch_num_tokens is None:
        loss = MultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE)
    else:
        loss = CachedMultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE, mini_batch_size=mini_batch or 32,
                                                  mini_batch_num_tokens=mini_batch_num_tokens)
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


def run_options(name: str, settings: Settings) -> tuple:
    """``(train function, mini_batch, extra keyword arguments)`` of a named training run.

    - ``e5`` / ``st``: plain (one graph per side); ``E5Trainer`` cuts length-sorted chunks, MNRL has no such option.
    - ``e5_gradcache`` / ``st_cached``: GradCache with the same token budget per forward on both sides:
      ``mini_batch_positions`` (padded positions, ours) and CachedMNRL's ``mini_batch_num_tokens`` (real tokens).
    - ``..._rows``: GradCache with ``settings.mini_batch`` rows per forward (both sides' defaults).
    - ``..._packed``: ours with ``padding_free`` (each forward's texts packed in one row, no padding).
    """
    budget = settings.mini_batch_tokens
    table = {
        "e5": (train_e5, None, {}),
        "st": (train_st, None, {}),
        "e5_gradcache": (train_e5, None, {"mini_batch_positions": budget}),
        "st_cached": (train_st, None, {"mini_batch_num_tokens": budget}),
        "e5_gradcache_rows": (train_e5, settings.mini_batch, {}),
        "e5_packed": (train_e5, None, {"padding_free": True}),
        "e5_gradcache_packed": (train_e5, None, {"mini_batch_positions": budget, "padding_free": True}),
        "st_cached_rows": (train_st, settings.mini_batch, {}),
    }
    if name not in table:
        raise KeyError(f"unknown training run {name!r}; known: {', '.join(table)}")
    return table[name]


class Bench:
    """Holds the shared model folder, data and the training runs (each made at most once).

    ``shape`` "bench" is the default sections' Mistral-shaped model; "real" the SmolLM2-135M shape
    (``Bench.real()`` makes it once, with its own, smaller, batch and lengths).
    """

    def __init__(self, settings: Settings, work: Path, threads: int, shape: str = "bench"):
        from e5mistral import E5MistralModel, save_model_folder
        from e5mistral.testing import make_tiny_tokenizer

        self.settings = settings
        self.work = work
        self.threads = threads
        self.shape = shape
        self.tokenizer = make_tiny_tokenizer()
        real = shape == "real"
        self.batch = settings.real_batch if real else settings.batch
        self.max_length = settings.real_max_length if real else settings.max_length
        torch.manual_seed(0)
        self.config = bench_config(settings, len(self.tokenizer), shape=shape)
        model = E5MistralModel(self.config).eval()
        self.params = non_embedding_parameters(model)
        self.total_params = sum(p.numel() for p in model.parameters())
        self.folder = save_model_folder(model, self.tokenizer, work / f"model-{shape}", max_seq_length=self.max_length)
        del model
        self.steps = settings.real_steps if real else settings.steps
        self.rows = make_rows(self.batch * (settings.warmup_steps + self.steps), seed=0)
        self.runs: dict[str, TrainRun] = {}
        self.all_runs: dict[str, list[TrainRun]] = {}  # every repeat, in order (for the run-to-run spread)
        self._primed = False
        self._matmul: float | None = None
        self._real: Bench | None = None

    def real(self) -> Bench:
        """The SmolLM2-135M-shaped bench (built on first use), sharing this one's matmul measurements."""
        if self._real is None:
            self._real = Bench(self.settings, self.work, self.threads, shape="real")
            self._real._matmul = self._matmul
        return self._real

    @property
    def label(self) -> str:
        """How the report names this bench's model: ``"4 x 512"`` or ``"SmolLM2-135M shape"``."""
        c = self.config
        return "SmolLM2-135M shape" if self.shape == "real" else f"{c.num_hidden_layers} x {c.hidden_size}"

    def describe(self) -> str:
        c = self.config
        name = "SmolLM2-135M shape: random E5LlamaModel" if self.shape == "real" else "random E5MistralModel"
        return (f"{name}, {c.num_hidden_layers} layers x {c.hidden_size} hidden, FFN {c.intermediate_size}, "
                f"{c.num_attention_heads} heads / {c.num_key_value_heads} KV heads, vocab {c.vocab_size}: "
                f"{self.params / 1e6:.2f}M non-embedding parameters ({self.total_params / 1e6:.2f}M in all), fp32")

    def matmul_flops(self) -> float:
        """The machine's fp32 matmul rate: the best of a measurement now and any made before.

        Measured again at each call (1 s) and never lowered: one measurement during a slow spell
        (another process on the cores) would understate the rate and overstate every ratio to it.
        """
        self._matmul = max(self._matmul or 0.0, measure_matmul(self.settings.matmul_n))
        if self._real is not None:
            self._real._matmul = self._matmul
        return self._matmul

    def run(self, name: str) -> TrainRun:
        """``name`` of :func:`run_options`: its fastest of the runs made so far (one if none)."""
        if name not in self.runs:
            self.run_pair(name)
        return self.runs[name]

    def spread(self, ours: str, reference: str) -> list[float]:
        """The ratio reference / ours of seconds per step in each alternating repeat (run-to-run spread)."""
        return [b.seconds_per_step / a.seconds_per_step for a, b in zip(self.all_runs[ours], self.all_runs[reference])]

    def run_pair(self, *names: str) -> None:
        """Train each of ``names`` ``settings.repeats`` times, alternating (a, b, a, b), and keep each one's
        fastest run: machine noise (another process, frequency changes) only ever slows a run down, and
        alternating spreads any slow spell over both sides instead of one."""
        s = self.settings
        repeats = s.real_repeats if self.shape == "real" else s.repeats
        if not self._primed:
            # The first training of a process pays one-time costs (allocator growth, lazy imports, first
            # page faults) beyond its own warm-up step; spend them on an untimed step so that whichever
            # side is measured first is not penalised.
            train_e5(self.folder, self.rows, self.batch, self.max_length, None, 1)
            self._primed = True
            self.matmul_flops()  # the reference rate, before and (section 2) after the training runs
        for repeat in range(repeats):
            for name in names:
                train, mini, options = run_options(name, s)
                print(f"    training ({self.shape}): {name}, run {repeat + 1} of {repeats} ({s.warmup_steps} warm-up + "
                      f"{self.steps} measured steps of {self.batch} rows)", flush=True)
                clock = train(self.folder, self.rows, self.batch, self.max_length, mini, s.warmup_steps + self.steps,
                              **options)
                result = summarise_clock(name, clock, self.batch, s.warmup_steps)
                self.all_runs.setdefault(name, []).append(result)
                if name not in self.runs or result.seconds_per_step < self.runs[name].seconds_per_step:
                    self.runs[name] = result
