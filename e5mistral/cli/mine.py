r"""Mine hard negatives for (query, positive) pairs and write training rows (JSON lines).

From a file of pairs (the corpus defaults to the pairs' own positives):

    python scripts/mine_hard_negatives.py --model out/my-e5 --pairs data/nq_pairs.jsonl \
        --instruction question_answering --task nq --language en --output data/nq_mined.jsonl

From a BEIR-format folder (pairs from qrels/<split>.tsv, mined from its corpus.jsonl):

    python scripts/mine_hard_negatives.py --model intfloat/e5-mistral-7b-instruct --beir data/msmarco \
        --split train --instruction web_search --task msmarco --language en --output data/msmarco_mined.jsonl

Negatives are drawn from ranks [--rank-start, --rank-end) after the row's positives are removed;
the top ranks are skipped as likely false negatives. Off by default (the recipe), positive-aware
mining (NV-Retriever) first removes candidates scoring too close to the positive
(``--absolute-margin``, ``--relative-margin``, ``--positive-share``), and ``--sampling top`` takes
the best of the window instead of a seeded random draw:

    python scripts/mine_hard_negatives.py --model out/my-e5 --pairs data/nq_pairs.jsonl \
        --rank-start 0 --rank-end 50 --num-negatives 4 --relative-margin 0.05 --sampling top --output data/nq_tk.jsonl

Restarted with the same arguments, a killed
run resumes from ``<output>.mining/`` and ends with the same file. The output has the training
columns query, positive, negatives, instruction, task, language.

The same command is ``python -m e5mistral.cli.mine`` and the console script ``e5mistral-mine``.
Pairs and ``--corpus`` files are read as training data files are (:func:`e5mistral.training.data.read_data_file`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from e5mistral.cli.common import EmbedderArguments, run_as_command
from e5mistral.errors import UserError
from e5mistral.instructions import get_instruction

__all__ = ["main", "make_parser", "run"]

logger = logging.getLogger("mine_hard_negatives")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    EmbedderArguments.add_arguments(parser, model_help="model folder or Hub id used to embed queries and corpus")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", help="pairs file (.jsonl, .json or .parquet) with query and positive columns")
    source.add_argument(
        "--beir", help="BEIR-format folder: pairs from qrels/<split>.tsv (grade >= 1), corpus from corpus.jsonl"
    )
    parser.add_argument("--split", default="train", help="with --beir: the qrels split")
    parser.add_argument(
        "--corpus",
        default=None,
        help="with --pairs: corpus file (.jsonl, .json or .parquet; text, optional title) to mine from; "
        "default: the pairs' positives",
    )
    parser.add_argument("--query-field", default="query", help="with --pairs: the query column")
    parser.add_argument("--positive-field", default="positive", help="with --pairs: the positive column")
    parser.add_argument("--output", required=True, help="JSON-lines file of training rows to write")
    parser.add_argument(
        "--instruction", default="", help="query instruction (text or INSTRUCTIONS name) for rows without one"
    )
    parser.add_argument("--task", default="", help="task name for rows without one (for same-task batches)")
    parser.add_argument("--language", default="", help="language for rows without one")
    parser.add_argument(
        "--rank-start", type=int, default=30, help="first rank of the window (0-based, positives removed)"
    )
    parser.add_argument("--rank-end", type=int, default=100, help="end of the window (exclusive)")
    parser.add_argument("--num-negatives", type=int, default=1, help="negatives per row (recipe: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")
    parser.add_argument(
        "--sampling",
        choices=("random", "top"),
        default="random",
        help="random: a seeded draw from the window (the recipe); top: the window's best-ranked candidates",
    )
    parser.add_argument(
        "--absolute-margin",
        type=float,
        default=None,
        help="drop from the pool (the --rank-end best) candidates with score + MARGIN > the positive's score; "
        "--rank-start then counts what is left (off by default)",
    )
    parser.add_argument(
        "--relative-margin",
        type=float,
        default=None,
        help="drop candidates with score > positive - |positive| * MARGIN (0.05 = NV-Retriever's TopK-PercPos 95%%)",
    )
    parser.add_argument(
        "--positive-share",
        type=float,
        default=None,
        help="keep only candidates with score <= SHARE * the positive's score (TopK-PercPos, e.g. 0.95)",
    )
    parser.add_argument("--block-size", type=int, default=16384, help="corpus documents embedded and scored at once")
    parser.add_argument("--chunk-size", type=int, default=4096, help="rows searched at once (the unit of resumption)")
    parser.add_argument("--max-rows", type=int, default=None, help="mine only the first N rows")
    return parser


def _read_file(path: str, flag: str, what: str):
    """A --pairs / --corpus file as a `Dataset`, read as training data files are."""
    from e5mistral.training.data import read_data_file

    if not Path(path).is_file():
        raise UserError(f"{flag} {path!r}: no such file; give a .jsonl, .json or .parquet file of {what}.")
    return read_data_file(path)


def _read_rows(path: str, query_field: str, positive_field: str):
    rows = _read_file(path, "--pairs", "pairs")
    for field, flag in ((query_field, "--query-field"), (positive_field, "--positive-field")):
        if field not in rows.column_names:
            raise SystemExit(f"{flag} {field!r} is not a column of {path} (columns: {rows.column_names}).")
    if query_field != "query":
        rows = rows.rename_column(query_field, "query")
    if positive_field != "positive":
        rows = rows.rename_column(positive_field, "positive")
    return rows


def _read_corpus(path: str) -> list[str]:
    from e5mistral.evaluation.beir import document_text

    rows = _read_file(path, "--corpus", "documents")
    if "text" not in rows.column_names:
        raise SystemExit(f"{path}: corpus rows need a 'text' field (and may have 'title'); columns: {rows.column_names}.")
    return [document_text(row) for row in rows]


def _beir_rows(folder: str, split: str):
    """Pairs from a BEIR folder: one row per (query, relevant document); all its positives excluded."""
    from e5mistral.evaluation.beir import document_text, load_beir

    data = load_beir(folder, split)
    doc_ids = list(data.corpus)
    index = {doc_id: j for j, doc_id in enumerate(doc_ids)}
    corpus = [document_text(data.corpus[d]) for d in doc_ids]
    rows, positive_ids, missing = [], [], 0
    for qid, judged in data.qrels.items():
        relevant = [index[d] for d, grade in judged.items() if grade >= 1 and d in index]
        missing += sum(1 for d, grade in judged.items() if grade >= 1 and d not in index)
        for j in relevant:
            rows.append({"query": data.queries[qid], "positive": corpus[j]})
            positive_ids.append(relevant)
    if missing:
        logger.warning(
            "%d relevant documents of qrels/%s.tsv are not in corpus.jsonl and were skipped.", missing, split
        )
    return rows, corpus, positive_ids


def run(argv: list[str] | None = None):
    """Mine, write ``--output``, print a summary; returns the :class:`~e5mistral.mining.MiningStats`.

    Example:
        >>> stats = run(["--model", "outputs/e5-demo", "--pairs", "pairs.jsonl", "--output", "mined.jsonl"])  # doctest: +SKIP
        >>> stats.rows  # doctest: +SKIP
    """
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    get_instruction(args.instruction)  # a mistyped instruction name fails now, not after loading the model
    from e5mistral.mining import MiningConfig, mine_hard_negatives

    try:
        config = MiningConfig(
            args.rank_start,
            args.rank_end,
            args.num_negatives,
            args.seed,
            args.block_size,
            args.chunk_size,
            sampling=args.sampling,
            absolute_margin=args.absolute_margin,
            relative_margin=args.relative_margin,
            positive_share=args.positive_share,
        )
    except ValueError as e:
        raise UserError(f"invalid mining settings: {e}") from None

    positive_ids = None
    if args.beir:
        rows, corpus, positive_ids = _beir_rows(args.beir, args.split)
    else:
        rows = _read_rows(args.pairs, args.query_field, args.positive_field)
        corpus = _read_corpus(args.corpus) if args.corpus else sorted(set(rows["positive"]))
    if args.max_rows is not None:
        rows = rows[: args.max_rows] if isinstance(rows, list) else rows.select(range(min(args.max_rows, len(rows))))
        positive_ids = positive_ids[: args.max_rows] if positive_ids is not None else None

    embedder_args = EmbedderArguments.from_namespace(args)
    embedder = embedder_args.load()
    stats = mine_hard_negatives(
        embedder,
        rows,
        corpus,
        args.output,
        config,
        positive_ids=positive_ids,
        instruction=args.instruction,
        task=args.task,
        language=args.language,
        device=embedder_args.resolved_device(),
    )
    print(
        f"wrote {stats.rows} rows to {args.output} ({stats.rows_resumed} from an earlier run), corpus of {stats.corpus_size}; "
        f"{stats.rows_short} rows got fewer than {config.num_negatives} negatives (window beyond the corpus)"
        + (f"; {stats.margin_dropped} candidates dropped by the margin." if config.positive_aware else ".")
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    """The command: :func:`run` on ``argv`` (default: ``sys.argv[1:]``); the exit status (2: one ``error:`` line).

    Example:
        >>> main(["--model", "outputs/e5-demo", "--beir", "data/msmarco", "--output", "mined.jsonl"])  # doctest: +SKIP
        0
    """
    return run_as_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
