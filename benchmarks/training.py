"""Section 1, training throughput: ``E5Trainer`` against ``SentenceTransformerTrainer`` with
(Cached)MultipleNegativesRankingLoss at its fastest settings, plain and with GradCache, on the
benchmark's model and on the SmolLM2-135M shape. Goal >= 1.25x.

Example: ``print(section_training(Bench(QUICK, work, threads=1)).text())``.
"""

from __future__ import annotations

from .harness import TEMPERATURE, Section, fmt
from .workload import Bench

# Our run -> the reference runs it is measured against; the reference's fastest one counts.
PAIRS = {"e5": ("st",), "e5_gradcache": ("st_cached", "st_cached_rows"), "e5_packed": ("st",)}
REFERENCE_NAMES = {
    "st": "MultipleNegativesRankingLoss",
    "st_cached": "CachedMNRL, mini_batch_num_tokens",
    "st_cached_rows": "CachedMNRL, mini_batch_size",
}


def fastest_reference(bench: Bench, names) -> str:
    """The reference run (of those ``bench`` ran) with the fewest seconds per step."""
    return min((n for n in names if n in bench.runs), key=lambda n: bench.runs[n].seconds_per_step)


def compare(sec: Section, bench: Bench, label: str, ours: str, references: tuple[str, ...]) -> None:
    bench.run_pair(ours, *references)
    ref = fastest_reference(bench, references)
    a, b = bench.run(ours), bench.run(ref)
    spread = bench.spread(ours, ref)
    for unit, x, y in (("examples/s", a.examples_per_s, b.examples_per_s), ("real tokens/s", a.tokens_per_s, b.tokens_per_s)):
        ratio = x / y
        sec.add(f"{label}: {unit} (vs {REFERENCE_NAMES[ref]})", fmt(x, unit), fmt(y, unit), ratio, ">= 1.25x", ratio >= 1.25)
    # If both sides spent the same time per computed position, the ratio would be that of computed positions
    # per trained token: 1 / (1 - padding share) on each side (GradCache's second pass is on both sides).
    predicted = (1 - a.padding_share) / (1 - b.padding_share)
    others = [f"{REFERENCE_NAMES[n]} {bench.runs[n].seconds_per_step:.2f} s/step" for n in references if n != ref]
    sec.notes.append(
        f"{label}: per alternating repeat, reference / ours = {', '.join(f'{r:.2f}x' for r in spread)}; padding "
        f"alone predicts {predicted:.2f}x (padding {a.padding_share:.1%} vs {b.padding_share:.1%} of computed positions)"
        + (f"; the reference's other setting: {'; '.join(others)} (ours {a.seconds_per_step:.2f} s/step)." if others else ".")
    )


def section_training(bench: Bench) -> Section:
    s = bench.settings
    real = bench.real()
    sec = Section(1, "Training throughput: E5Trainer vs SentenceTransformerTrainer at its fastest")
    for b, shape in ((bench, bench.label), (real, real.label)):
        compare(sec, b, f"{shape}, plain", "e5", PAIRS["e5"])
        references = PAIRS["e5_gradcache"] if b is bench else (fastest_reference(bench, PAIRS["e5_gradcache"]),)
        compare(sec, b, f"{shape}, GradCache {s.mini_batch_tokens} tokens", "e5_gradcache", references)
        compare(sec, b, f"{shape}, plain, padding-free", "e5_packed", PAIRS["e5_packed"])
        # against the same reference as GradCache above, the faster CachedMNRL setting
        compare(sec, b, f"{shape}, GradCache {s.mini_batch_tokens} tokens, padding-free", "e5_gradcache_packed",
                (fastest_reference(bench, PAIRS["e5_gradcache"]),))
    sec.notes.append(
        f"{bench.label} model: {bench.batch} rows per step (query with instruction, positive, 1 hard negative), every text "
        f"truncated to {bench.max_length} tokens, {s.warmup_steps} warm-up step(s) then {bench.steps} timed, "
        f"{s.repeats} alternating repeats. {real.describe()}: {real.batch} rows, "
        f"{real.max_length} tokens, {real.steps} timed steps, {s.real_repeats} repeats. Both: temperature {TEMPERATURE} "
        f"(scale {1 / TEMPERATURE:g}), fused AdamW (`adamw_torch_fused`, both trainers' default) lr 1e-5, full "
        "fine-tuning, fp32; the time runs from the end of the last warm-up step to the end of the last step, so it "
        "includes data loading, collation (tokenisation) and the optimizer. Each side's fastest repeat counts."
    )
    sec.notes.append(
        f"sentence-transformers at its fastest: for GradCache, CachedMultipleNegativesRankingLoss ran both with its "
        f"token budget (`mini_batch_num_tokens={s.mini_batch_tokens}`, real tokens per mini-batch) and with "
        f"`mini_batch_size={s.mini_batch}` (the same memory bound: {s.mini_batch} x {bench.max_length} tokens), and the faster "
        "one is the reference (on the SmolLM2 shape, the one that was faster on the smaller model). Ours: "
        f"`mini_batch_positions={s.mini_batch_tokens}` (padded positions per forward, a stricter bound; with "
        "padding-free, tokens per packed forward, CachedMNRL's own bound). "
        "Plain MultipleNegativesRankingLoss has no option for varied lengths (its unpadded inputs need flash "
        "attention, which this CPU has not); ours cuts length-sorted chunks (`chunk_positions`, default 2048)."
    )
    sec.notes.append("Real tokens = attended tokens of each text, counted once per step by a hook on the backbone.")
    return sec
