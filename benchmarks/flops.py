"""Section 2, model FLOP utilisation and padding: 6 x non-embedding parameters x real tokens/s
against a large matrix product measured in the same run, and the share of computed positions that
are padding (goal < 10%), for every training run sections 1 and 3 made.

Example: ``print(section_mfu(bench).text())``.
"""

from __future__ import annotations

from .harness import Section, fmt
from .workload import Bench


def section_mfu(bench: Bench) -> Section:
    s = bench.settings
    sec = Section(2, "Model FLOP utilisation and padding")
    bench.run("e5")  # the others are shown when sections 1 or 3 ran them
    peak = bench.matmul_flops()  # the best of this and the measurement before training
    labels = {"e5": "E5Trainer", "e5_packed": "E5Trainer, padding-free", "st": "ST + MNRL", "e5_gradcache": "E5Trainer, GradCache",
              "e5_gradcache_packed": "E5Trainer, GradCache, padding-free",
              "st_cached": "ST + CachedMNRL (token budget)", "st_cached_rows": "ST + CachedMNRL (rows)"}
    goals = {"e5": 0.55, "e5_gradcache": 0.45}
    benches = [(b, b.label) for b in (bench, bench._real) if b is not None and b.runs]
    for b, shape in benches:
        for name, label in labels.items():
            if name in b.runs:
                achieved = 6 * b.params * b.runs[name].tokens_per_s
                goal = goals.get(name)
                sec.add(f"{shape}, {label}: 6 x N x real tokens/s vs {s.matmul_n}^3 fp32 matmul",
                        fmt(achieved / 1e9, "GFLOP/s"), fmt(peak / 1e9, "GFLOP/s"), achieved / peak,
                        f">= {goal:.2f}x" if goal else "", achieved / peak >= goal if goal else None)
    for b, shape in benches:
        for name, label in labels.items():
            if name in b.runs:
                share = b.runs[name].padding_share
                sec.add(f"{shape}, {label}: padding share of computed positions", f"{share:.1%}", "", None, "< 10%",
                        share < 0.10)
    sizes = "; ".join(f"{shape}: N = {b.params / 1e6:.2f}M" for b, shape in benches)
    sec.notes.append(
        f"N = non-embedding parameters ({sizes}); 6N FLOP per trained token (forward 2N, backward 4N). "
        "Attention's own FLOPs and GradCache's second forward (of all mini-batches but the last) are not counted (model FLOPs, not hardware FLOPs), so the "
        "ratio is the share of the machine's matmul rate that turns into training. The matmul rate is the best of "
        "two 1-second measurements, before the training runs and after them."
    )
    sec.notes.append("Padding share = 1 - attended tokens / (batch x padded length), summed over every forward of the "
                     "measured steps (GradCache's no-grad pass included).")
    return sec
