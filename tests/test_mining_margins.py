"""Positive-aware mining (margins, TopK-PercPos) and top-k sampling, against sentence-transformers
6.2+'s `mine_hard_negatives` on identical embeddings and against a brute-force full-matrix oracle."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from packaging.version import Version

from e5mistral.cli import mine
from e5mistral.mining import MiningConfig, mine_hard_negatives

st = pytest.importorskip("sentence_transformers")
tokenizers = pytest.importorskip("tokenizers")

NUM_QUERIES, NUM_DOCS, DIM = 14, 60, 12
# sentence-transformers 6.3 retrieves one more candidate per query than 6.2 (room to drop a document equal to the
# query's own text, which this corpus never holds), so with a margin its pool is one document deeper: the
# margin's survivors among range_max + 1 documents. Ours with rank_end + 1 is then that pool.
ST_POOL_EXTRA = int(Version(st.__version__).release[:2] >= (6, 3))


def _fixed_model(seed=0):
    """A real SentenceTransformer whose "texts" are single tokens (q0.., d0..) mapped to fixed vectors.

    `StaticEmbedding` averages the token vectors of a text: one token, so the text's vector itself.
    Documents are placed around the queries so that, for each query, a few documents outscore its positive.
    """
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    g = torch.Generator().manual_seed(seed)
    queries = torch.nn.functional.normalize(torch.randn(NUM_QUERIES, DIM, generator=g), dim=-1)
    owner = torch.arange(NUM_DOCS) % NUM_QUERIES  # each document is a noisy copy of one query
    docs = queries[owner] + 0.9 * torch.randn(NUM_DOCS, DIM, generator=g)
    texts = [f"q{i}" for i in range(NUM_QUERIES)] + [f"d{j}" for j in range(NUM_DOCS)]
    vocab = {t: i for i, t in enumerate(texts)} | {"[UNK]": len(texts)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    weights = torch.cat([queries, docs, torch.zeros(1, DIM)])
    model = st.SentenceTransformer(
        modules=[StaticEmbedding(tok, embedding_weights=weights)], device="cpu", similarity_fn_name="dot"
    )
    return model


class STEmbedder:
    """The same model behind the project's embedder interface: both miners see identical vectors."""

    def __init__(self, model):
        self.model = model

    def encode_queries(self, queries, instruction=None, **kwargs):
        return self.model.encode_query(list(queries), convert_to_tensor=True, normalize_embeddings=True)

    def encode_documents(self, documents, **kwargs):
        return self.model.encode_document(list(documents), convert_to_tensor=True, normalize_embeddings=True)


def _rows_and_corpus(embedder, positive_rank_max=6, seed=1):
    """Each query's positive is the document it ranks at a (seeded) rank in [0, positive_rank_max]."""
    corpus = [f"d{j}" for j in range(NUM_DOCS)]
    q = embedder.encode_queries([f"q{i}" for i in range(NUM_QUERIES)])
    d = embedder.encode_documents(corpus)
    order = (q @ d.T).argsort(dim=1, descending=True)
    g = torch.Generator().manual_seed(seed)
    ranks = torch.randint(positive_rank_max + 1, (NUM_QUERIES,), generator=g)
    rows = [{"query": f"q{i}", "positive": corpus[order[i, ranks[i]]]} for i in range(NUM_QUERIES)]
    return rows, corpus, q @ d.T


def _brute_force(scores, rows, corpus, config):
    """Full score matrix: the rank_end best but the positive, less the margin's victims, less the first
    rank_start; then the top n."""
    out = []
    for i, row in enumerate(rows):
        p = corpus.index(row["positive"])
        pos = scores[i, p]
        keep = []
        pool = [j for j in scores[i].argsort(descending=True).tolist() if j != p][: config.rank_end]
        for j in pool:
            s = scores[i, j]
            if config.absolute_margin is not None and s + config.absolute_margin > pos:
                continue
            if config.relative_margin is not None and s > pos - pos.abs() * config.relative_margin:
                continue
            if config.positive_share is not None and s > pos * config.positive_share:
                continue
            keep.append(corpus[j])
        out.append(keep[config.rank_start :][: config.num_negatives])
    return out


