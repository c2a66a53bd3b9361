"""Decontamination: drop training rows whose texts overlap evaluation data, by word n-grams.

Off unless asked for (the recipe has no such step). A row is *contaminated* by an evaluation
source when one of its texts shares a word n-gram with that source's texts; the training loader
(``decontaminate_against`` in :class:`~e5mistral.training.arguments.E5ScriptArguments`) and the
generator's export (``scripts/generate_data.py --decontaminate-against``) drop such rows and say
how many.

Normalisation (:func:`normalize`): Unicode NFKC, case folded, then the runs of letters and digits
are the words, so case, punctuation and whitespace never matter (``"Don't  STOP!"`` is ``don t
stop``); accents and scripts are kept as they are. Scripts written without spaces (Chinese,
Japanese, Thai) have few "words", so their n-grams are coarse there.

N-grams (:func:`text_ngrams`): the word n-grams of a text, ``n = 13`` by default: the length GPT-3's
contamination study used (Brown et al., 2020) and many reports after it: long enough that stock
phrases ("one of the most important ...") do not match, short enough to catch one copied sentence.
A text with fewer than ``n`` words has one n-gram, all its words, when it has at least
``min_words`` (4); shorter texts (labels, ids, one-word answers) are ignored on both sides. So a
short query copied verbatim is caught, but a short evaluation text *inside* a longer training text
is not.

Rule (:meth:`NgramIndex.contaminated_by`): a text is contaminated by a source when it shares at
least one n-gram with it and the shared n-grams are at least ``min_share`` of its n-grams (0, the
default: any shared n-gram); a row is contaminated when any of its texts is.

Sources (:meth:`NgramIndex.build`): a BEIR-format folder (every text of ``corpus.jsonl``, as
``"title text"``, and of ``queries.jsonl``, all splits); any other folder (every
``.jsonl``/``.json``/``.parquet`` file under it); or one such file. Of a plain file every string
value, and every string in a list, is a text. MTEB's retrieval data on the Hub is in BEIR format
(``mteb/scifact``: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/``), so a downloaded snapshot
(``~/.cache/huggingface/hub/datasets--mteb--scifact/snapshots/<revision>``) is a BEIR folder here;
data that ``mteb`` converted into the ``datasets`` Arrow cache is not read (export it to a file).

The index keeps each source's n-grams as a sorted array of 64-bit hashes (8 bytes an n-gram).

Example:
    >>> index = NgramIndex.build(["data/scifact"], n=13)  # doctest: +SKIP
    >>> kept, report = decontaminate(rows, index, ["query", "positive", "negatives"])  # doctest: +SKIP
    >>> print(report.line())  # doctest: +SKIP
    decontamination: dropped 3 of 1200 rows (3 sharing an n-gram with data/scifact)
    >>> normalize("Don't  STOP!  Ça va?")
    ['don', 't', 'stop', 'ça', 'va']
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .evaluation.beir import document_text

__all__ = [
    "DEFAULT_MIN_WORDS",
    "DEFAULT_NGRAM",
    "DecontaminationReport",
    "NgramIndex",
    "check_sources",
    "decontaminate",
    "normalize",
    "text_ngrams",
]

DEFAULT_NGRAM = 13
DEFAULT_MIN_WORDS = 4
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script; `_` and punctuation separate words
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def normalize(text: str) -> list[str]:
    """The words of ``text``: NFKC, case folded, runs of letters and digits (see the module docstring).

    Example:
        >>> normalize("The  Eiffel-Tower, in PARIS.")
        ['the', 'eiffel', 'tower', 'in', 'paris']
    """
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def text_ngrams(text: str, n: int = DEFAULT_NGRAM, min_words: int = DEFAULT_MIN_WORDS) -> list[tuple[str, ...]]:
    """The word n-grams of ``text``; under ``n`` words, all its words as one (if at least ``min_words``).

    Example:
        >>> text_ngrams("a b c d", n=3)
        [('a', 'b', 'c'), ('b', 'c', 'd')]
        >>> text_ngrams("What is BEIR?", n=13, min_words=3), text_ngrams("Yes.", n=13)
        ([('what', 'is', 'beir')], [])
    """
    words = normalize(text)
    if len(words) < n:
        return [tuple(words)] if len(words) >= min_words else []
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _hashes(grams: Iterable[tuple[str, ...]]) -> np.ndarray:
    """64-bit hashes of n-grams (stable across processes, unlike ``hash``)."""
    out = [int.from_bytes(hashlib.blake2b("\x1f".join(g).encode(), digest_size=8).digest(), "little") for g in grams]
    return np.array(out, dtype=np.uint64)


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _jsonl_rows(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(
                    f"decontaminate_against: {path}:{line_no} is not JSON ({error.msg}); fix the file."
                ) from None
            yield row if isinstance(row, dict) else {"value": row}


def _file_rows(path: Path) -> Iterator[dict]:
    """The rows of a .jsonl (one object a line), .json (a list of objects, or one) or .parquet file."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as error:
            raise UserError(f"decontaminate_against: {path} is not a readable Parquet file ({error}).") from None
        yield from table.to_pylist()
    elif path.suffix == ".json":
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            yield from _jsonl_rows(path)  # JSON lines under a .json name, as `datasets` reads them
            return
        for row in content if isinstance(content, list) else [content]:
            yield row if isinstance(row, dict) else {"value": row}
    else:
        yield from _jsonl_rows(path)


