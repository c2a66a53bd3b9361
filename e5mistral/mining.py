"""Hard-negative mining, as the recipe does for public sets that come without negatives.

For every (query, positive) row: embed the query (with its instruction) and a corpus (bare), rank
the corpus with the exact block-bounded search of :mod:`e5mistral.evaluation.retrieval`, remove
the row's known positives (by corpus id and by identical text, and the query's own text), and draw
``num_negatives`` documents from the rank window ``[rank_start, rank_end)`` of what remains. The
top ranks are skipped on purpose: near the top, "negatives" are often unlabelled positives.

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
```
"""

from __future__ import annotations

import hashlib
import json
import logging
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
        rank_start: first rank of the window, 0-based, counted after the positives are removed
            (ranks below it are skipped as likely false negatives).
        rank_end: end of the window (exclusive).
        num_negatives: negatives drawn per row (the recipe trains with 1).
        seed: the draw of row i is seeded by (seed, i).
        block_size: corpus documents embedded and scored at once.
        chunk_size: rows embedded and searched at once; also the unit of resumption.
    """

    rank_start: int = 30
    rank_end: int = 100
    num_negatives: int = 1
    seed: int = 0
    block_size: int = 16384
    chunk_size: int = 4096

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


@dataclass
class MiningStats:
    rows: int = 0
    rows_resumed: int = 0
    rows_short: int = 0  # rows mined in this call whose window held fewer than num_negatives candidates
    corpus_size: int = 0


def _fingerprint(rows: Sequence[Mapping], corpus: Sequence[str], config: MiningConfig, extra: Mapping) -> str:
    """Identify a run, so that a resume with other inputs or settings is refused."""
    h = hashlib.sha256()
    h.update(json.dumps({**asdict(config), "chunk_size": None, **extra}, sort_keys=True).encode())
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
        excluded = []
        for offset, row in enumerate(chunk):
            ids = set(by_text.get(row["positive"], ())) | set(by_text.get(row["query"], ()))
            if positive_ids is not None:
                ids |= set(positive_ids[start + offset])
            excluded.append(ids)
        top_k = min(len(corpus), config.rank_end + max(len(ids) for ids in excluded))  # enough after exclusion
        q = _embed_queries(embedder, [row["query"] for row in chunk], instructions)  # (C, D)
        if device is not None:
            q = q.to(device)  # exact_search moves each corpus block to the queries' device
        _, ranked = exact_search(
            q, _blocks(emb, config.block_size), top_k=top_k, block_size=config.block_size
        )  # (C, top_k)
        lines = []
        for offset, (row, row_ranked, ids) in enumerate(zip(chunk, ranked.tolist(), excluded)):
            candidates = [j for j in row_ranked if j not in ids][config.rank_start : config.rank_end]
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
