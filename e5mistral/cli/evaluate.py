r"""Evaluate an embedding model on BEIR-format folders and/or MTEB tasks; write JSON, print a table.

    python scripts/evaluate.py --model out/my-e5 --beir data/scifact --beir data/nfcorpus \
        --mteb STS12 --output results.json

BEIR folders hold corpus.jsonl, queries.jsonl and qrels/<split>.tsv. Queries get the task
instruction (``--instruction``, a text or a name from e5mistral.INSTRUCTIONS; otherwise the
instruction known for the folder's BEIR name, else "web_search"), documents none. MTEB tasks use
``--instruction`` when given, otherwise the task's own prompt; documents stay bare and symmetric
tasks (STS, bitext, ...) are instructed on both sides. ``results.json`` is what
``scripts/push_to_hub.py model --results`` puts into the model card.

The same command is ``python -m e5mistral.cli.evaluate`` and the console script ``e5mistral-evaluate``.

Each folder and task is evaluated on its own: when one fails (an MTEB task offline, a folder
without the split), the others still run, every result that succeeded is written to --output
(the failures under "failed"), each failure is reported on one line, and the exit status is
non-zero. A mistake in the arguments (no such --model, --beir folder or MTEB task) is one
``error:`` line and exit status 2, before anything is computed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from e5mistral.cli.common import EmbedderArguments, failure_line, run_as_command
from e5mistral.errors import UserError

__all__ = ["format_table", "main", "make_parser", "run"]

logger = logging.getLogger("evaluate")

TABLE_METRICS = ("ndcg@10", "mrr@10", "recall@10", "map@10", "recall@100")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    EmbedderArguments.add_arguments(
        parser, model_help="model folder or Hub id (an e5mistral export or compatible)", trust_remote_code=True
    )
    parser.add_argument(
        "--beir", action="append", default=[], metavar="DIR", help="BEIR-format folder; repeat for several"
    )
    parser.add_argument(
        "--mteb",
        action="append",
        default=[],
        metavar="TASK",
        help="MTEB task name (downloads its data); repeat for several",
    )
    parser.add_argument(
        "--instruction", default=None, help="query instruction (text or INSTRUCTIONS name) for every folder/task"
    )
    parser.add_argument("--output", required=True, help="results JSON file to write")
    parser.add_argument("--split", default="test", help="BEIR qrels split (qrels/<split>.tsv)")
    parser.add_argument("--k-values", default="1,3,5,10,100", help="comma list of cut-offs")
    parser.add_argument(
        "--block-size", type=int, default=16384, help="documents embedded and scored per block (bounds memory)"
    )
    parser.add_argument(
        "--ignore-identical-ids", action="store_true", help="never return a document whose id equals the query id"
    )
    return parser


def _beir_instruction(folder: Path, instruction: str | None) -> str:
    from e5mistral.evaluation.retrieval import BEIR_INSTRUCTIONS
    from e5mistral.instructions import get_instruction

    if instruction is not None:
        return get_instruction(instruction)
    name = folder.name.lower()
    if name not in BEIR_INSTRUCTIONS:
        logger.warning(
            "no instruction known for BEIR folder %r; using 'web_search'. Pass --instruction to choose one.",
            folder.name,
        )
    return get_instruction(BEIR_INSTRUCTIONS.get(name, "web_search"))


def format_table(results: dict) -> str:
    """A fixed-width table: one row per BEIR folder (TABLE_METRICS) and per MTEB task (main score)."""
    header = ["dataset", *TABLE_METRICS]
    rows = [
        [name, *(f"{100 * r['metrics'][m]:.2f}" if m in r["metrics"] else "-" for m in TABLE_METRICS)]
        for name, r in results["beir"].items()
    ]
    lines = []
    if rows:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in (header, *rows)]
    for name, r in results["mteb"].items():
        lines.append(f"{name} ({r['type']})  {r['main_score_name']} = {100 * r['main_score']:.2f}")
    return "\n".join(lines)


def _check_mteb_tasks(names: list[str]) -> None:
    """A UserError naming every unknown MTEB task (mteb's registry is local: no download)."""
    import mteb

    unknown = []
    for name in names:
        try:
            mteb.get_tasks(tasks=[name])
        except KeyError as error:
            unknown.append(str(error.args[0]).removeprefix("KeyError: ") if error.args else f"{name!r} not found")
    if unknown:
        raise UserError(f"--mteb: {'; '.join(unknown)} (names as in mteb.get_tasks(), e.g. STS12)")


def run(argv: list[str] | None = None) -> dict:
    """Evaluate, write --output, print the table; returns the results written.

    Raises UserError after writing --output when an evaluation failed for a reason the user can
    fix (offline, a missing file), or that evaluation's own exception (a bug) after writing.

    Example:
        >>> results = run(["--model", "outputs/e5-demo", "--beir", "data/scifact", "--output", "r.json"])  # doctest: +SKIP
        >>> results["beir"]["scifact"]["metrics"]["ndcg@10"]  # doctest: +SKIP
    """
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.beir and not args.mteb:
        raise UserError("nothing to evaluate: give at least one --beir DIR or --mteb TASK.")
    try:
        k_values = tuple(int(k) for k in args.k_values.split(","))
    except ValueError:
        raise UserError(f"--k-values {args.k_values!r} must be a comma list of integers, e.g. 1,10,100.") from None
    for folder in args.beir:
        if not Path(folder).is_dir():
            raise UserError(f"--beir {folder!r} is not a folder; it must hold corpus.jsonl, queries.jsonl and qrels/.")
    if args.mteb:
        _check_mteb_tasks(args.mteb)

    from e5mistral.evaluation.retrieval import SearchSettings, evaluate_beir
    from e5mistral.hub import network_errors

    embedder_args = EmbedderArguments.from_namespace(args)
    embedder = embedder_args.load()
    search_settings = SearchSettings(
        block_size=args.block_size, ignore_identical_ids=args.ignore_identical_ids, device=embedder_args.resolved_device()
    )
    results: dict = {
        "model": args.model,
        "config": {
            "max_length": args.max_length,
            "dtype": args.dtype or str(next(embedder.model.parameters()).dtype).removeprefix("torch."),
            "k_values": list(k_values),
        },
        "beir": {},
        "mteb": {},
    }

    # One evaluation failing must not throw away the others: each runs on its own, the failures
    # are reported after --output is written. Expected failures (offline, a missing file) become
    # one line each; anything else is a bug and is re-raised, with its traceback, after the write.
    expected = (UserError, OSError, *network_errors())
    failures: dict[str, str] = {}
    bug: BaseException | None = None

    def attempt(name: str, evaluation) -> None:
        nonlocal bug
        try:
            evaluation()
        except expected as error:
            failures[name] = failure_line(error)
        except Exception as error:  # noqa: BLE001 - re-raised below, once the results are saved
            failures[name] = failure_line(error)
            bug = bug or error

    def beir(folder: Path) -> None:
        instruction = _beir_instruction(folder, args.instruction)
        start = time.perf_counter()
        result = evaluate_beir(embedder, folder, instruction, args.split, k_values, settings=search_settings)
        results["beir"][folder.name] = {
            "split": args.split,
            "instruction": instruction,
            "num_queries": result.num_queries,
            "num_documents": result.num_documents,
            "seconds": round(time.perf_counter() - start, 2),
            "metrics": result.metrics,
        }
        logger.info("%s: nDCG@10 = %.4f", folder.name, result.metrics.get("ndcg@10", float("nan")))

    for folder in map(Path, args.beir):
        attempt(f"beir {folder.name}", lambda folder=folder: beir(folder))

    if args.mteb:
        import mteb

        from e5mistral.evaluation.mteb import E5MtebEncoder

        instructions = {name: args.instruction for name in args.mteb} if args.instruction else None
        model = E5MtebEncoder(embedder, instructions=instructions, name_or_path=args.model)

    def mteb_task(name: str) -> None:
        evaluation = mteb.evaluate(
            model, mteb.get_tasks(tasks=[name]), cache=None, encode_kwargs={"batch_size": args.batch_size}
        )
        for task_result in evaluation.task_results:
            task = mteb.get_task(task_result.task_name)
            results["mteb"][task_result.task_name] = {
                "type": task.metadata.type,
                "dataset": {"path": task.metadata.dataset["path"], "revision": task.metadata.dataset["revision"]},
                "main_score_name": task.metadata.main_score,
                "main_score": task_result.get_score(),
                "scores": task_result.scores,
            }

    for name in args.mteb:
        attempt(f"mteb {name}", lambda name=name: mteb_task(name))

    if failures:
        results["failed"] = failures
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_table(results))
    print(f"wrote {output}")
    for name, line in failures.items():
        print(f"failed: {name}: {line}", file=sys.stderr)
    if bug is not None:
        raise bug
    if failures:
        done = len(results["beir"]) + len(results["mteb"])
        raise UserError(
            f"{len(failures)} of {len(failures) + done} evaluations failed (listed above); the results of the other "
            f"{done} are in {output}. Fix the cause (offline: unset HF_HUB_OFFLINE or pre-download the task), "
            "then rerun"
        )
    return results


def main(argv: list[str] | None = None) -> int:
    """The command: :func:`run` on ``argv`` (default: ``sys.argv[1:]``); the exit status (2: one ``error:`` line).

    Example:
        >>> main(["--model", "outputs/e5-demo", "--mteb", "STS12", "--output", "results.json"])  # doctest: +SKIP
        0
    """
    return run_as_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
