"""Hard-negative mining: the rank window against a full-matrix oracle, resumption, the script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from e5mistral.cli import mine
from e5mistral.mining import MiningConfig, mine_hard_negatives

WORDS = [
    "amber",
    "basil",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "grove",
    "heron",
    "indigo",
    "juniper",
    "kelp",
    "lilac",
    "maple",
    "nectar",
    "onyx",
    "pearl",
    "quartz",
    "raven",
]


class CountsEmbedder:
    """Word counts as embeddings (exact integer scores); can be told to crash after n query calls."""

    def __init__(self, dim=32, crash_after_query_calls=None):
        self.dim, self.crash_after = dim, crash_after_query_calls
        self.query_calls, self.document_texts = 0, []

    def _embed(self, texts):
        out = torch.zeros(len(texts), self.dim)  # (N, D)
        for i, text in enumerate(texts):
            for word in text.split():
                out[i, sum(map(ord, word)) % self.dim] += 1.0
        return out

    def encode_queries(self, queries, instruction=None, **kwargs):
        if self.crash_after is not None and self.query_calls >= self.crash_after:
            raise RuntimeError("simulated crash")
        self.query_calls += 1
        return self._embed([f"{instruction or ''} {q}" for q in queries])

    def encode_documents(self, documents, **kwargs):
        self.document_texts.extend(documents)
        return self._embed(documents)


def _data(seed=0, num_rows=30, corpus_size=80):
    g = torch.Generator().manual_seed(seed)
    pick = lambda n: " ".join(WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=g).tolist())
    corpus = sorted({pick(6) for _ in range(corpus_size)})
    rows = [
        {"query": pick(3), "positive": corpus[int(torch.randint(len(corpus), (1,), generator=g))]}
        for _ in range(num_rows)
    ]
    if num_rows > 6:
        rows[3]["positive"] = rows[4]["positive"]  # two queries sharing a positive
        rows[5]["negatives"] = ["an own negative"]
        rows[6].update(instruction="Find similar texts", task="other", language="de")
    return rows, corpus


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_negatives_come_from_the_rank_window_of_the_full_ranking(tmp_path):
    rows, corpus = _data()
    config = MiningConfig(rank_start=3, rank_end=9, num_negatives=2, seed=1, block_size=7, chunk_size=8)
    embedder = CountsEmbedder()
    stats = mine_hard_negatives(
        embedder, rows, corpus, tmp_path / "out.jsonl", config, instruction="Retrieve it", task="toy", language="en"
    )
    out = _read(tmp_path / "out.jsonl")
    assert stats.rows == len(rows) == len(out) and stats.rows_short == 0
    d = embedder._embed(corpus)
    for row, got in zip(rows, out):
        assert set(got) == {"query", "positive", "negatives", "instruction", "task", "language"}
        instruction = row.get("instruction", "Retrieve it")
        q = embedder._embed([f"{instruction} {row['query']}"])
        order = (q @ d.T)[0].sort(descending=True, stable=True).indices.tolist()  # oracle: full ranking
        window = [corpus[j] for j in order if corpus[j] not in (row["positive"], row["query"])][3:9]
        own = row.get("negatives", [])
        assert got["negatives"][: len(own)] == own
        mined = got["negatives"][len(own) :]
        assert len(mined) == 2 and set(mined) <= set(window) and row["positive"] not in mined
        assert mined == [t for t in window if t in mined]  # kept in rank order
        assert (got["instruction"], got["task"], got["language"]) == (
            instruction,
            row.get("task", "toy"),
            row.get("language", "en"),
        )


def test_resume_after_a_crash_gives_the_same_file(tmp_path):
    rows, corpus = _data(seed=2, num_rows=40)
    config = MiningConfig(rank_start=2, rank_end=12, num_negatives=3, block_size=10, chunk_size=9)
    mine_hard_negatives(CountsEmbedder(), rows, corpus, tmp_path / "full.jsonl", config, task="t")

    crashing = CountsEmbedder(
        crash_after_query_calls=3
    )  # chunk 1 needs 2 calls (two instructions), chunk 2 one: dies in chunk 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        mine_hard_negatives(crashing, rows, corpus, tmp_path / "resumed.jsonl", config, task="t")
    assert 0 < len(_read(tmp_path / "resumed.jsonl")) < len(rows)
    with (tmp_path / "resumed.jsonl").open("a") as f:
        f.write('{"query": "half a line')  # a chunk cut off mid-write
    again = CountsEmbedder()
    stats = mine_hard_negatives(again, rows, corpus, tmp_path / "resumed.jsonl", config, task="t")
    assert again.document_texts == []  # the corpus embeddings were reused, not recomputed
    assert stats.rows_resumed == 18
    assert (tmp_path / "resumed.jsonl").read_text() == (tmp_path / "full.jsonl").read_text()

    with pytest.raises(ValueError, match="other inputs or settings"):
        mine_hard_negatives(
            CountsEmbedder(),
            rows,
            corpus,
            tmp_path / "resumed.jsonl",
            MiningConfig(rank_start=5, rank_end=12, block_size=10),
        )


def test_corpus_is_embedded_in_blocks_and_windows_beyond_the_corpus_are_reported(tmp_path):
    rows, corpus = _data(seed=3, num_rows=5, corpus_size=12)
    embedder = CountsEmbedder()
    stats = mine_hard_negatives(
        embedder,
        rows,
        corpus,
        tmp_path / "o.jsonl",
        MiningConfig(rank_start=8, rank_end=40, num_negatives=5, block_size=4),
    )
    assert embedder.document_texts == corpus
    assert stats.rows_short > 0  # only ~11 candidates remain: rank 8+ holds fewer than 5


@pytest.mark.parametrize(
    "kwargs",
    [{"rank_start": 5, "rank_end": 5}, {"num_negatives": 0}, {"rank_start": 0, "rank_end": 2, "num_negatives": 3}],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        MiningConfig(**kwargs)


def test_script_on_a_beir_folder_with_the_tiny_model(tiny_folder, tmp_path):
    folder = tmp_path / "toy"
    (folder / "qrels").mkdir(parents=True)
    rows, corpus = _data(seed=4, num_rows=6, corpus_size=30)
    with (folder / "corpus.jsonl").open("w") as f:
        for j, text in enumerate(corpus):
            f.write(json.dumps({"_id": f"d{j}", "title": "", "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps({"_id": f"q{i}", "text": row["query"]}) + "\n")
    with (folder / "qrels" / "train.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i in range(6):
            f.write(f"q{i}\td{i}\t1\nq{i}\td{i + 10}\t1\n")
    out = tmp_path / "mined.jsonl"
    argv = [
        "--model",
        str(tiny_folder),
        "--beir",
        str(folder),
        "--split",
        "train",
        "--instruction",
        "web_search",
        "--task",
        "toy",
        "--language",
        "en",
        "--output",
        str(out),
        "--rank-start",
        "2",
        "--rank-end",
        "6",
        "--block-size",
        "8",
    ]
    stats = mine.run(argv)
    mined = _read(out)
    assert stats.rows == len(mined) == 12
    for i, row in enumerate(mined):
        qid = i // 2
        positives = {corpus[qid], corpus[qid + 10]}
        assert row["positive"] in positives and len(row["negatives"]) == 1 and not set(row["negatives"]) & positives
        assert (
            row["task"] == "toy"
            and row["language"] == "en"
            and row["instruction"].startswith("Given a web search query")
        )


def test_script_on_a_pairs_file_with_renamed_columns(tiny_folder, tmp_path):
    rows, _ = _data(seed=6, num_rows=10, corpus_size=40)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"question": r["query"], "answer": r["positive"]}) + "\n" for r in rows))
    out = tmp_path / "mined.jsonl"
    argv = ["--model", str(tiny_folder), "--pairs", str(pairs), "--query-field", "question", "--positive-field", "answer",
            "--instruction", "question_answering", "--task", "qa", "--language", "en", "--output", str(out),
            "--rank-start", "1", "--rank-end", "4", "--max-rows", "7"]  # fmt: skip
    stats = mine.run(argv)
    mined = _read(out)
    assert stats.rows == len(mined) == 7 and stats.corpus_size == len({r["positive"] for r in rows})
    for row, got in zip(rows, mined):
        assert got["query"] == row["query"] and got["positive"] == row["positive"]
        assert len(got["negatives"]) == 1 and got["negatives"][0] != row["positive"]
        assert got["negatives"][0] in {r["positive"] for r in rows}  # mined from the pairs' own positives
    with pytest.raises(SystemExit, match="--query-field 'nope'"):
        mine.run([*argv[:4], "--query-field", "nope", "--output", str(tmp_path / "x.jsonl")])
