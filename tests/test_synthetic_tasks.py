"""Unit checks of the synthetic-data pieces: prompts, placeholders, languages, parsing,
validation, the log, the builder, conversion to training rows and the bundled sample."""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter

import pytest

from e5mistral.synthetic import SAMPLE_LOG, load_sample_training_rows, training_rows_from_log
from e5mistral.synthetic.builder import (
    KINDS,
    OUTPUT_FIELDS,
    E5SyntheticData,
    dataset_rows,
    features_for,
    read_generation_log,
)
from e5mistral.synthetic.log import GenerationLog, truncate_partial_last_line
from e5mistral.synthetic.plan import GenerationConfig, plan_requests
from e5mistral.synthetic.summary import summarize
from e5mistral.synthetic.languages import (
    DEFAULT_WEIGHTS,
    XLMR_LANGUAGES,
    parse_language_weights,
    sample_language,
    sample_language_pair,
)
from e5mistral.synthetic.llm.endpoints import retry_after_seconds
from e5mistral.synthetic.tasks import (
    BRAINSTORM_KINDS,
    PLACEHOLDER_VALUES,
    brainstorm_messages,
    example_messages,
    num_templates,
    plan_placeholders,
)
from e5mistral.synthetic.validation import (
    InvalidAnswer,
    extract_json,
    to_training_row,
    validate_brainstorm,
    validate_example,
)


# ------------------------------------------------------------------------------------------
# Prompts and placeholders
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_every_template_renders_with_its_fields_and_placeholders(kind):
    assert num_templates(kind, "example") >= 2
    rng = random.Random(0)
    texts = set()
    for template in range(num_templates(kind, "example")):
        for _ in range(8):
            placeholders = plan_placeholders(kind, rng, {"en": 1.0, "de": 1.0, "ja": 1.0})
            (message,) = example_messages(kind, template, "Retrieve recipes for a dish.", placeholders)
            content = message["content"]
            assert not re.search(r"\{[a-z_]+\}", content), content  # no placeholder left unfilled
            for field in OUTPUT_FIELDS[kind]:
                assert f'"{field}"' in content
            for name, value in placeholders.items():
                if name in ("language", "tgt_lang"):
                    assert XLMR_LANGUAGES[value] in content
                elif name in ("high_score", "low_score"):
                    assert f"{value:g}" in content
                else:
                    assert str(value) in content
            texts.add(content)
    assert len(texts) >= 2 * num_templates(kind, "example")  # placeholders change the prompt


@pytest.mark.parametrize("kind", BRAINSTORM_KINDS)
def test_brainstorm_templates(kind):
    assert num_templates(kind, "brainstorm") >= 2
    wordings = {brainstorm_messages(kind, t, 17)[0]["content"] for t in range(num_templates(kind, "brainstorm"))}
    assert len(wordings) == num_templates(kind, "brainstorm")
    assert all("17" in w and '"tasks"' in w for w in wordings)


def test_sts_and_bitext_skip_brainstorming():
    with pytest.raises(ValueError, match="no brainstorm step"):
        brainstorm_messages("sts", 0)
    brainstorms, examples = plan_requests(GenerationConfig(kinds=("sts", "bitext"), examples_per_kind=3))
    assert brainstorms == [] and len(examples) == 6


def test_placeholders_cover_the_recipe_value_sets():
    rng = random.Random(1)
    for kind, value_sets in PLACEHOLDER_VALUES.items():
        drawn = [plan_placeholders(kind, rng, {"en": 1.0, "fr": 1.0}) for _ in range(400)]
        for name, values in value_sets.items():
            assert {d[name] for d in drawn} == set(values), (kind, name)
    assert PLACEHOLDER_VALUES["short_long"]["num_words"] == (50, 100, 200, 300, 400, 500)
    assert set(PLACEHOLDER_VALUES["bitext"]["low_score"]) == {1.5, 2.0, 2.5}


