r"""Generate E5-mistral synthetic training data with an LLM and export it as a Hub-ready folder.

Against one or more OpenAI-compatible servers (vLLM, TGI, llama.cpp, hosted APIs); the token is
read from OPENAI_API_KEY (HF_TOKEN or `hf auth login` for Hugging Face hosts only), sent only in
the Authorization header and redacted from every message, record and card:

    python scripts/generate_data.py --base-url http://localhost:8000/v1 --base-url http://other:8000/v1 \
        --model mistralai/Mistral-7B-Instruct-v0.3 --kinds short_long,long_short,short_short,long_long,sts,bitext \
        --examples-per-kind 1000 --languages all --concurrency 32 --seed 0 --output synthetic-data

Offline, with a local transformers chat model instead of a server (requests in flight are batched,
`--batch-size` per `generate` call, and each answer's JSON schema is enforced while decoding; needs
`pip install 'e5mistral[local]'`):

    python scripts/generate_data.py --local-model Qwen/Qwen2.5-0.5B-Instruct --kinds sts \
        --examples-per-kind 10 --languages en,de --batch-size 8 --seed 0 --output synthetic-data

Structured outputs (`--json-mode`, default `schema`): servers are asked for each answer's JSON schema
(`response_format` `json_schema`, strict); a server that refuses it (400/422) is asked for
`json_object`, and one that refuses that too, for plain text. A local model has the schema enforced.

A killed run restarted with the same arguments resumes from `OUTPUT/raw/generations.jsonl` and
ends with the same dataset; Ctrl-C prints how many requests are logged and the command that
resumes (exit status 130). A run that stops on a fault (the server gone, a failed write to the
log, a rejected token) exits with status 1 and a message naming the cause; its unfinished
requests are pending, and the same command resumes them once the cause is fixed. The run ends
with a summary (examples per kind and language, failures by reason, tokens used, a WARNING for
each kind without a valid example); a run that produced no valid example at all exports nothing
and exits with status 1, naming the failure reasons. `--push-to-hub USER/NAME` then uploads the
folder. A mistake in the arguments is one `error:` line and exit status 2.

`--decontaminate-against PATH` (repeatable; off by default) leaves out of the export the rows whose
texts share a word 13-gram with evaluation data (`e5mistral.decontamination`); the summary and the
card say how many were dropped:

    python scripts/generate_data.py --base-url http://localhost:8000/v1 --model NAME --kinds short_long \
        --examples-per-kind 1000 --decontaminate-against data/scifact --output synthetic-data
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import resume_command, run_command
from ..secrets import redact
from ..synthetic.builder import KINDS, read_generation_log
from ..synthetic.export import LOG_RELPATH, export_dataset, push_to_hub
from ..synthetic.generate import run_generation
from ..synthetic.languages import parse_language_weights
from ..synthetic.llm.base import FatalLLMError
from ..synthetic.log import GenerationLogError
from ..synthetic.plan import GenerationConfig, plan_requests
from ..synthetic.summary import format_reasons, format_summary, summarize

__all__ = ["config_from_args", "interrupted_message", "main", "make_parser", "run"]

PROG = ("-m", "e5mistral.cli.generate")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    backend = parser.add_argument_group("LLM backend (one of --base-url or --local-model)")
    backend.add_argument(
        "--base-url",
        action="append",
        default=[],
        help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1; repeat to share the load",
    )
    backend.add_argument("--model", help="model name sent to the server(s)")
    backend.add_argument(
        "--local-model", help="a transformers chat model (Hub id or folder) run locally instead of a server"
    )
    backend.add_argument(
        "--json-mode",
        choices=("schema", "auto", "on", "off"),
        default="schema",
        help="structured outputs. schema: each answer's JSON schema (servers: response_format json_schema, "
        "then json_object, then none where refused; a local model: enforced while decoding); auto: "
        "json_object, dropped where refused (a local model: any JSON object); on: always json_object; off: none",
    )
    backend.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (recipe: 1.0)")
    backend.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (recipe: 1.0)")
    backend.add_argument(
        "--max-tokens", type=int, default=None, help="completion token limit (default: the server's; local: 2048)"
    )
    backend.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="local model: most requests per generate call (a batch never exceeds --concurrency)",
    )
    backend.add_argument(
        "--timeout", type=float, default=300.0, help="seconds before a request counts as hung and is retried"
    )
    backend.add_argument("--max-retries", type=int, default=6, help="retries of 429/5xx/timeouts per request")
    backend.add_argument(
        "--backoff-base", type=float, default=1.0, help="first retry delay in seconds, doubled per retry, with jitter"
    )
    backend.add_argument(
        "--backoff-max", type=float, default=60.0, help="largest retry delay in seconds (Retry-After may ask for more)"
    )

    plan = parser.add_argument_group("what to generate")
    plan.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    plan.add_argument("--examples-per-kind", type=int, required=True, help="example requests per kind")
    plan.add_argument(
        "--languages",
        default="all",
        help="'all' (XLM-R list, English heaviest) or codes with optional weights, e.g. en:5,de,fr",
    )
    plan.add_argument(
        "--seed", type=int, default=0, help="seed of the plan: templates, languages, placeholders, request ids"
    )
    plan.add_argument(
        "--examples-per-brainstorm", type=int, default=20, help="example requests sharing one brainstormed task pool"
    )
    plan.add_argument("--tasks-per-brainstorm", type=int, default=20, help="task definitions asked for per brainstorm")

    run = parser.add_argument_group("run")
    run.add_argument("--concurrency", type=int, default=16, help="requests in flight at once")
    run.add_argument(
        "--max-reasks",
        type=int,
        default=2,
        help="times an invalid answer is asked again before it is recorded as a failure",
    )
    run.add_argument("--output", required=True, help="output folder (resumes if it holds a log of the same run)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("--no-export", action="store_true", help="only generate; skip the Parquet/README export")
    run.add_argument(
        "--decontaminate-against",
        action="append",
        default=[],
        metavar="PATH",
        help="evaluation data (a BEIR folder, a folder of .jsonl/.json/.parquet files, or such a file) whose "
        "texts exported rows must not share a word n-gram with; repeat for several; the summary says how many "
        "rows were dropped (off by default)",
    )
    run.add_argument(
        "--decontamination-ngram", type=int, default=13, help="word n-gram size of --decontaminate-against"
    )
    run.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="upload the folder to this dataset repo (token: HF_TOKEN or hf auth login)",
    )
    run.add_argument("--private", action="store_true", help="create the Hub repo private")
    return parser


def config_from_args(args: argparse.Namespace) -> GenerationConfig:
    """The plan's :class:`GenerationConfig` from parsed arguments (raises ValueError on a bad value)."""
    return GenerationConfig(
        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
        examples_per_kind=args.examples_per_kind,
        seed=args.seed,
        languages=parse_language_weights(args.languages),
        tasks_per_brainstorm=args.tasks_per_brainstorm,
        examples_per_brainstorm=args.examples_per_brainstorm,
    )