def _source_texts(path: Path) -> Iterator[str]:
    """Every evaluation text of one source (see the module docstring)."""
    beir = [path / name for name in ("corpus.jsonl", "queries.jsonl")] if path.is_dir() else []
    if any(p.is_file() for p in beir):
        for p in beir:
            for row in _jsonl_rows(p) if p.is_file() else ():
                if p.name == "corpus.jsonl":  # embedded as "title text": so indexed, so a title-text seam matches
                    yield document_text(row)
                else:
                    yield row.get("text") or ""
        return
    files = [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in _FILE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(
            f"decontaminate_against: folder {str(path)!r} has no corpus.jsonl/queries.jsonl and no "
            ".jsonl/.json/.parquet file; point at a BEIR folder or a file of evaluation texts."
        )
    for file in files:
        for row in _file_rows(file):
            for value in row.values():
                yield from _strings(value)


def check_sources(paths: Sequence[str | Path]) -> None:
    """Raise one-line :class:`UserError` for a path that does not exist or is not a data file or folder
    (cheap: nothing is read; a command calls it before hours of other work).

    Example:
        >>> check_sources(["no/such/folder"])
        Traceback (most recent call last):
        ...
        e5mistral.errors.UserError: decontaminate_against: 'no/such/folder' does not exist; give a BEIR folder (corpus.jsonl, queries.jsonl), a folder of .jsonl/.json/.parquet files, or one such file.
    """
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(
                f"decontaminate_against: {str(raw)!r} does not exist; give a BEIR folder (corpus.jsonl, "
                "queries.jsonl), a folder of .jsonl/.json/.parquet files, or one such file."
            )
        if path.is_file() and path.suffix not in _FILE_SUFFIXES:
            raise UserError(
                f"decontaminate_against: {str(raw)!r} is not a .jsonl, .json or .parquet file, nor a folder."
            )


@dataclass
class NgramIndex:
    """The n-grams of evaluation sources, one sorted hash array per source (keyed by the path given).

    Build it with :meth:`build`; ``texts[source]`` counts the texts read from each source.
    """

    n: int = DEFAULT_NGRAM
    min_words: int = DEFAULT_MIN_WORDS
    min_share: float = 0.0
    sources: dict[str, np.ndarray] = field(default_factory=dict)
    texts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.n < 1:
            raise UserError(f"decontamination n-gram size {self.n} must be >= 1 (13 is the common choice).")
        if self.min_words < 1:
            raise UserError(f"decontamination min_words={self.min_words} must be >= 1.")
        if not 0.0 <= self.min_share <= 1.0:
            raise UserError(f"decontamination min_share={self.min_share} must be in [0, 1] (0: any shared n-gram).")

    @classmethod
    def build(
        cls,
        paths: Sequence[str | Path],
        n: int = DEFAULT_NGRAM,
        min_words: int = DEFAULT_MIN_WORDS,
        min_share: float = 0.0,
    ) -> NgramIndex:
        """Index ``paths`` (BEIR folders, folders of data files, data files); a missing path is one error line.

        Example:
            >>> index = NgramIndex.build(["data/scifact", "held_out.jsonl"])  # doctest: +SKIP
            >>> index.texts  # doctest: +SKIP
            {'data/scifact': 5483, 'held_out.jsonl': 200}
        """
        index = cls(n=n, min_words=min_words, min_share=min_share)
        check_sources(paths)
        for raw in paths:
            path = Path(raw).expanduser()
            hashes, count = [], 0
            for text in _source_texts(path):
                count += 1
                hashes.append(_hashes(text_ngrams(text, n, min_words)))
            index.sources[str(raw)] = np.unique(np.concatenate(hashes)) if hashes else np.empty(0, np.uint64)
            index.texts[str(raw)] = count
        return index

    def _found(self, source: str, hashes: np.ndarray) -> int:
        table = self.sources[source]
        if not len(table) or not len(hashes):
            return 0
        at = np.searchsorted(table, hashes).clip(max=len(table) - 1)
        return int((table[at] == hashes).sum())

    def contaminated_by(self, texts: Iterable[str]) -> list[str]:
        """The sources that contaminate any of ``texts`` (see the rule in the module docstring).

        Example:
            >>> index = NgramIndex(n=2, min_words=2, sources={"eval": _hashes([("paris", "is")])})
            >>> index.contaminated_by(["PARIS, is it?"]), index.contaminated_by(["is Paris"])
            (['eval'], [])
        """
        grams = [np.unique(_hashes(text_ngrams(t, self.n, self.min_words))) for t in texts]
        hit = []
        for source in self.sources:
            for h in grams:
                shared = self._found(source, h)
                if shared and shared >= self.min_share * len(h):
                    hit.append(source)
                    break
        return hit


@dataclass
class DecontaminationReport:
    """How many of ``rows`` rows were dropped, and how many rows each source contaminated
    (a row contaminated by two sources counts for both)."""

    rows: int = 0
    dropped: int = 0
    by_source: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """``decontamination: dropped N of M rows (K sharing an n-gram with <source>, ...)``.

        Example:
            >>> DecontaminationReport(10, 2, {"data/scifact": 2, "held.jsonl": 0}).line()
            'decontamination: dropped 2 of 10 rows (2 sharing an n-gram with data/scifact, 0 with held.jsonl)'
        """
        parts = [
            f"{k} {'sharing an n-gram ' if i == 0 else ''}with {source}"
            for i, (source, k) in enumerate(self.by_source.items())
        ]
        return f"decontamination: dropped {self.dropped} of {self.rows} rows ({', '.join(parts)})"

    def to_dict(self) -> dict:
        return {"rows": self.rows, "dropped": self.dropped, "by_source": dict(self.by_source)}


def decontaminate(rows, index: NgramIndex, fields: Sequence[str]):
    """``rows`` (a `datasets.Dataset` or a list of dicts) without the contaminated ones, and the report.

    ``fields`` are the columns whose texts are checked: strings or lists of strings (``negatives``);
    a missing column is skipped.

    Example:
        >>> index = NgramIndex(n=3, sources={"eval": _hashes([("the", "red", "fox")])})
        >>> rows = [{"query": "The red fox!", "positive": "x"}, {"query": "a blue fox", "positive": "y"}]
        >>> kept, report = decontaminate(rows, index, ["query", "positive"])
        >>> [r["query"] for r in kept], report.line()
        (['a blue fox'], 'decontamination: dropped 1 of 2 rows (1 sharing an n-gram with eval)')
    """
    names = list(rows.column_names) if hasattr(rows, "column_names") else None
    present = [f for f in fields if names is None or f in names]
    columns = rows.select_columns(present) if names is not None else rows
    report = DecontaminationReport(rows=len(rows), by_source={s: 0 for s in index.sources})
    keep = []
    for i, row in enumerate(columns):
        texts = [t for f in present for t in _strings(row.get(f) if isinstance(row, Mapping) else None)]
        hit = index.contaminated_by(texts)
        for source in hit:
            report.by_source[source] += 1
        if hit:
            report.dropped += 1
        else:
            keep.append(i)
    kept = rows.select(keep) if names is not None else [rows[i] for i in keep]
    return kept, report