def test_plan_is_deterministic_and_seeded():
    config = GenerationConfig(kinds=KINDS, examples_per_kind=30, seed=5)
    assert plan_requests(config) == plan_requests(GenerationConfig(kinds=KINDS, examples_per_kind=30, seed=5))
    other = plan_requests(GenerationConfig(kinds=KINDS, examples_per_kind=30, seed=6))[1]
    assert [r.placeholders for r in plan_requests(config)[1]] != [r.placeholders for r in other]
    # a request's draw depends on its position only, not on how many requests the run has
    longer = plan_requests(GenerationConfig(kinds=("sts",), examples_per_kind=60, seed=5))[1]
    assert plan_requests(GenerationConfig(kinds=("sts",), examples_per_kind=30, seed=5))[1] == longer[:30]
    templates = Counter((r.kind, r.template) for r in plan_requests(config)[1])
    assert all(templates[(kind, t)] > 0 for kind in KINDS for t in range(2))  # wordings are mixed


# ------------------------------------------------------------------------------------------
# Languages
# ------------------------------------------------------------------------------------------
def test_default_language_weights_follow_the_paper_shape():
    assert len(XLMR_LANGUAGES) == 100
    assert max(DEFAULT_WEIGHTS, key=DEFAULT_WEIGHTS.get) == "en"
    rng = random.Random(0)
    counts = Counter(sample_language(rng, DEFAULT_WEIGHTS) for _ in range(20000))
    share = counts["en"] / 20000
    assert 0.40 < share < 0.46  # the paper's data ended at 43.1% English
    assert 0.02 < counts["de"] / 20000 < 0.04
    assert sample_language(random.Random(9), DEFAULT_WEIGHTS) == sample_language(random.Random(9), DEFAULT_WEIGHTS)


def test_language_spec_parsing_and_errors():
    assert parse_language_weights("en:5, de:1") == {"en": 5.0, "de": 1.0}
    assert parse_language_weights("all") == DEFAULT_WEIGHTS
    with pytest.raises(ValueError, match="'xx' is not in the XLM-R list"):
        parse_language_weights("en,xx")
    with pytest.raises(ValueError, match="weights must be > 0"):
        parse_language_weights("en:0")
    with pytest.raises(ValueError, match="not a number"):
        parse_language_weights("en:lots")


def test_bitext_pairs_are_two_different_languages():
    rng = random.Random(2)
    pairs = [sample_language_pair(rng, {"en": 5.0, "de": 1.0, "zh": 1.0}) for _ in range(300)]
    assert all(src != tgt for src, tgt in pairs)
    assert len(set(pairs)) == 6
    with pytest.raises(ValueError, match="at least two languages"):
        sample_language_pair(rng, {"en": 1.0})


# ------------------------------------------------------------------------------------------
# Parsing and validation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": "b"}', {"a": "b"}),
        ('  \n{"a": [1, 2]}\n', {"a": [1, 2]}),
        ('```json\n{"a": "b"}\n```', {"a": "b"}),
        ('Here you go:\n```\n{"a": "}"}\n```\nEnjoy!', {"a": "}"}),
        ('Sure. {"a": "b {not json}"} That is all.', {"a": "b {not json}"}),
        ('I picked {these} words: {"a": 1}', {"a": 1}),
        ('["x", "y"]', ["x", "y"]),
    ],
)
def test_extract_json_tolerates_fences_and_prose(text, expected):
    assert extract_json(text) == expected


@pytest.mark.parametrize("text", ["", "no json at all", '{"a": "b"', "{'a': 'b'}", '{"a": NaN}', "print(1)"])
def test_extract_json_refuses_non_json(text):
    with pytest.raises(InvalidAnswer) as error:
        extract_json(text)
    assert error.value.reason == "invalid_json"


def _valid(kind):
    return {field: f"{field} text" for field in OUTPUT_FIELDS[kind]}


@pytest.mark.parametrize("kind", KINDS)
def test_validate_example_accepts_and_strips(kind):
    answer = {k: f"  {v} " for k, v in _valid(kind).items()}
    answer["extra"] = 3
    assert validate_example(kind, answer) == _valid(kind)