def interrupted_message(argv: list[str], prog: str | Sequence[str] = PROG) -> str:
    """What Ctrl-C prints: how many requests the log holds and the command that resumes
    (:func:`~e5mistral.errors.resume_command`; `prog` names the command as it was started).

    Example:
        >>> interrupted_message(["--base-url", "http://h:8000/v1", "--model", "m", "--kinds", "sts",
        ...                      "--examples-per-kind", "4", "--output", "out"], "gen.py")  # doctest: +SKIP
        'interrupted: 2 of 4 requests are logged in out/raw/generations.jsonl; resume with: python gen.py ...'
    """
    try:
        args = make_parser().parse_args(argv)
        log_path = Path(args.output) / LOG_RELPATH
        total = sum(len(step) for step in plan_requests(config_from_args(args)))
    except (SystemExit, ValueError):  # interrupted before the arguments were checked
        return "interrupted."
    try:
        logged = len(read_generation_log(log_path)) if log_path.exists() else 0
    except (OSError, ValueError) as error:
        return f"interrupted; could not read {log_path}: {error}"
    command = resume_command(argv, prog)
    words = [prog] if isinstance(prog, str) else list(prog)
    if command != shlex.join([sys.executable, *words, *argv]):
        command += "   (put back the secrets shown as ***)"
    return f"interrupted: {logged} of {total} requests are logged in {log_path}; resume with: {command}"


