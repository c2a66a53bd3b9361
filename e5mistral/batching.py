"""Cutting length-sorted texts into forward passes that compute little padding.

Shared by training (the plain step's chunks, :func:`e5mistral.training.gradcache.embed_length_sorted`)
and encoding (:class:`e5mistral.E5Embedder`'s batches).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

__all__ = ["plan_chunks"]


def plan_chunks(
    lengths: Sequence[int], max_positions: int, overhead: int | None = None, max_rows: int | None = None
) -> list[range]:
    """Cut rows sorted longest first into contiguous chunks that compute the fewest positions.

    A chunk ``rows[i:j]`` costs ``(j - i) * lengths[i]`` padded positions (it is trimmed to its
    longest, first, row) plus ``overhead`` positions for the forward itself (kernel launches,
    per-layer work, accumulating each weight's gradient), and holds at most ``max_positions``
    padded positions and ``max_rows`` rows, unless it is a single row. Dynamic programming over the cut points finds
    the cheapest plan exactly; the overhead keeps it from spending one forward per distinct length.

    Args:
        lengths: attended tokens per row, in non-increasing order.
        max_positions: the most padded positions per chunk (rows x longest text).
        overhead: the cost of one more forward, in positions; ``max_positions // 32`` by default
            (64 for 2048: about what a forward and backward of a few rows costs on a CPU, measured
            with the benchmark's 4 x 512 model).
        max_rows: the most rows per chunk (None: no limit but ``max_positions``).

    Returns:
        Row ranges covering ``range(len(lengths))`` in order.

    Example:
        >>> plan_chunks([100, 98, 97, 20, 18, 5], max_positions=400, overhead=8)
        [range(0, 3), range(3, 5), range(5, 6)]
    """
    n = len(lengths)
    if any(a < b for a, b in pairwise(lengths)):
        raise ValueError("plan_chunks: lengths must be sorted longest first.")
    overhead = max_positions // 32 if overhead is None else overhead
    best = [0] + [float("inf")] * n  # best[j]: cheapest plan of rows[:j]
    cut = [0] * (n + 1)  # cut[j]: where the last chunk of that plan begins
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):  # the last chunk is rows[i:j], as wide as lengths[i]
            positions = (j - i) * lengths[i]
            if j - i > 1 and (positions > max_positions or (max_rows is not None and j - i > max_rows)):
                break  # going further back only adds rows and width
            cost = best[i] + positions + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append(range(cut[j], j))
        j = cut[j]
    return chunks[::-1]
