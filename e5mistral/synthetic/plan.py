"""The plan of a generation run: every request laid out from the arguments alone.

For each kind, `ceil(examples_per_kind / examples_per_brainstorm)` brainstorm requests
(asymmetric kinds only) and `examples_per_kind` example requests. Request `i` of a kind gets the
id `"{seed}-{kind}-example-{i:06d}"` and draws its template, language(s), placeholder values,
brainstorm and task position from `random.Random(f"{seed}:{kind}:example:{i}")`, so the plan never
depends on timing, and a resumed run asks exactly the requests still missing.

Example:
    >>> brainstorms, examples = plan_requests(GenerationConfig(kinds=("sts",), examples_per_kind=2))
    >>> brainstorms, [r.id for r in examples]
    ([], ['0-sts-example-000000', '0-sts-example-000001'])
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

from .builder import KINDS
from .languages import parse_language_weights
from .tasks import BRAINSTORM_KINDS, num_templates, plan_placeholders

__all__ = ["GenerationConfig", "Request", "plan_requests", "request_seed"]


@dataclass
class GenerationConfig:
    """What to generate. Every field shapes the plan, so a resumed run must repeat them all
    (checked against `run.json` beside the log)."""

    kinds: tuple[str, ...] = KINDS
    examples_per_kind: int = 100
    seed: int = 0
    languages: dict[str, float] = field(default_factory=lambda: parse_language_weights(None))
    tasks_per_brainstorm: int = 20
    examples_per_brainstorm: int = 20

    def __post_init__(self):
        self.kinds = tuple(self.kinds)
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds={list(self.kinds)}: unknown {unknown}; use some of {', '.join(KINDS)}")
        if self.examples_per_kind < 1:
            raise ValueError(f"examples_per_kind={self.examples_per_kind}; it must be >= 1")
        if self.examples_per_brainstorm < 1 or self.tasks_per_brainstorm < 1:
            raise ValueError("examples_per_brainstorm and tasks_per_brainstorm must be >= 1")
        if isinstance(self.languages, str):
            self.languages = parse_language_weights(self.languages)
        self.languages = {k: float(v) for k, v in sorted(self.languages.items())}
        if "bitext" in self.kinds and len(self.languages) < 2:
            raise ValueError(
                f"kind bitext pairs two languages, but languages={list(self.languages)}; add one to --languages "
                "(e.g. en,de) or leave bitext out of --kinds."
            )

    def n_brainstorms(self, kind: str) -> int:
        if kind not in BRAINSTORM_KINDS:
            return 0
        return math.ceil(self.examples_per_kind / self.examples_per_brainstorm)


@dataclass(frozen=True)
class Request:
    """One planned LLM request (its answer becomes one log record)."""

    id: str
    kind: str
    step: str  # "brainstorm" or "example"
    index: int
    template: int
    placeholders: dict[str, Any]
    brainstorm: int | None = None  # example step: which brainstorm's pool to draw the task from
    task_draw: float = 0.0  # example step: position in that pool, as a fraction in [0, 1)


def request_seed(request_id: str) -> int:
    """A 31-bit sampling seed derived from a request id, sent with every try of that request.

    Example:
        >>> request_seed("0-sts-example-000001") == request_seed("0-sts-example-000001")
        True
    """
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


def plan_requests(config: GenerationConfig) -> tuple[list[Request], list[Request]]:
    """All brainstorm and example requests of a run, from the config alone.

    Example:
        >>> brainstorms, examples = plan_requests(GenerationConfig(kinds=("short_long",), examples_per_kind=3))
        >>> [r.id for r in brainstorms], examples[2].id
        (['0-short_long-brainstorm-000000'], '0-short_long-example-000002')
    """
    brainstorms: list[Request] = []
    examples: list[Request] = []
    for kind in config.kinds:
        n_brainstorms = config.n_brainstorms(kind)
        for b in range(n_brainstorms):
            rng = random.Random(f"{config.seed}:{kind}:brainstorm:{b}")
            brainstorms.append(
                Request(
                    id=f"{config.seed}-{kind}-brainstorm-{b:06d}",
                    kind=kind,
                    step="brainstorm",
                    index=b,
                    template=rng.randrange(num_templates(kind, "brainstorm")),
                    placeholders={"n_tasks": config.tasks_per_brainstorm},
                )
            )
        for i in range(config.examples_per_kind):
            rng = random.Random(f"{config.seed}:{kind}:example:{i}")
            template = rng.randrange(num_templates(kind, "example"))
            placeholders = plan_placeholders(kind, rng, config.languages)
            examples.append(
                Request(
                    id=f"{config.seed}-{kind}-example-{i:06d}",
                    kind=kind,
                    step="example",
                    index=i,
                    template=template,
                    placeholders=placeholders,
                    brainstorm=rng.randrange(n_brainstorms) if n_brainstorms else None,
                    task_draw=rng.random(),
                )
            )
    return brainstorms, examples