def main(argv: list[str] | None = None) -> int:
    """Generate (or resume), export, push; returns the exit status (1: the run stopped on a fault,
    or no valid example). A :class:`~e5mistral.errors.UserError` propagates (see :func:`run`).

    Example:
        >>> main(["--base-url", "http://localhost:8000/v1", "--model", "m", "--kinds", "sts",
        ...       "--examples-per-kind", "10", "--output", "out"])  # doctest: +SKIP
        0
    """
    parser = make_parser()
    args = parser.parse_args(argv)
    if bool(args.base_url) == bool(args.local_model):
        parser.error("give --base-url (one or more) or --local-model, not both and not neither")
    if args.base_url and not args.model:
        parser.error("--model is required with --base-url (the model name the server serves)")
    if args.concurrency < 1:
        parser.error(f"--concurrency {args.concurrency}: it must be 1 or more")
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: it must be 1 or more")
    if args.decontaminate_against:
        if args.no_export:
            parser.error("--decontaminate-against filters the export; it cannot go with --no-export")
        if args.decontamination_ngram < 1:
            parser.error(f"--decontamination-ngram {args.decontamination_ngram}: it must be 1 or more (13 is usual)")
        from ..decontamination import check_sources

        check_sources(args.decontaminate_against)  # a bad path fails now, not after hours of generation
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.push_to_hub:
        from ..hub.publish import require_hub_token

        # before generating for hours, not after
        require_hub_token(
            instead="or leave out --push-to-hub and push the folder later with scripts/push_to_hub.py dataset"
        )

    if args.local_model:
        from ..synthetic.llm.local import TransformersChatBackend

        backend = TransformersChatBackend(
            args.local_model,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_tokens or 2048,
            batch_size=args.batch_size,
            json_mode=args.json_mode,
        )
        if args.concurrency < args.batch_size:
            print(
                f"note: --concurrency {args.concurrency} < --batch-size {args.batch_size}: batches hold at most "
                f"{args.concurrency} requests",
                file=sys.stderr,
            )
    else:
        from ..synthetic.llm.endpoints import EndpointPool

        backend = EndpointPool(
            args.base_url,
            args.model,
            json_mode=args.json_mode,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            timeout=args.timeout,
            max_retries=args.max_retries,
            backoff_base=args.backoff_base,
            backoff_max=args.backoff_max,
        )

    import asyncio

    output = Path(args.output)
    try:
        summary = asyncio.run(
            run_generation(
                config,
                backend,
                output / LOG_RELPATH,
                concurrency=args.concurrency,
                max_reasks=args.max_reasks,
                progress=not args.no_progress,
            )
        )
    except (FatalLLMError, GenerationLogError) as error:
        log_path = output / LOG_RELPATH
        records = read_generation_log(log_path) if log_path.exists() else []
        total = sum(len(step) for step in plan_requests(config))
        print(format_summary(summarize(records, config.kinds)))
        print(
            f"error: {redact(str(error))}\nstopped with {len(records)} of {total} requests logged in "
            f"{log_path}; the other {total - len(records)} are pending: rerun the same command to resume",
            file=sys.stderr,
        )
        return 1
    if not sum(summary["examples"].values()):  # never export (or push) an empty dataset
        print(format_summary(summary))
        print(
            f"error: no valid example was generated: {summary['requests']} requests logged, failures: "
            f"{format_reasons(summary['failures_by_reason'])}; nothing was exported. The 'failure' field of each "
            f"record in {output / LOG_RELPATH} says why; fix the cause (server, --model, --json-mode, --max-tokens), "
            "then run again with a new --output folder (failed requests are final in this log)",
            file=sys.stderr,
        )
        return 1
    if not args.no_export:
        command = "python scripts/generate_data.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
        )
        command = redact(command)  # a --base-url may carry credentials
        stats = export_dataset(
            output,
            kinds=config.kinds,
            repo_id=args.push_to_hub,
            generation_command=command,
            decontaminate_against=args.decontaminate_against,
            decontamination_ngram=args.decontamination_ngram,
        )
        if "decontamination" in stats:  # the summary then counts the rows exported
            summary = {**summary, **{k: stats[k] for k in ("examples", "examples_by_language", "decontamination")}}
    print(format_summary(summary))
    if args.push_to_hub:
        from ..hub.publish import hub_errors_as_user_errors

        later = (
            "or push the exported folder later: "
            f"python scripts/push_to_hub.py dataset --data {output} --repo-id {args.push_to_hub}"
        )
        with hub_errors_as_user_errors(args.push_to_hub, instead=later):
            print(f"pushed: {push_to_hub(output, args.push_to_hub, private=args.private)}")
    return 0


def run(argv: list[str] | None = None, *, prog: str | Sequence[str] = PROG) -> int:
    """:func:`main` as a command: a UserError is one ``error:`` line and status 2; Ctrl-C prints
    what is logged and the command that resumes (status 130). `prog` names the command in it
    (``sys.argv[0]`` for scripts/generate_data.py).

    Example:
        >>> sys.exit(run(prog="scripts/generate_data.py"))  # doctest: +SKIP
    """
    argv = sys.argv[1:] if argv is None else argv
    return run_command(lambda: main(argv), interrupted=lambda: interrupted_message(argv, prog))


if __name__ == "__main__":
    sys.exit(run())