def _assert_not_degenerate(scores, config, rows, corpus):
    """No two scores of a query and no score and threshold closer than 1e-5: float rounding
    differences between the two code paths cannot decide anything, so equality is exact."""
    for i, row in enumerate(rows):
        s = scores[i].sort().values
        assert (s[1:] - s[:-1]).min() > 1e-5
        pos = scores[i, corpus.index(row["positive"])]
        thresholds = []
        if config.absolute_margin is not None:
            thresholds.append(pos - config.absolute_margin)
        if config.relative_margin is not None:
            thresholds.append(pos - pos.abs() * config.relative_margin)
        if config.positive_share is not None:
            thresholds.append(pos * config.positive_share)
        others = torch.cat([scores[i, : corpus.index(row["positive"])], scores[i, corpus.index(row["positive"]) + 1 :]])
        for t in thresholds:  # (the positive itself is excluded, whatever its distance)
            assert (others - t).abs().min() > 1e-5


def _mine(embedder, rows, corpus, config, path):
    stats = mine_hard_negatives(embedder, rows, corpus, path, config)
    return [json.loads(line)["negatives"] for line in path.read_text().splitlines()], stats


CASES = [  # (range_min, range_max, num_negatives, absolute_margin, relative_margin, rows short: True / unchecked)
    (0, 12, 3, 0.0, None, None),  # negatives must score below the positive
    (2, 14, 3, 0.05, None, None),
    (1, 14, 4, None, 0.05, None),  # NV-Retriever's TopK-PercPos 95%
    (0, 12, 2, 0.02, 0.1, None),  # both margins at once
    (2, 8, 4, 0.0, None, True),  # the margin eats into the pool: rows come out short, in both
    (3, NUM_DOCS, 5, None, 0.3, None),  # the whole corpus as the pool
    (4, 15, 3, None, None, None),  # no margin: the plain window with top-k sampling
]


@pytest.mark.parametrize("range_min,range_max,num_negatives,absolute_margin,relative_margin,short", CASES)
def test_same_negatives_as_sentence_transformers(
    tmp_path, range_min, range_max, num_negatives, absolute_margin, relative_margin, short
):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives as st_mine

    model = _fixed_model()
    embedder = STEmbedder(model)
    rows, corpus, scores = _rows_and_corpus(embedder)
    config = MiningConfig(
        rank_start=range_min, rank_end=range_max, num_negatives=num_negatives, sampling="top",
        absolute_margin=absolute_margin, relative_margin=relative_margin, block_size=7, chunk_size=5,
    )  # fmt: skip
    _assert_not_degenerate(scores, config, rows, corpus)

    ours, stats = _mine(embedder, rows, corpus, config, tmp_path / "ours.jsonl")
    theirs_ds = st_mine(
        Dataset.from_dict({"query": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]}),
        model, corpus=corpus, range_min=range_min, range_max=range_max, num_negatives=num_negatives,
        absolute_margin=absolute_margin, relative_margin=relative_margin, sampling_strategy="top",
        output_format="labeled-list", verbose=False,
    )  # fmt: skip
    # labeled-list: one row per query with negatives found, "positive" = [positive, negative_1, ...]
    theirs = {row["query"]: row["positive"][1:] for row in theirs_ds}
    assert all(theirs_ds[i]["positive"][0] == rows[[r["query"] for r in rows].index(q)]["positive"]
               for i, q in enumerate(theirs_ds["query"]))  # fmt: skip
    if ST_POOL_EXTRA and config.positive_aware:
        ours_as_st, _ = _mine(embedder, rows, corpus, replace(config, rank_end=range_max + 1), tmp_path / "st.jsonl")
    else:
        ours_as_st = ours
    assert ours_as_st == [theirs.get(row["query"], []) for row in rows]  # same documents, same order
    assert ours == _brute_force(scores, rows, corpus, config)
    assert stats.rows_short == sum(len(n) < num_negatives for n in ours)
    if absolute_margin is not None or relative_margin is not None:
        plain = _brute_force(scores, rows, corpus, MiningConfig(range_min, range_max, num_negatives))
        assert stats.margin_dropped > 0 and ours != plain  # the margin changed what was mined
    if short:
        assert stats.rows_short > 0  # the short rows match too


