"""The MTEB wrapper: local custom tasks through `mteb.evaluate` agree with the project's evaluators."""

from __future__ import annotations

from typing import Any

import mteb
import pytest
import torch
from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from e5mistral.evaluation.mteb import E5MtebEncoder, e5_model_meta
from e5mistral.evaluation.beir import document_text
from e5mistral.evaluation.retrieval import evaluate_retrieval
from e5mistral.evaluation.sts import sts_correlation

_COMMON = {
    "description": "A local toy task for e5mistral tests; nothing is downloaded.",
    "reference": "https://github.com/embeddings-benchmark/mteb",
    "dataset": {"path": "NA", "revision": "NA"},
    "category": "t2t",
    "eval_splits": ["test"],
    "eval_langs": ["eng-Latn"],
    "date": ("2024-01-01", "2024-01-01"),
    "dialect": ["Written"],
    "domains": [],
    "task_subtypes": [],
    "license": "cc-by-4.0",
    "annotations_creators": "derived",
    "modalities": ["text"],
    "sample_creation": "found",
    "bibtex_citation": "",
}

WORDS = [
    "river",
    "mountain",
    "castle",
    "bread",
    "violin",
    "planet",
    "garden",
    "harbor",
    "winter",
    "lantern",
    "copper",
    "forest",
    "meadow",
    "engine",
]


def _toy_retrieval(seed=0, num_docs=40, num_queries=10):
    g = torch.Generator().manual_seed(seed)
    pick = lambda n: " ".join(WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=g).tolist())
    corpus = {f"d{i}": {"title": pick(2) if i % 2 else "", "text": pick(10)} for i in range(num_docs)}
    queries = {f"q{i}": pick(4) for i in range(num_queries)}
    qrels = {
        qid: {f"d{j}": 1 + int(j % 2) for j in torch.randperm(num_docs, generator=g)[:2].tolist()} for qid in queries
    }
    return corpus, queries, qrels


CORPUS, QUERIES, QRELS = _toy_retrieval()