@pytest.mark.parametrize(
    "kind, change, reason",
    [
        ("short_long", {"hard_negative_document": None}, "missing_field"),
        ("short_long", {"user_query": "   "}, "empty_field"),
        ("short_long", {"positive_document": ["a list"]}, "off_schema"),
        ("long_short", {"label": "Sports", "misleading_label": " sports"}, "same_label"),
        ("sts", {"S3": None}, "missing_field"),
        ("bitext", {"S2": "same", "S3": "same"}, "same_text"),
        ("short_short", {"input": "same", "positive_document": "same"}, "same_text"),
    ],
)
def test_validate_example_rejects(kind, change, reason):
    answer = _valid(kind)
    for key, value in change.items():
        if value is None:
            del answer[key]
        else:
            answer[key] = value
    with pytest.raises(InvalidAnswer) as error:
        validate_example(kind, answer)
    assert error.value.reason == reason
    with pytest.raises(InvalidAnswer, match="expected a JSON object"):
        validate_example(kind, [answer])


def test_validate_brainstorm():
    assert validate_brainstorm(["A.", "B."]) == ["A.", "B."]
    with pytest.raises(InvalidAnswer, match="empty"):
        validate_brainstorm({"tasks": [" ", 3]})
    with pytest.raises(InvalidAnswer) as error:
        validate_brainstorm({"task": "A."})
    assert error.value.reason == "off_schema"


def test_retry_after_header_forms():
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "1500", "Retry-After": "9"}) == 1.5
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past


# ------------------------------------------------------------------------------------------
# Log, builder, conversion
# ------------------------------------------------------------------------------------------
def _record(kind, index, output, status="ok", language="en"):
    return {
        "id": f"0-{kind}-example-{index:06d}",
        "kind": kind,
        "step": "example",
        "index": index,
        "template": 1,
        "language": language,
        "placeholders": {
            "language": language,
            "unit": "sentence",
            "high_score": 4.5,
            "low_score": 3.0,
            "difficulty": "college",
        },
        "task": "Retrieve similar text.",
        "status": status,
        "output": output,
        "failure": None if status == "ok" else {"reason": "invalid_json", "detail": "x"},
        "attempts": 1,
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        "model": "m",
        "endpoint": "",
    }


def test_dataset_rows_order_by_position_and_drop_exact_duplicates():
    a = {"S1": "a", "S2": "b", "S3": "c"}
    records = [
        _record("sts", 3, a),
        _record("sts", 1, {"S1": "x", "S2": "y", "S3": "z"}),
        _record("sts", 0, a),
        _record("sts", 2, None, status="failed"),
        _record("sts", 4, {"S1": "a", "S2": "b", "S3": "c "}),
    ]
    rows = list(dataset_rows(records, "sts"))
    assert [r["id"] for r in rows] == ["0-sts-example-000000", "0-sts-example-000001", "0-sts-example-000004"]
    assert rows[0]["high_score"] == 4.5 and rows[0]["unit"] == "sentence"
    assert set(rows[0]) == set(features_for("sts"))
    summary = summarize(records, ["sts"])
    assert summary["examples"] == {"sts": 3} and summary["duplicates_dropped"] == {"sts": 1}
    assert summary["failures_by_reason"] == {"invalid_json": 1} and summary["prompt_tokens"] == 50


def test_log_repairs_a_cut_last_line_and_keeps_the_first_record_per_id(tmp_path):
    path = tmp_path / "log.jsonl"
    first = _record("sts", 0, {"S1": "a", "S2": "b", "S3": "c"})
    second = _record("sts", 1, {"S1": "d", "S2": "e", "S3": "f"})
    path.write_text(json.dumps(first) + "\n" + json.dumps(second)[:40])
    assert [r["id"] for r in read_generation_log(path)] == [first["id"]]
    log = GenerationLog(path)
    log.append(second)
    log.append({**first, "output": {"S1": "other", "S2": "b", "S3": "c"}})
    log.close()
    records = read_generation_log(path)
    assert [r["id"] for r in records] == [first["id"], second["id"]]
    assert records[0]["output"]["S1"] == "a"
    # a tail cut inside a multi-byte character, repaired by scanning back in small chunks
    data = (json.dumps(first) + "\n").encode() + json.dumps(
        {**second, "task": "Übersetzung"}, ensure_ascii=False
    ).encode()
    path.write_bytes(data[: data.index("Ü".encode()) + 1])
    assert [r["id"] for r in read_generation_log(path)] == [first["id"]]
    truncate_partial_last_line(path, chunk=8)
    assert path.read_bytes() == (json.dumps(first) + "\n").encode()
    path.write_text(json.dumps(first) + "\n{broken\n" + json.dumps(second) + "\n")
    with pytest.raises(ValueError, match=r"log.jsonl:2: not a JSON line"):
        read_generation_log(path)


