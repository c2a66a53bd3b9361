"""Exact block-bounded search and the BEIR evaluator against full-matrix oracles."""

from __future__ import annotations

import json

import pytest
import torch

from e5mistral.evaluation.beir import document_text, load_beir
from e5mistral.evaluation.metrics import retrieval_metrics
from e5mistral.evaluation.retrieval import SearchSettings, evaluate_beir, evaluate_retrieval, exact_search, search
from e5mistral.testing import assert_close


def _full_search(q, d, k):
    """Oracle: the whole (Q, N) score matrix, stable sort (ties -> lower corpus index)."""
    scores, idx = (q @ d.T).sort(dim=1, descending=True, stable=True)  # (Q, N)
    return scores[:, :k], idx[:, :k]


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
@pytest.mark.parametrize("top_k", [1, 10, 200])
def test_block_search_equals_full_matrix_search(block_size, top_k):
    g = torch.Generator().manual_seed(block_size * 1000 + top_k)
    q = torch.nn.functional.normalize(torch.randn(13, 16, generator=g), dim=-1)  # (Q, D)
    d = torch.nn.functional.normalize(torch.randn(150, 16, generator=g), dim=-1)  # (N, D)
    scores, idx = exact_search(q, d, top_k=top_k, block_size=block_size)
    ref_scores, ref_idx = _full_search(q, d, top_k)
    assert idx.shape == (13, min(top_k, 150))
    assert torch.equal(idx, ref_idx)
    assert_close(scores, ref_scores, rtol=1e-5)


@pytest.mark.parametrize("block_size", [1, 3, 5, 40])
def test_ties_go_to_lower_corpus_index_whatever_the_blocks(block_size):
    # small integer vectors: dot products are exact, so ties are exact ties in every block layout
    g = torch.Generator().manual_seed(block_size)
    q = torch.randint(-2, 3, (9, 4), generator=g).float()  # (Q, D)
    d = torch.randint(-1, 2, (40, 4), generator=g).float()  # (N, D), many duplicate rows
    scores, idx = exact_search(q, d, top_k=6, block_size=block_size)
    ref_scores, ref_idx = _full_search(q, d, 6)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(scores, ref_scores)


def test_exact_search_takes_lazy_blocks_and_checks_shapes():
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    blocks = (d[i : i + 11] for i in range(0, 50, 11))  # a generator: the corpus is never whole
    _, idx = exact_search(q, blocks, top_k=5)
    assert torch.equal(idx, _full_search(q, d, 5)[1])
    with pytest.raises(ValueError, match="expected \\(B, 8\\)"):
        exact_search(q, torch.randn(10, 7), top_k=2)
    with pytest.raises(ValueError, match="top_k"):
        exact_search(q, d, top_k=0)


def test_exact_search_holds_one_block_at_a_time():
    """When the next block is embedded, the previous block (and its scores) are already freed."""
    import weakref

    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    previous, alive = [], []

    def blocks():
        for start in range(0, 50, 10):
            alive.append(any(ref() is not None for ref in previous))
            block = d[start : start + 10].clone()  # a fresh tensor, as an embedder's block is
            previous.append(weakref.ref(block))
            yield block
            del block

    _, idx = exact_search(q, blocks(), top_k=4)
    assert torch.equal(idx, _full_search(q, d, 4)[1])
    assert alive == [False] * 5


class BagOfWordsEmbedder:
    """A deterministic stand-in for E5Embedder that records what it was asked to embed.

    Embeddings are raw word counts (not normalised): every dot product is an exact integer, so
    equal scores are exact ties in any block layout and the tie rule is tested end to end.
    """

    def __init__(self, dim: int = 64):
        self.dim = dim
        self.calls: list[tuple[str, list[str], str | None]] = []

    def _embed(self, texts):
        out = torch.zeros(len(texts), self.dim)  # (N, D)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, sum(map(ord, word)) % self.dim] += 1.0
        return out

    def encode_queries(self, queries, instruction=None, **kwargs):
        self.calls.append(("query", list(queries), instruction))
        return self._embed([f"{instruction} {q}" if instruction else q for q in queries])

    def encode_documents(self, documents, **kwargs):
        self.calls.append(("document", list(documents), None))
        return self._embed(documents)