class ToyRetrieval(AbsTaskRetrieval):
    metadata = TaskMetadata(type="Retrieval", name="E5ToyRetrieval", main_score="ndcg_at_10", **_COMMON)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        split = RetrievalSplitData(
            queries=Dataset.from_list([{"id": qid, "text": text} for qid, text in QUERIES.items()]),
            corpus=Dataset.from_list([{"id": did, **doc} for did, doc in CORPUS.items()]),
            relevant_docs=QRELS,
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


STS_PAIRS = [
    ("a river runs by the castle", "the castle stands near a river", 4.5),
    ("fresh bread in the morning", "a violin concert at night", 0.5),
    ("planet orbits in winter", "winter on a distant planet", 3.5),
    ("copper engine parts", "an engine made of copper", 4.0),
    ("the harbor lantern", "a garden full of flowers", 1.0),
    ("forest and meadow", "a meadow beside the forest", 4.8),
]


class ToySTS(AbsTaskSTS):
    metadata = TaskMetadata(type="STS", name="E5ToySTS", main_score="cosine_spearman", **_COMMON)
    min_score = 0
    max_score = 5

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        s1, s2, score = zip(*STS_PAIRS)
        self.dataset = DatasetDict(
            {"test": Dataset.from_dict({"sentence1": list(s1), "sentence2": list(s2), "score": list(score)})}
        )
        self.data_loaded = True


INSTRUCTION = "Given a query, find passages about the same things"


@pytest.fixture(scope="module")
def embedder(tiny_folder):
    from e5mistral import E5Embedder

    return E5Embedder.from_pretrained(tiny_folder, batch_size=16)


def _scores(result, task_name):
    (task_result,) = [r for r in result.task_results if r.task_name == task_name]
    return task_result.scores["test"][0]


def _equal_to_mteb_rounding(theirs: float, ours: float) -> bool:
    """mteb rounds retrieval scores to 5 decimals (half a unit of 1e-5), on top of float rounding."""
    return abs(theirs - ours) <= 5e-6 + 1e-6 * abs(ours)


def test_mteb_retrieval_ndcg_matches_own_evaluator(embedder):
    model = E5MtebEncoder(embedder, instructions={"E5ToyRetrieval": INSTRUCTION})
    result = mteb.evaluate(model, ToyRetrieval(), cache=None, show_progress_bar=False)
    ours = evaluate_retrieval(embedder, QUERIES, CORPUS, QRELS, INSTRUCTION, k_values=(1, 3, 10))
    scores = _scores(result, "E5ToyRetrieval")
    for k in (1, 3, 10):
        assert _equal_to_mteb_rounding(scores[f"ndcg_at_{k}"], ours.metrics[f"ndcg@{k}"])
        assert _equal_to_mteb_rounding(scores[f"recall_at_{k}"], ours.metrics[f"recall@{k}"])
        assert _equal_to_mteb_rounding(scores[f"mrr_at_{k}"], ours.metrics[f"mrr@{k}"])
    # the comparison is not vacuous: the instruction changes the number
    bare = evaluate_retrieval(embedder, QUERIES, CORPUS, QRELS, None, k_values=(10,))
    assert bare.run != ours.run


def test_mteb_sts_instructs_both_sides_like_own_evaluator(embedder):
    model = E5MtebEncoder(embedder, instructions={"STS": "semantic_similarity"})
    result = mteb.evaluate(model, ToySTS(), cache=None, show_progress_bar=False)
    s1, s2, gold = zip(*STS_PAIRS)
    ours = sts_correlation(embedder, list(s1), list(s2), list(gold), instruction="semantic_similarity")
    scores = _scores(result, "E5ToySTS")
    assert scores["cosine_spearman"] == pytest.approx(ours["spearman"], rel=1e-6, abs=1e-12)
    assert scores["cosine_pearson"] == pytest.approx(ours["pearson"], rel=1e-6, abs=1e-12)


class Recorder:
    def __init__(self):
        self.calls = []

    def encode_queries(self, texts, instruction=None, **kwargs):
        self.calls.append(("query", instruction, list(texts)))
        return torch.nn.functional.normalize(torch.rand(len(texts), 4), dim=-1)

    def encode_documents(self, texts, **kwargs):
        self.calls.append(("document", None, list(texts)))
        return torch.nn.functional.normalize(torch.rand(len(texts), 4), dim=-1)


def test_instruction_routing():
    recorder = Recorder()
    model = E5MtebEncoder(
        recorder, instructions={"E5ToyRetrieval": "web_search"}, model_meta=e5_model_meta("test/recorder")
    )
    mteb.evaluate(model, [ToyRetrieval(), ToySTS()], cache=None, show_progress_bar=False)
    queries = [c for c in recorder.calls if c[0] == "query"]
    documents = [c for c in recorder.calls if c[0] == "document"]
    # retrieval: queries carry the named instruction (resolved to its text), documents are bare title+text
    from e5mistral import INSTRUCTIONS

    assert any(c[1] == INSTRUCTIONS["web_search"] and sorted(c[2]) == sorted(QUERIES.values()) for c in queries)
    assert sorted(text for c in documents for text in c[2]) == sorted(document_text(d) for d in CORPUS.values())
    # STS: no override for it, so both sides get the task's default instruction from mteb
    sts_calls = [c for c in queries if set(c[2]) <= {s for p in STS_PAIRS for s in p[:2]}]
    assert len(sts_calls) == 2 and all(c[1] for c in sts_calls) and sts_calls[0][1] == sts_calls[1][1]


def test_model_meta():
    meta = e5_model_meta("org/e5-tiny", embed_dim=32, max_tokens=512, base_model="mistralai/Mistral-7B-v0.1")
    assert meta.name == "org/e5-tiny" and meta.embed_dim == 32 and meta.use_instructions
    assert meta.adapted_from == "mistralai/Mistral-7B-v0.1" and meta.similarity_fn_name.value == "cosine"


def test_model_meta_loads_model(tiny_folder):
    meta = e5_model_meta(str(tiny_folder))
    model = meta.load_model()
    assert isinstance(model, E5MtebEncoder) and meta.name.startswith("local/")
    assert model.embedder.model.config.hidden_size == 32
    direct = E5MtebEncoder.from_pretrained(str(tiny_folder))
    assert direct.mteb_model_meta.embed_dim == 32 and direct.mteb_model_meta.max_tokens == 512


def test_from_pretrained_loads_the_revision_it_records(tiny_folder, monkeypatch):
    from e5mistral.encoding import E5Embedder

    loaded = E5Embedder.from_pretrained(tiny_folder)
    calls = []
    monkeypatch.setattr(E5Embedder, "from_pretrained", lambda name, **kwargs: calls.append((name, kwargs)) or loaded)
    encoder = E5MtebEncoder.from_pretrained(str(tiny_folder), revision="v1.0", device="cpu", batch_size=4)
    assert calls == [(str(tiny_folder), {"revision": "v1.0", "device": "cpu", "batch_size": 4})]
    assert encoder.mteb_model_meta.revision == "v1.0" and encoder.embedder is loaded


def test_evaluate_script_mteb_path_feeds_the_model_card(tiny_folder, tmp_path, monkeypatch):
    """scripts/evaluate.py --mteb with a local task (get_tasks patched: no download), then the card."""
    import json

    import yaml

    from e5mistral.cli import evaluate as script
    from e5mistral.hub import render_model_card

    tasks = {"E5ToySTS": ToySTS, "E5ToyRetrieval": ToyRetrieval}
    monkeypatch.setattr(mteb, "get_tasks", lambda tasks=None, **kw: [TASKS[name]() for name in tasks])
    monkeypatch.setattr(mteb, "get_task", lambda name, **kw: TASKS[name]())
    TASKS.update(tasks)
    out = tmp_path / "results.json"
    results = script.run(
        [
            "--model",
            str(tiny_folder),
            "--mteb",
            "E5ToySTS",
            "--mteb",
            "E5ToyRetrieval",
            "--instruction",
            "semantic_similarity",
            "--output",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert set(saved["mteb"]) == {"E5ToySTS", "E5ToyRetrieval"}
    sts = saved["mteb"]["E5ToySTS"]
    assert sts["type"] == "STS" and sts["main_score_name"] == "cosine_spearman"
    s1, s2, gold = zip(*STS_PAIRS)
    from e5mistral import E5Embedder

    ours = sts_correlation(
        E5Embedder.from_pretrained(tiny_folder), list(s1), list(s2), list(gold), instruction="semantic_similarity"
    )
    assert (
        sts["main_score"]
        == pytest.approx(ours["spearman"], rel=1e-6, abs=1e-12)
        == pytest.approx(results["mteb"]["E5ToySTS"]["main_score"])
    )

    card = render_model_card(tiny_folder, "me/tiny", out)
    meta = yaml.safe_load(str(card).split("---\n")[1])
    values = {
        (r["dataset"]["name"], m["type"]): m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]
    }
    assert values[("MTEB E5ToySTS", "cosine_spearman")] == pytest.approx(ours["spearman"], rel=1e-6, abs=1e-12)
    assert values[("MTEB E5ToyRetrieval", "ndcg_at_10")] == pytest.approx(saved["mteb"]["E5ToyRetrieval"]["main_score"])


TASKS: dict = {}