def test_positive_share_keeps_scores_up_to_a_share_of_the_positive(tmp_path):
    embedder = STEmbedder(_fixed_model(seed=3))
    rows, corpus, scores = _rows_and_corpus(embedder, seed=4)
    config = MiningConfig(rank_start=1, rank_end=10, num_negatives=3, sampling="top", positive_share=0.9)
    _assert_not_degenerate(scores, config, rows, corpus)
    ours, stats = _mine(embedder, rows, corpus, config, tmp_path / "o.jsonl")
    assert ours == _brute_force(scores, rows, corpus, config)
    assert stats.margin_dropped > 0
    for row, negatives in zip(rows, ours):
        i, p = int(row["query"][1:]), corpus.index(row["positive"])
        assert all(scores[i, corpus.index(n)] <= 0.9 * scores[i, p] for n in negatives)


def test_positive_outside_the_corpus_is_embedded_for_its_score(tmp_path):
    """A positive that is not a corpus document: its score is still the margin's reference."""
    embedder = STEmbedder(_fixed_model(seed=5))
    rows, corpus, scores = _rows_and_corpus(embedder, seed=6)
    config = MiningConfig(rank_start=0, rank_end=10, num_negatives=3, sampling="top", absolute_margin=0.01)
    positives = {row["positive"] for row in rows}
    reduced = [c for c in corpus if c not in positives]
    ours, stats = _mine(embedder, rows, reduced, config, tmp_path / "reduced.jsonl")
    expected = []
    for i, row in enumerate(rows):
        pos = scores[i, corpus.index(row["positive"])]  # the positive's score, from the full matrix
        pool = sorted(reduced, key=lambda d: -scores[i, corpus.index(d)])[: config.rank_end]
        expected.append([d for d in pool if not scores[i, corpus.index(d)] + 0.01 > pos][: config.num_negatives])
    assert ours == expected and stats.margin_dropped > 0


def test_random_sampling_is_the_default_and_seeded(tmp_path):
    embedder = STEmbedder(_fixed_model())
    rows, corpus, scores = _rows_and_corpus(embedder)
    assert MiningConfig().sampling == "random"
    config = MiningConfig(rank_start=2, rank_end=20, num_negatives=3, seed=7, relative_margin=0.05)
    a, _ = _mine(embedder, rows, corpus, config, tmp_path / "a.jsonl")
    b, _ = _mine(embedder, rows, corpus, config, tmp_path / "b.jsonl")
    window = _brute_force(scores, rows, corpus, MiningConfig(2, 20, 18, relative_margin=0.05))
    assert a == b and all(set(n) <= set(w) and len(n) == 3 for n, w in zip(a, window))
    top = _brute_force(scores, rows, corpus, MiningConfig(2, 20, 3, relative_margin=0.05))
    assert a != top  # a draw from the window, not its head


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--relative-margin", "-0.1"], "error: invalid mining settings: relative_margin=-0.1 must be >= 0"),
        (["--positive-share", "0"], "error: invalid mining settings: positive_share=0.0 must be > 0"),
        (["--absolute-margin", "nan"], "error: invalid mining settings: absolute_margin=nan must be a finite number."),
    ],
)
def test_bad_margins_are_one_error_line(tmp_path, capsys, flags, message):
    argv = ["--model", str(tmp_path / "unused"), "--pairs", str(tmp_path / "unused.jsonl"),
            "--output", str(tmp_path / "o.jsonl"), *flags]  # fmt: skip
    assert mine.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_script_passes_the_options_through(tiny_folder, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    words = ["amber basil", "cedar delta", "ember fjord", "grove heron", "indigo juniper", "kelp lilac", "maple onyx"]
    pairs.write_text("".join(json.dumps({"query": w, "positive": f"{w} and more {w}"}) + "\n" for w in words))
    out = tmp_path / "mined.jsonl"
    argv = ["--model", str(tiny_folder), "--pairs", str(pairs), "--output", str(out), "--rank-start", "0",
            "--rank-end", "5", "--sampling", "top", "--absolute-margin", "0.0"]  # fmt: skip
    mine.run(argv)
    state = json.loads((tmp_path / "mined.jsonl.mining" / "state.json").read_text())
    assert state["config"]["sampling"] == "top" and state["config"]["absolute_margin"] == 0.0
    assert "candidates dropped by the margin" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == len(words)