def test_builder_builds_each_config_from_the_log(tmp_path):
    rows = {}
    for kind in ("long_short", "bitext"):
        builder = E5SyntheticData(config_name=kind, log_path=SAMPLE_LOG, cache_dir=str(tmp_path))
        builder.download_and_prepare()
        dataset = builder.as_dataset("train")
        assert dataset.features == features_for(kind)
        rows[kind] = dataset.to_list()
    records = read_generation_log(SAMPLE_LOG)
    assert rows["long_short"] == list(dataset_rows(records, "long_short"))
    assert all(r["tgt_lang"] != r["language"] for r in rows["bitext"])
    with pytest.raises(FileNotFoundError, match="generation="):
        E5SyntheticData(
            config_name="sts", log_path=str(tmp_path / "nope.jsonl"), cache_dir=str(tmp_path)
        ).download_and_prepare()


@pytest.mark.parametrize("kind", KINDS)
def test_to_training_row_per_kind(kind):
    row = {"task": "Do the thing.", "language": "de", **_valid(kind)}
    out = to_training_row(kind, row)
    query, positive, *negatives = OUTPUT_FIELDS[kind]
    assert out == {
        "query": f"{query} text",
        "positive": f"{positive} text",
        "negatives": [f"{n} text" for n in negatives],
        "instruction": "Do the thing.",
        "task": kind,
        "language": "de",
    }
    del row[positive]
    with pytest.raises(KeyError, match=positive):
        to_training_row(kind, row)


# ------------------------------------------------------------------------------------------
# The bundled sample
# ------------------------------------------------------------------------------------------
def test_sample_log_is_valid_generator_output():
    records = read_generation_log(SAMPLE_LOG)
    examples = [r for r in records if r["step"] == "example"]
    assert len(examples) >= 250
    for record in examples:
        assert record["status"] == "ok"
        assert validate_example(record["kind"], record["output"]) == record["output"], record["id"]
        assert record["task"]
        for field in OUTPUT_FIELDS[record["kind"]]:
            assert len(record["output"][field].split()) <= 90 or record["language"] in ("zh", "ja"), record["id"]
        if record["kind"] in BRAINSTORM_KINDS:  # the task comes from a logged brainstorm
            pools = [r["output"]["tasks"] for r in records if r["step"] == "brainstorm" and r["kind"] == record["kind"]]
            assert any(record["task"] in pool for pool in pools), record["id"]
    kinds = Counter(r["kind"] for r in examples)
    assert set(kinds) == set(KINDS)
    languages = Counter(r["language"] for r in examples)
    assert len(languages) >= 5 and languages.most_common(1)[0][0] == "en"
    # exact duplicates would be dropped silently: the sample should have none
    assert sum(summarize(records)["duplicates_dropped"].values()) == 0


def test_load_sample_training_rows_schema():
    rows = load_sample_training_rows()
    assert len(rows) >= 250
    assert rows == training_rows_from_log(SAMPLE_LOG)
    for row in rows:
        assert set(row) == {"query", "positive", "negatives", "instruction", "task", "language"}
        assert all(isinstance(row[k], str) and row[k] for k in ("query", "positive", "instruction", "task", "language"))
        assert isinstance(row["negatives"], list) and all(isinstance(n, str) and n for n in row["negatives"])
        assert row["positive"] not in row["negatives"]
        assert len(row["negatives"]) == (0 if row["task"] in ("short_short", "long_long") else 1)
    assert {r["task"] for r in rows} == set(KINDS)
    assert not any(set(r["query"]) <= set(string.digits + string.whitespace) for r in rows)
