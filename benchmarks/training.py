"""Section 1, training throughput: ``E5Trainer`` against ``SentenceTransformerTrainer`` with
(Cached)MultipleNegativesRankingLoss, plain and with GradCache. Goal >= 1.25x.

Example: ``print(section_training(Bench(QUICK, work, threads=1)).text())``.
"""

from __future__ import annotations

from .harness import TEMPERATURE, Section, fmt
from .workload import Bench


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
