"""Hard-negative mining, as the recipe does for public sets that come without negatives.

For every (query, positive) row: embed the query (with its instruction) and a corpus (bare), rank
the corpus with the exact block-bounded search of :mod:`e5mistral.evaluation.retrieval`, remove
the row's known positives (by corpus id and by identical text, and the query's own text), and draw
``num_negatives`` documents from the rank window ``[rank_start, rank_end)`` of what remains. The
top ranks are skipped on purpose: near the top, "negatives" are often unlabelled positives.

Positive-aware mining (NV-Retriever, arXiv:2407.15831), off by default. With a margin set, the
window is counted the way ``sentence_transformers.util.mine_hard_negatives`` (6.2) counts its
``range_min``/``range_max``. The pool is the ``rank_end`` best documents once the positives are
removed. The margin takes out of the pool the candidates that score too close to the positive, and
the first ``rank_start`` of what is left are skipped. So a wide margin leaves a row short rather
than reaching deeper than ``rank_end``. The margins are compared as sentence-transformers compares
them, in float32:

- ``absolute_margin`` drops ``score + margin > positive_score``;
- ``relative_margin`` drops ``score > positive_score - |positive_score| * margin``;
- ``positive_share`` (TopK-PercPos) keeps ``score <= share * positive_score``.

``positive_score`` is the lowest score among the row's positives (its own and ``positive_ids``),
because sentence-transformers takes the hardest positive. ``sampling`` picks the negatives:
``"random"`` (the recipe; seeded) or ``"top"`` (the best-ranked of the window, as NV-Retriever's
TopK). Without a margin the window is ranks ``[rank_start, rank_end)``, as before. One
difference: sentence-transformers' pool is the ``range_max + max_positives`` best documents,
positives included, where ``max_positives`` is the most positives any query has. That is the same
pool for a query with that many positives, all of them in it; a query with fewer gets a slightly
deeper pool there. From 6.3 on it retrieves one document more (room to drop the query's own text),
so where the query's text is not in the corpus, its pool under a margin is one document deeper.

Resumable and bounded in memory. The work folder ``<output>.mining/`` holds the corpus
embeddings as a float32 ``.npy`` memory map, filled block by block, and ``state.json``. Rows
are mined in chunks; after each chunk the rows are appended to ``output`` (JSON lines), flushed
to disk, and the state records the file's length. A killed run restarted with the same arguments
truncates any half-written chunk and continues; its result is identical to an uninterrupted run
(each row's sample is seeded by ``(seed, row index)``). Memory: one block of corpus embeddings,
one chunk of query embeddings and a ``(chunk, top_k + block)`` score tile.

Output rows follow the training schema: ``query``, ``positive``, ``negatives`` (the row's own
negatives, if any, then the mined ones), ``instruction``, ``task``, ``language``.

Example:

```python
>>> from e5mistral import E5Embedder
>>> embedder = E5Embedder.from_pretrained("out/my-e5")
>>> rows = [{"query": "capital of france", "positive": "Paris is the capital of France."}, ...]
>>> corpus = sorted({row["positive"] for row in rows})
>>> mine_hard_negatives(embedder, rows, corpus, "mined.jsonl", MiningConfig(rank_start=10, rank_end=50),
...                     instruction="question_answering", task="my_qa", language="en")
>>> # NV-Retriever's TopK-PercPos (95%): the 4 best candidates scoring at most 95% of the positive
>>> topk = MiningConfig(rank_start=0, rank_end=50, num_negatives=4, sampling="top", relative_margin=0.05)
>>> mine_hard_negatives(embedder, rows, corpus, "mined_topk.jsonl", topk, instruction="question_answering")
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .evaluation.retrieval import Embedder, exact_search
from .instructions import get_instruction

__all__ = ["MiningConfig", "MiningStats", "mine_hard_negatives"]

logger = logging.getLogger(__name__)


@dataclass
class MiningConfig:
    """How negatives are drawn.

    Attributes:
        rank_start: first rank of the window, 0-based, counted after the positives (and a
            margin's victims) are removed; ranks below it are skipped as likely false negatives.
        rank_end: end of the window (exclusive), counted after the positives are removed; with a
            margin, the pool the margin removes from.
        num_negatives: negatives drawn per row (the recipe trains with 1).
        seed: the draw of row i is seeded by (seed, i).
        block_size: corpus documents embedded and scored at once.
        chunk_size: rows embedded and searched at once; also the unit of resumption.
        sampling: ``"random"`` (draw from the window, seeded; the recipe) or ``"top"`` (the first
            ``num_negatives`` of the window).
        absolute_margin: drop candidates with ``score + absolute_margin > positive_score``.
        relative_margin: drop candidates with ``score > positive_score - |positive_score| * relative_margin``.
        positive_share: keep only candidates with ``score <= positive_share * positive_score``.

    Example:
        >>> MiningConfig(rank_start=0, rank_end=50, num_negatives=4, sampling="top", relative_margin=0.05).sampling
        'top'
    """

    rank_start: int = 30
    rank_end: int = 100
    num_negatives: int = 1
    seed: int = 0
    block_size: int = 16384
    chunk_size: int = 4096
    sampling: str = "random"
    absolute_margin: float | None = None
    relative_margin: float | None = None
    positive_share: float | None = None

    @property
    def positive_aware(self) -> bool:
        """Whether any margin is set (then positive scores are computed)."""
        return any(m is not None for m in (self.absolute_margin, self.relative_margin, self.positive_share))

    def __post_init__(self):
        if not 0 <= self.rank_start < self.rank_end:
            raise ValueError(
                f"rank window [{self.rank_start}, {self.rank_end}) is empty; need 0 <= rank_start < rank_end."
            )
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives={self.num_negatives} must be >= 1.")
        if self.num_negatives > self.rank_end - self.rank_start:
            raise ValueError(
                f"num_negatives={self.num_negatives} exceeds the window size {self.rank_end - self.rank_start}; widen the window."
            )
        if self.block_size < 1 or self.chunk_size < 1:
            raise ValueError(f"block_size={self.block_size} and chunk_size={self.chunk_size} must be >= 1.")
        if self.sampling not in ("random", "top"):
            raise ValueError(f"sampling={self.sampling!r} is not one of 'random', 'top'.")
        for name in ("absolute_margin", "relative_margin", "positive_share"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name}={value} must be a finite number.")
        if self.relative_margin is not None and self.relative_margin < 0:
            raise ValueError(
                f"relative_margin={self.relative_margin} must be >= 0 (0.05: 5% of the positive score below it)."
            )
        if self.positive_share is not None and self.positive_share <= 0:
            raise ValueError(
                f"positive_share={self.positive_share} must be > 0 (0.95 keeps scores <= 95% of the positive's)."
            )


_NEW_FIELDS = {"sampling": "random", "absolute_margin": None, "relative_margin": None, "positive_share": None}


@dataclass
class MiningStats:
    rows: int = 0
    rows_resumed: int = 0
    rows_short: int = 0  # rows mined in this call whose window held fewer than num_negatives candidates
    corpus_size: int = 0
    margin_dropped: int = 0  # candidates (rows mined in this call) removed for scoring too close to the positive


def _fingerprint(rows: Sequence[Mapping], corpus: Sequence[str], config: MiningConfig, extra: Mapping) -> str:
    """Identify a run, so that a resume with other inputs or settings is refused."""
    h = hashlib.sha256()
    settings = {k: v for k, v in asdict(config).items() if k not in _NEW_FIELDS or v != _NEW_FIELDS[k]}
    # (options added later enter only when set, so a run started before they existed still resumes)
    h.update(json.dumps({**settings, "chunk_size": None, **extra}, sort_keys=True).encode())
    h.update(f"{len(rows)}:{len(corpus)}".encode())
    for row in (rows[0], rows[len(rows) // 2], rows[-1]):
        h.update(json.dumps([row.get("query"), row.get("positive")]).encode())
    for text in (corpus[0], corpus[len(corpus) // 2], corpus[-1]):
        h.update(text.encode())
    return h.hexdigest()[:16]


def _write_json_atomic(path: Path, content: Mapping) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=2))
    os.replace(tmp, path)


def _embed_corpus(embedder: Embedder, corpus: Sequence[str], work: Path, block_size: int, state: dict) -> np.memmap:
    """Fill `work/corpus_embeddings.npy` block by block, resuming from state["corpus_embedded"]."""
    path = work / "corpus_embeddings.npy"
    done = state.get("corpus_embedded", 0)
    emb = np.load(path, mmap_mode="r+") if path.exists() and done > 0 else None
    for start in range(done, len(corpus), block_size):
        block = embedder.encode_documents(list(corpus[start : start + block_size]))  # (B, D)
        if emb is None:
            emb = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(corpus), block.shape[1]))
        emb[start : start + block.shape[0]] = block.float().cpu().numpy()
        emb.flush()
        state["corpus_embedded"] = start + block.shape[0]
        _write_json_atomic(work / "state.json", state)
        logger.info("embedded %d / %d corpus documents", state["corpus_embedded"], len(corpus))
    return np.load(path, mmap_mode="r")


def _blocks(emb: np.ndarray, block_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, emb.shape[0], block_size):
        yield torch.from_numpy(np.array(emb[start : start + block_size]))  # (B, D), a copy read from disk


def _embed_queries(embedder: Embedder, queries: Sequence[str], instructions: Sequence[str]) -> torch.Tensor:
    """Embed queries grouped by instruction (rows may carry different ones); input order kept."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, instruction in enumerate(instructions):
        groups[instruction].append(i)
    out = None
    for instruction, idx in groups.items():
        emb = embedder.encode_queries([queries[i] for i in idx], instruction=instruction or None)  # (n, D)
        if out is None:
            out = torch.empty(len(queries), emb.shape[1])
        out[idx] = emb.float().cpu()
    return out  # (C, D)


def _margin_mask(config: MiningConfig, scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """`(C, k)` True where a candidate scores too close to the row's positive score `(C,)`.

    The comparisons are those of sentence-transformers, in the scores' dtype.
    """
    removed = torch.zeros_like(scores, dtype=torch.bool)
    pos = positive.to(scores.dtype).unsqueeze(1)  # (C, 1)
    if config.absolute_margin is not None:
        removed |= scores + config.absolute_margin > pos
    if config.relative_margin is not None:
        removed |= scores > pos - pos.abs() * config.relative_margin
    if config.positive_share is not None:
        removed |= scores > pos * config.positive_share
    return removed


def _positive_scores(
    embedder: Embedder, emb: np.ndarray, q: torch.Tensor, chunk: Sequence[Mapping], positives: Sequence[set[int]],
    corpus_index: Mapping[str, Sequence[int]],
) -> torch.Tensor:
    """`(C,)` the lowest score of each row's positives: its corpus positives and its own text (embedded if absent)."""
    missing = sorted({row["positive"] for row in chunk if row["positive"] not in corpus_index})
    extra = dict(zip(missing, embedder.encode_documents(missing).float().cpu())) if missing else {}
    out = torch.empty(len(chunk))
    for i, (row, ids) in enumerate(zip(chunk, positives)):
        vectors = [torch.from_numpy(np.array(emb[sorted(ids)]))] if ids else []
        if row["positive"] in extra:
            vectors.append(extra[row["positive"]].unsqueeze(0))
        p = torch.cat(vectors).to(q.device, q.dtype)  # (P, D)
        out[i] = (q[i].unsqueeze(0) * p).sum(-1).min()  # as sentence-transformers' pairwise dot score
    return out


def _window_candidates(
    config: MiningConfig, q: torch.Tensor, emb: np.ndarray, excluded: Sequence[set[int]],
    positive: torch.Tensor | None,
) -> tuple[list[list[int]], list[int]]:
    """Per row: the window's corpus indices, best first, and how many candidates the margins removed.

    The pool is the ``rank_end`` best documents once the row's positives are removed; the margins
    remove candidates from it; the window is what is left, less its first ``rank_start``.
    """
    top_k = min(emb.shape[0], config.rank_end + max(len(ids) for ids in excluded))  # enough after exclusion
    scores, ranked = exact_search(q, _blocks(emb, config.block_size), top_k=top_k, block_size=config.block_size)
    if positive is not None:
        removed = _margin_mask(config, scores, positive.to(scores.device)).tolist()  # (C, k)
    else:
        removed = [[False] * scores.shape[1]] * scores.shape[0]
    windows, dropped = [], []
    for row_ranked, row_removed, ids in zip(ranked.tolist(), removed, excluded):
        pool = [(j, rem) for j, rem in zip(row_ranked, row_removed) if j not in ids][: config.rank_end]
        kept = [j for j, rem in pool if not rem]
        windows.append(kept[config.rank_start :])
        dropped.append(len(pool) - len(kept))
    return windows, dropped


def mine_hard_negatives(
    embedder: Embedder,
    rows: Sequence[Mapping],
    corpus: Sequence[str],
    output: str | Path,
    config: MiningConfig | None = None,
    *,
    positive_ids: Sequence[Sequence[int]] | None = None,
    instruction: str = "",
    task: str = "",
    language: str = "",
    device: str | torch.device | None = None,
) -> MiningStats:
    """Mine negatives for `rows` from `corpus` and write training rows to `output` (JSON lines).

    Args:
        embedder: :class:`e5mistral.E5Embedder` or anything with ``encode_queries``/``encode_documents``.
        rows: dicts with ``query`` and ``positive``; ``negatives``, ``instruction``, ``task`` and
            ``language`` are kept when present, else filled from the arguments below.
        corpus: document texts to mine from (e.g. all positives of the set, or its corpus).
        output: the JSON-lines file to write; its work folder is ``<output>.mining/``.
        positive_ids: per row, corpus indices that are positives of that query (never drawn);
            identical texts to the row's positive or query are excluded in any case.
        instruction: the query instruction (text or name) for rows without their own.
        device: where scores are computed (e.g. "cuda"); default: the CPU.

    Returns:
        :class:`MiningStats`.
    """
    config = config or MiningConfig()
    if not rows or not corpus:
        raise ValueError(
            f"mine_hard_negatives: got {len(rows)} rows and {len(corpus)} corpus documents; both must be non-empty."
        )
    if positive_ids is not None and len(positive_ids) != len(rows):
        raise ValueError(f"positive_ids has {len(positive_ids)} entries for {len(rows)} rows; give one list per row.")
    for i in (0, len(rows) - 1):
        if "query" not in rows[i] or "positive" not in rows[i]:
            raise ValueError(f"rows[{i}] has keys {sorted(rows[i])}; every row needs 'query' and 'positive'.")
    output = Path(output)
    work = output.with_name(output.name + ".mining")
    work.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(rows, corpus, config, {"instruction": instruction, "task": task, "language": language})
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state and state.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{work} holds a mining run with other inputs or settings (fingerprint {state.get('fingerprint')} != {fingerprint}); "
            "rerun with the same arguments, or delete the folder and the output file to start over."
        )
    state.update(fingerprint=fingerprint, config=asdict(config))
    _write_json_atomic(state_path, state)

    stats = MiningStats(corpus_size=len(corpus), rows_resumed=state.get("rows_done", 0))
    default_instruction = get_instruction(instruction)  # a mistyped name fails before the corpus is embedded
    emb = _embed_corpus(embedder, corpus, work, config.block_size, state)  # (N, D) memory map
    by_text: dict[str, list[int]] = defaultdict(list)
    for j, text in enumerate(corpus):
        by_text[text].append(j)

    rows_done = state.get("rows_done", 0)
    with output.open("ab") as f:
        f.truncate(state.get("output_bytes", 0))  # drop a chunk half-written before a crash
    for start in range(rows_done, len(rows), config.chunk_size):
        chunk = [rows[i] for i in range(start, min(start + config.chunk_size, len(rows)))]
        instructions = [get_instruction(row.get("instruction") or default_instruction) for row in chunk]
        excluded, positives = [], []
        for offset, row in enumerate(chunk):
            ids = set(by_text.get(row["positive"], ()))
            if positive_ids is not None:
                ids |= set(positive_ids[start + offset])
            positives.append(ids)
            excluded.append(ids | set(by_text.get(row["query"], ())))
        q = _embed_queries(embedder, [row["query"] for row in chunk], instructions)  # (C, D)
        if device is not None:
            q = q.to(device)  # exact_search moves each corpus block to the queries' device
        positive = None
        if config.positive_aware:
            positive = _positive_scores(embedder, emb, q, chunk, positives, by_text)
        windows, dropped = _window_candidates(config, q, emb, excluded, positive)
        stats.margin_dropped += sum(dropped)
        lines = []
        for offset, (row, candidates) in enumerate(zip(chunk, windows)):
            if config.sampling == "top":
                picked = list(range(min(config.num_negatives, len(candidates))))
            else:
                rng = random.Random(f"{config.seed}:{start + offset}")
                picked = sorted(rng.sample(range(len(candidates)), min(config.num_negatives, len(candidates))))
            stats.rows_short += len(picked) < config.num_negatives
            own = list(row.get("negatives") or [])
            mined = [corpus[candidates[p]] for p in picked if corpus[candidates[p]] not in own]
            out_row = {
                "query": row["query"],
                "positive": row["positive"],
                "negatives": own + mined,
                "instruction": row.get("instruction") or default_instruction,
                "task": row.get("task") or task,
                "language": row.get("language") or language,
            }
            lines.append(json.dumps(out_row, ensure_ascii=False) + "\n")
        with output.open("ab") as f:
            f.write("".join(lines).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
            state["output_bytes"] = f.tell()
        state["rows_done"] = start + len(chunk)
        _write_json_atomic(state_path, state)
        logger.info("mined %d / %d rows", state["rows_done"], len(rows))
    stats.rows = len(rows)
    return stats
