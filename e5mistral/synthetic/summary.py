"""What a generation log holds: statistics per kind and language, failures, tokens, as data and as text.

Example:
    >>> from e5mistral.synthetic import SAMPLE_LOG, read_generation_log
    >>> summary = summarize(read_generation_log(SAMPLE_LOG), ["sts"])
    >>> list(summary["examples"])
    ['sts']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from .builder import KINDS, dataset_rows

__all__ = ["format_reasons", "format_summary", "summarize"]


def summarize(records: Sequence[dict[str, Any]], kinds: Sequence[str] = KINDS) -> dict[str, Any]:
    """Statistics of a log: dataset rows per kind and per (kind, language) after duplicate
    removal, duplicates dropped, the valid share per kind (`valid_share`: valid example answers of
    the example requests logged, and the attempts they took), failures by reason, the kinds with
    example requests logged but no row (their requests and failures by reason), requests and
    tokens used.

    Example:
        >>> summarize([])["examples"]
        {}
        >>> failed = {"kind": "sts", "step": "example", "status": "failed", "attempts": 3, "model": "m",
        ...           "failure": {"reason": "invalid_json", "detail": "..."},
        ...           "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
        >>> summarize([failed], ["sts"])["valid_share"]
        {'sts': {'valid': 0, 'requests': 1, 'attempts': 3, 'share': 0.0}}
    """
    examples: dict[str, int] = {}
    by_language: dict[str, dict[str, int]] = {}
    duplicates: dict[str, int] = {}
    for kind in kinds:
        rows = list(dataset_rows(records, kind))
        ok = sum(1 for r in records if r["kind"] == kind and r["step"] == "example" and r["status"] == "ok")
        if not rows and not ok:
            continue
        examples[kind] = len(rows)
        duplicates[kind] = ok - len(rows)
        by_language[kind] = dict(sorted(Counter(r["language"] for r in rows).items(), key=lambda kv: (-kv[1], kv[0])))
    valid_share: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        logged = [r for r in records if r["kind"] == kind and r["step"] == "example"]
        if logged:
            valid = sum(1 for r in logged if r["status"] == "ok")
            valid_share[kind] = {
                "valid": valid,
                "requests": len(logged),
                "attempts": sum(int(r.get("attempts") or 0) for r in logged),
                "share": valid / len(logged),
            }
    failures = Counter(r["failure"]["reason"] for r in records if r["status"] == "failed")
    without_examples = {}  # kinds with example requests logged but no row: missing from the dataset
    for kind in kinds:
        logged = [r for r in records if r["kind"] == kind]
        if kind not in examples and any(r["step"] == "example" for r in logged):
            reasons = Counter(r["failure"]["reason"] for r in logged if r["status"] == "failed")
            without_examples[kind] = {"requests": len(logged), "failures_by_reason": dict(reasons.most_common())}
    return {
        "examples": examples,
        "examples_by_language": by_language,
        "duplicates_dropped": duplicates,
        "valid_share": valid_share,
        "failures_by_reason": dict(failures.most_common()),
        "kinds_without_examples": without_examples,
        "requests": len(records),
        "brainstorms_ok": sum(1 for r in records if r["step"] == "brainstorm" and r["status"] == "ok"),
        "brainstorms": sum(1 for r in records if r["step"] == "brainstorm"),
        "prompt_tokens": sum(r["usage"]["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["usage"]["completion_tokens"] for r in records),
        "models": sorted({r["model"] for r in records if r.get("model")}),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text report of :func:`summarize`; it ends with a WARNING line for each kind that
    has example requests logged but no valid example (the kind is missing from the dataset). The
    statistics of an export with decontamination (``summary["decontamination"]``, see
    :func:`~e5mistral.synthetic.export.export_dataset`) add the line of
    :meth:`~e5mistral.decontamination.DecontaminationReport.line` and the rows dropped per kind.

    Example:
        >>> failed = {"kind": "sts", "step": "example", "status": "failed", "language": "en", "model": "m",
        ...           "failure": {"reason": "invalid_json", "detail": "..."},
        ...           "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
        >>> print(format_summary(summarize([failed], ["sts"])).splitlines()[-1])
        WARNING: kind sts has no valid example: 1 request logged, failures: invalid_json 1
    """
    lines = ["examples per kind (after dropping exact duplicates):"]
    for kind, n in summary["examples"].items():
        langs = ", ".join(f"{code} {count}" for code, count in summary["examples_by_language"][kind].items())
        lines.append(f"  {kind:<12} {n:>7}  ({summary['duplicates_dropped'][kind]} duplicates dropped)  {langs}")
    if not summary["examples"]:
        lines.append("  (none)")
    if summary.get("valid_share"):
        lines.append("valid answers per kind (example requests; attempts include re-asks):")
        for kind, share in summary["valid_share"].items():
            lines.append(
                f"  {kind:<12} {share['valid']:>7} of {share['requests']} ({share['share']:.0%}) "
                f"in {share['attempts']} attempts"
            )
        if summary.get("brainstorms"):
            lines.append(f"  {'brainstorms':<12} {summary['brainstorms_ok']:>7} of {summary['brainstorms']}")
    lines.append("failures by reason:")
    lines += [f"  {reason:<16} {n:>7}" for reason, n in summary["failures_by_reason"].items()] or ["  (none)"]
    lines.append(
        f"requests logged: {summary['requests']}; tokens used: {summary['prompt_tokens']} prompt + "
        f"{summary['completion_tokens']} completion = {summary['prompt_tokens'] + summary['completion_tokens']}"
    )
    if summary.get("decontamination"):
        from ..decontamination import DecontaminationReport

        d = summary["decontamination"]
        lines.append(DecontaminationReport(d["rows"], d["dropped"], d["by_source"]).line())
        lines.append("  dropped per kind: " + ", ".join(f"{k} {n}" for k, n in d["dropped_by_kind"].items()))
    for kind, missing in summary.get("kinds_without_examples", {}).items():
        n = missing["requests"]
        lines.append(
            f"WARNING: kind {kind} has no valid example: {n} request{'s' if n != 1 else ''} logged, "
            f"failures: {format_reasons(missing['failures_by_reason'])}"
        )
    return "\n".join(lines)


def format_reasons(failures_by_reason: dict[str, int]) -> str:
    """Failure counts on one line, most frequent first.

    Example:
        >>> format_reasons({"invalid_json": 20, "no_task_pool": 4})
        'invalid_json 20, no_task_pool 4'
    """
    return ", ".join(f"{reason} {n}" for reason, n in failures_by_reason.items()) or "none"
