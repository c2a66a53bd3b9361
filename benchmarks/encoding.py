"""Section 4, encoding: ``E5Embedder.encode`` against ``SentenceTransformer.encode`` on the same
saved folder, best of alternating runs, on the benchmark's model and on the SmolLM2-135M shape.
Goal >= 1.1x.

Example: ``print(section_encoding(bench).text())``.
"""

from __future__ import annotations

import math
import time

from .harness import Section, fmt
from .workload import Bench, TokenMeter, make_texts


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of_alternating(functions: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Run each function once (warm-up), then ``repeats`` times in turn; their best times, every time, last results."""
    for fn in functions.values():
        fn()
    best = dict.fromkeys(functions, math.inf)
    every: dict[str, list[float]] = {name: [] for name in functions}
    results = {}
    for _ in range(repeats):  # alternate, so load on a shared machine hits every side alike
        for name, fn in functions.items():
            seconds, results[name] = timed(fn)
            best[name] = min(best[name], seconds)
            every[name].append(seconds)
    return best, every, results


def compare_encoding(sec: Section, bench: Bench, label: str, n_texts: int, repeats: int, padding_free: bool = False,
                     goal: float = 1.1) -> None:
    from sentence_transformers import SentenceTransformer

    from e5mistral import E5Embedder

    s = bench.settings
    texts = make_texts(n_texts)
    embedder = E5Embedder.from_pretrained(bench.folder, device="cpu", max_length=bench.max_length, batch_size=s.encode_batch,
                                          padding_free=padding_free)
    st = SentenceTransformer(str(bench.folder), trust_remote_code=True, device="cpu")
    st.max_seq_length = bench.max_length
    tokens = sum(len(ids) for ids in bench.tokenizer(texts, truncation=True, max_length=bench.max_length)["input_ids"])
    sides = {
        "ours": lambda: embedder.encode(texts, show_progress_bar=False),
        "reference": lambda: st.encode(texts, batch_size=s.encode_batch, convert_to_tensor=True, show_progress_bar=False),
    }
    best, every, results = best_of_alternating(sides, repeats)
    computed = {}  # positions each side's forwards compute (padding included), in one more, untimed, run
    for name, model in (("ours", embedder.model), ("reference", st)):
        meter = TokenMeter(model)
        sides[name]()
        meter.close()
        computed[name] = (meter.real, meter.computed)
    padding = {name: 1 - real / positions for name, (real, positions) in computed.items()}
    diff = (results["ours"] - results["reference"].cpu().float()).abs().max().item()
    ratio = best["reference"] / best["ours"]
    sec.add(f"{label}: texts/s", fmt(len(texts) / best["ours"], "texts/s"), fmt(len(texts) / best["reference"], "texts/s"),
            ratio, f">= {goal:g}x", ratio >= goal)
    sec.add(f"{label}: real tokens/s", fmt(tokens / best["ours"], "tok/s"), fmt(tokens / best["reference"], "tok/s"), ratio)
    spread = ", ".join(f"{b / a:.2f}x" for a, b in zip(every["ours"], every["reference"]))
    sec.notes.append(
        f"{label}: {len(texts)} documents ({tokens} tokens, truncated to {bench.max_length}), batch {s.encode_batch}, "
        f"same saved folder, fp32; best of {repeats} alternating runs per side after one warm-up each (per repeat: "
        f"{spread}). Largest difference between the two sides' embeddings: {diff:.1e}. Padding: "
        f"{padding['ours']:.1%} vs {padding['reference']:.1%} of computed positions, so padding alone predicts "
        f"{computed['reference'][1] / computed['ours'][1]:.2f}x."
    )


def section_encoding(bench: Bench) -> Section:
    s = bench.settings
    sec = Section(4, "Encoding: E5Embedder vs SentenceTransformer.encode")
    compare_encoding(sec, bench, bench.label, s.encode_texts, s.repeats)
    compare_encoding(sec, bench.real(), bench.real().label, s.real_encode_texts, s.repeats)
    for b, n in ((bench, s.encode_texts), (bench.real(), s.real_encode_texts)):  # packed: goal >= 1.5x
        compare_encoding(sec, b, f"{b.label}, padding-free", n, s.repeats, padding_free=True, goal=1.5)
    return sec
