"""Retrieval metrics against the pytrec_eval oracle (trec_eval's C code) on random runs and qrels."""

from __future__ import annotations

import random

import pytest
import pytrec_eval

from e5mistral.evaluation.metrics import per_query_metrics, rank_documents, retrieval_metrics

K_VALUES = (1, 2, 3, 5, 10, 20)


def _random_case(seed: int, ties: bool):
    """Random run and qrels; with `ties`, scores come from a tiny set so many documents tie."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(40)] + ["D7", "a", "zz", "d10b"]  # ids whose order is not numeric
    run, qrels = {}, {}
    for q in range(25):
        qid = f"q{q}"
        retrieved = rng.sample(docs, rng.randint(1, 30))
        if ties:
            run[qid] = {d: float(rng.choice([0.1, 0.5, 0.5, 0.9])) for d in retrieved}
        else:
            run[qid] = {d: rng.uniform(-1, 1) for d in retrieved}
        judged = rng.sample(docs, rng.randint(1, 8))
        qrels[qid] = {d: rng.choice([-1, 0, 1, 1, 2, 3]) for d in judged}
    qrels["q_no_relevant"] = {"d1": 0, "d2": 0}
    run["q_no_relevant"] = {"d1": 0.3, "d3": 0.2}
    run["q_not_judged"] = {"d1": 1.0}  # in run, not in qrels: ignored by both
    return run, qrels


def _oracle(run, qrels, k_values):
    """Per-query metrics from pytrec_eval; MRR@k as recip_rank on the run cut to its top k."""
    ks = ",".join(map(str, k_values))
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{ks}", f"recall.{ks}", f"map_cut.{ks}", f"P.{ks}"})
    scores = evaluator.evaluate(run)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    out = {qid: {} for qid in scores}
    for k in k_values:
        # pytrec_eval has no MRR@k: cut each run to its top k in trec_eval's own order (checked
        # below by test_rank_documents_matches_trec_eval_order) and take recip_rank.
        cut = {qid: {d: docs[d] for d in rank_documents(docs, k)} for qid, docs in run.items()}
        rr_k = rr.evaluate(cut)
        for qid in scores:
            out[qid].update(
                {
                    f"ndcg@{k}": scores[qid][f"ndcg_cut_{k}"],
                    f"recall@{k}": scores[qid][f"recall_{k}"],
                    f"map@{k}": scores[qid][f"map_cut_{k}"],
                    f"precision@{k}": scores[qid][f"P_{k}"],
                    f"mrr@{k}": rr_k[qid]["recip_rank"],
                }
            )
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_per_query_metrics_match_pytrec_eval(seed, ties):
    run, qrels = _random_case(seed, ties)
    ours = per_query_metrics(run, qrels, K_VALUES)
    oracle = _oracle(run, qrels, K_VALUES)
    assert set(ours) == set(qrels) == set(oracle)
    for qid in oracle:
        assert set(ours[qid]) == set(oracle[qid])
        for name, value in oracle[qid].items():
            assert ours[qid][name] == pytest.approx(value, rel=1e-6, abs=1e-12), (qid, name)


@pytest.mark.parametrize("ties", [False, True])
def test_mean_metrics_match_pytrec_eval(ties):
    run, qrels = _random_case(123, ties)
    oracle = _oracle(run, qrels, K_VALUES)
    ours = retrieval_metrics(run, qrels, K_VALUES)
    assert set(ours) == {f"{m}@{k}" for m in ("ndcg", "mrr", "recall", "map", "precision") for k in K_VALUES}
    for name, value in ours.items():
        expected = sum(scores[name] for scores in oracle.values()) / len(oracle)
        assert value == pytest.approx(expected, rel=1e-6, abs=1e-12), name
        assert isinstance(value, float)


def test_rank_documents_matches_trec_eval_order():
    """trec_eval breaks ties by document id descending: probe it with one relevant doc per rank."""
    scores = {"b": 0.5, "a": 0.5, "c": 0.5, "B": 0.5, "d": 0.9, "e": 0.1}
    ranked = rank_documents(scores)
    assert ranked == ["d", "c", "b", "a", "B", "e"]
    for position, doc_id in enumerate(ranked, start=1):
        oracle = pytrec_eval.RelevanceEvaluator({"q": {doc_id: 1}}, {"recip_rank"}).evaluate({"q": scores})
        assert oracle["q"]["recip_rank"] == pytest.approx(1 / position)
    assert rank_documents(scores, top_k=3) == ranked[:3]


def test_tie_breaking_ignores_dict_order():
    forward = {"d1": 0.5, "d2": 0.5, "d3": 0.5}
    backward = dict(reversed(list(forward.items())))
    qrels = {"q": {"d1": 1}}
    assert retrieval_metrics({"q": forward}, qrels, (1, 3)) == retrieval_metrics({"q": backward}, qrels, (1, 3))
    assert retrieval_metrics({"q": forward}, qrels, (1, 3))["mrr@3"] == pytest.approx(1 / 3)


def test_query_missing_from_run_scores_zero():
    qrels = {"q1": {"d1": 1}, "q2": {"d1": 1}}
    run = {"q1": {"d1": 1.0}}
    metrics = retrieval_metrics(run, qrels, (1,))
    assert metrics["ndcg@1"] == pytest.approx(0.5)
    assert metrics["recall@1"] == pytest.approx(0.5)


def test_hand_computed_graded_ndcg():
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    qrels = {"q": {"a": 1, "c": 2}}
    dcg = 1 / 1 + 2 / 2  # ranks 1 and 3: log2(2) = 1, log2(4) = 2
    idcg = 2 / 1 + 1 / 1.584962500721156  # log2(3)
    assert retrieval_metrics(run, qrels, (3,))["ndcg@3"] == pytest.approx(dcg / idcg)


@pytest.mark.parametrize("bad", [(), (0,), (1, -3), (2.5,)])
def test_bad_k_values_raise(bad):
    with pytest.raises(ValueError, match="k_values"):
        retrieval_metrics({"q": {"d": 1.0}}, {"q": {"d": 1}}, bad)


def test_empty_qrels_and_nan_raise():
    with pytest.raises(ValueError, match="qrels is empty"):
        retrieval_metrics({"q": {"d": 1.0}}, {})
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics({"q": {"d": float("nan")}}, {"q": {"d": 1}})


def test_evaluate_module_loads_locally_and_agrees():
    evaluate = pytest.importorskip("evaluate")
    from e5mistral.evaluation import RETRIEVAL_METRIC_PATH

    run, qrels = _random_case(7, ties=True)
    qids = list(qrels)
    predictions = [{"doc_ids": list(run[q]), "scores": list(run[q].values())} for q in qids]
    references = [{"doc_ids": list(qrels[q]), "relevance": list(qrels[q].values())} for q in qids]
    metric = evaluate.load(RETRIEVAL_METRIC_PATH)
    result = metric.compute(predictions=predictions, references=references, k_values=list(K_VALUES))
    oracle = _oracle(run, qrels, K_VALUES)
    for name, value in result.items():
        assert value == pytest.approx(sum(s[name] for s in oracle.values()) / len(oracle), rel=1e-6, abs=1e-12), name
    # streaming through add_batch gives the same numbers
    for start in range(0, len(qids), 5):
        metric.add_batch(predictions=predictions[start : start + 5], references=references[start : start + 5])
    assert metric.compute(k_values=list(K_VALUES)) == pytest.approx(result)
    with pytest.raises(ValueError, match="doc_ids"):
        metric.compute(predictions=[{"doc_ids": ["a"], "scores": []}], references=references[:1])