def _write_beir(folder, corpus, queries, qrels, header=True):
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for doc_id, doc in corpus.items():
            f.write(json.dumps({"_id": doc_id, **doc}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + "\n")
    with (folder / "qrels" / "test.tsv").open("w") as f:
        if header:
            f.write("query-id\tcorpus-id\tscore\n")
        for qid, judged in qrels.items():
            for doc_id, grade in judged.items():
                f.write(f"{qid}\t{doc_id}\t{grade}\n")
    return folder


WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
    "tau",
]


def _toy_collection(seed=0, num_docs=60, num_queries=12):
    g = torch.Generator().manual_seed(seed)
    pick = lambda n: " ".join(WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=g).tolist())
    corpus = {f"doc{i}": {"title": pick(2) if i % 3 else "", "text": pick(8)} for i in range(num_docs)}
    queries = {f"q{i}": pick(3) for i in range(num_queries)}
    qrels = {
        f"q{i}": {
            f"doc{j}": int(torch.randint(0, 3, (1,), generator=g))
            for j in torch.randperm(num_docs, generator=g)[:3].tolist()
        }
        for i in range(num_queries)
    }
    return corpus, queries, qrels


def test_evaluate_beir_matches_oracle_run_and_instructs_queries_only(tmp_path):
    corpus, queries, qrels = _toy_collection()
    queries["q_unjudged"] = "alpha"  # not in qrels: must not be searched
    folder = _write_beir(tmp_path / "toy", corpus, queries, qrels)
    embedder = BagOfWordsEmbedder()
    result = evaluate_beir(embedder, folder, instruction="Find it", k_values=(1, 5, 10), settings=SearchSettings(block_size=7))

    # Oracle: full matrix of the same embeddings, run built by hand, metrics on that run.
    qids = list(qrels)
    texts = [document_text(corpus[d]) for d in corpus]
    q = embedder._embed([f"Find it {queries[qid]}" for qid in qids])
    d = embedder._embed(texts)
    ref_scores, ref_idx = _full_search(q, d, 10)
    doc_ids = list(corpus)
    oracle_run = {
        qid: {doc_ids[j]: s for s, j in zip(ref_scores[i].tolist(), ref_idx[i].tolist())} for i, qid in enumerate(qids)
    }
    assert result.run.keys() == oracle_run.keys()
    for qid in qids:
        assert list(result.run[qid]) == list(oracle_run[qid])
        assert list(result.run[qid].values()) == pytest.approx(list(oracle_run[qid].values()), rel=1e-6, abs=1e-12)
    assert result.metrics == pytest.approx(retrieval_metrics(oracle_run, qrels, (1, 5, 10)), rel=1e-9, abs=1e-12)
    assert result.num_queries == len(qrels) and result.num_documents == len(corpus)

    query_calls = [c for c in embedder.calls if c[0] == "query"]
    doc_calls = [c for c in embedder.calls if c[0] == "document"]
    assert (
        len(query_calls) == 1
        and query_calls[0][2] == "Find it"
        and sorted(query_calls[0][1]) == sorted(queries[qid] for qid in qrels)
    )
    assert [len(c[1]) for c in doc_calls] == [7] * 8 + [4]  # 60 documents in blocks of 7, uninstructed
    assert [text for c in doc_calls for text in c[1]] == texts


def test_block_size_does_not_change_results(tmp_path):
    corpus, queries, qrels = _toy_collection(seed=3)
    folder = _write_beir(tmp_path / "toy", corpus, queries, qrels, header=False)
    small = evaluate_beir(BagOfWordsEmbedder(), folder, instruction=None, settings=SearchSettings(block_size=4))
    large = evaluate_beir(BagOfWordsEmbedder(), folder, instruction=None, settings=SearchSettings(block_size=10_000))
    assert small.run.keys() == large.run.keys()
    for qid in small.run:
        assert list(small.run[qid]) == list(large.run[qid])
    assert small.metrics == pytest.approx(large.metrics)


def test_ignore_identical_ids():
    corpus = {"a": "alpha beta", "b": "alpha gamma", "c": "delta"}
    skip_own = SearchSettings(ignore_identical_ids=True)
    run = search(BagOfWordsEmbedder(), {"a": "alpha beta"}, corpus, None, top_k=2, settings=skip_own)
    assert list(run["a"]) == ["b", "c"]
    run = search(BagOfWordsEmbedder(), {"a": "alpha beta"}, corpus, None, top_k=2)
    assert list(run["a"]) == ["a", "b"]
