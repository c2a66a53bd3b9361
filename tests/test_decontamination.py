"""Decontamination: normalisation, n-gram rules and exact counts on a hand-made BEIR folder; the
training loader (its line, the run record) and the generator's export (the summary, the Parquet)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from e5mistral.decontamination import NgramIndex, decontaminate, normalize, text_ngrams
from e5mistral.errors import UserError

# 20 words; rows below copy spans of it
DOC0 = "The quick brown fox jumps over the lazy dog near the old river bank while seven small birds sing loudly"
DOC1_TITLE = "Mount Everest"
DOC1 = "is the highest mountain above sea level located in the Mahalangur Himal range of Asia"
QUERY0 = "what is the tallest mountain on earth"  # 7 words: one whole-text n-gram
QUERY1 = "fox river"  # 2 words: below min_words, never matches


def _beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        f.write(json.dumps({"_id": "d0", "title": "", "text": DOC0}) + "\n")
        f.write(json.dumps({"_id": "d1", "title": DOC1_TITLE, "text": DOC1}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        f.write(json.dumps({"_id": "q0", "text": QUERY0}) + "\n")
        f.write(json.dumps({"_id": "q1", "text": QUERY1}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td1\t1\n")
    return folder


WORDS0 = DOC0.split()
ROWS = [
    # 0: 13 words of DOC0 with other case, punctuation and spacing -> dropped
    {"query": "a question", "positive": "Intro: " + "  ".join(w.upper() + "," for w in WORDS0[2:15]) + " end",
     "negatives": []},
    # 1: the query is QUERY0 with other case and punctuation -> dropped
    {"query": "What is the TALLEST mountain, on Earth?", "positive": "some answer text here", "negatives": []},
    # 2: a negative spans DOC1's title-text seam ("Mount Everest is the highest ...") -> dropped
    {"query": "another one", "positive": "fine text",
     "negatives": ["ok", "We know Mount Everest is the highest mountain above sea level located in the Mahalangur."]},
    # 3: only 12 consecutive words of DOC0 -> kept
    {"query": "q3", "positive": " ".join(WORDS0[:12]) + " and then something else entirely different", "negatives": []},
    # 4: unrelated -> kept
    {"query": "how do bees make honey", "positive": "Bees collect nectar and turn it into honey.", "negatives": []},
    # 5: QUERY0 inside a longer text (a short text is matched whole, not inside others) -> kept
    {"query": "q5", "positive": f"people often ask {QUERY0} and the answer is known", "negatives": []},
    # 6: exactly QUERY1, below min_words -> kept
    {"query": "Fox, river!", "positive": "p6 text", "negatives": []},
]  # fmt: skip
FIELDS = ["query", "positive", "negatives"]


def test_normalisation_ignores_case_punctuation_and_whitespace():
    assert normalize("  Hello,\tWORLD!!  it's\n\nme_2 ") == ["hello", "world", "it", "s", "me", "2"]
    assert normalize("Straße ÉTÉ") == ["strasse", "été"]  # case folded; accents kept
    assert normalize("ﬁne ① Ｆｕｌｌ") == ["fine", "1", "full"]  # NFKC: ligatures, circled and full-width forms
    assert text_ngrams("A, b. C! d", n=3) == text_ngrams("a b c d", n=3) == [("a", "b", "c"), ("b", "c", "d")]
    assert text_ngrams("one two three", n=13) == [] and text_ngrams("one two three four", n=13) == [
        ("one", "two", "three", "four")
    ]


def test_exact_counts_on_a_hand_made_beir_folder(tmp_path):
    folder = str(_beir(tmp_path / "toy"))
    index = NgramIndex.build([folder])
    assert index.texts == {folder: 4} and index.n == 13
    kept, report = decontaminate(ROWS, index, FIELDS)
    assert [r["query"] for r in kept] == [ROWS[i]["query"] for i in (3, 4, 5, 6)]
    assert (report.rows, report.dropped, report.by_source) == (7, 3, {folder: 3})
    assert report.line() == f"decontamination: dropped 3 of 7 rows (3 sharing an n-gram with {folder})"
    # a smaller n catches row 3 (12 shared words); the short texts stay as they were
    _, report = decontaminate(ROWS, NgramIndex.build([folder], n=12), FIELDS)
    assert report.dropped == 4


def test_overlap_share_and_several_sources(tmp_path):
    folder = str(_beir(tmp_path / "toy"))
    plain = tmp_path / "held_out.jsonl"  # any string, or string in a list, of a plain file is a text
    plain.write_text(json.dumps({"id": 1, "texts": ["bees collect nectar and turn it into honey"]}) + "\n")
    rows = [*ROWS, {"query": "Bees collect nectar and turn it into honey!", "positive": DOC0, "negatives": []}]
    kept, report = decontaminate(rows, NgramIndex.build([folder, str(plain)]), FIELDS)
    assert report.dropped == 5 and report.by_source == {folder: 4, str(plain): 2}  # the last row counts for both
    assert report.line().endswith(f"(4 sharing an n-gram with {folder}, 2 with {plain})")
    # row 0's positive has 15 words, 3 of its 13-grams; 1 of them is DOC0's: share 1/3
    assert decontaminate(ROWS[:1], NgramIndex.build([folder], min_share=0.3), FIELDS)[1].dropped == 1
    assert decontaminate(ROWS[:1], NgramIndex.build([folder], min_share=0.5), FIELDS)[1].dropped == 0


def test_parquet_and_json_files_and_datasets(tmp_path):
    import datasets

    rows = datasets.Dataset.from_list(ROWS)
    datasets.Dataset.from_list([{"text": QUERY0, "n": 3}]).to_parquet(str(tmp_path / "eval.parquet"))
    (tmp_path / "eval.json").write_text(json.dumps([{"sentence": DOC0}]))
    index = NgramIndex.build([str(tmp_path / "eval.parquet"), str(tmp_path / "eval.json")])
    kept, report = decontaminate(rows, index, FIELDS)
    assert isinstance(kept, datasets.Dataset) and kept.column_names == rows.column_names
    assert report.by_source == {str(tmp_path / "eval.parquet"): 1, str(tmp_path / "eval.json"): 1}
    assert kept["query"] == [ROWS[i]["query"] for i in (2, 3, 4, 5, 6)]


@pytest.mark.parametrize(
    "path,message",
    [
        ("missing-folder", "decontaminate_against: '{}' does not exist; give a BEIR folder"),
        ("notes.txt", "decontaminate_against: '{}' is not a .jsonl, .json or .parquet file, nor a folder."),
        ("empty", "decontaminate_against: folder '{}' has no corpus.jsonl/queries.jsonl"),
    ],
)
def test_a_bad_evaluation_path_is_one_clear_error(tmp_path, path, message):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as error:
        NgramIndex.build([str(tmp_path / path)])
    assert str(error.value).startswith(message.format(tmp_path / path)) and "\n" not in str(error.value)


# ---- the training loader and the run record ----


def _rows_file(path: Path) -> str:
    path.write_text("".join(json.dumps({**r, "instruction": "", "task": "t", "language": "en"}) + "\n" for r in ROWS))
    return str(path)


def test_training_loader_drops_prints_and_records(tmp_path, capsys):
    from e5mistral.training.arguments import E5ScriptArguments, E5TrainingArguments
    from e5mistral.training.inputs import load_datasets
    from e5mistral.training.run_record import RunRecord

    folder = str(_beir(tmp_path / "toy"))
    data = _rows_file(tmp_path / "rows.jsonl")
    training_args = E5TrainingArguments(str(tmp_path / "out"), report_to="none")

    off = E5ScriptArguments(dataset_name=data)
    record: dict = {}
    train, _ = load_datasets(off, training_args, record)
    assert len(train) == 7 and record == {} and "decontamination" not in capsys.readouterr().out

    on = E5ScriptArguments(dataset_name=data, decontaminate_against=[folder], eval_split_size=1)
    train, dev = load_datasets(on, training_args, record)
    assert capsys.readouterr().out.splitlines() == [
        f"decontamination: dropped 3 of 7 rows (3 sharing an n-gram with {folder})"
    ]
    assert len(train) + len(dev) == 4  # dropped before the dev row is held out
    assert set(train["query"]) | set(dev["query"]) == {ROWS[i]["query"] for i in (3, 4, 5, 6)}
    assert record["decontamination"] == {
        "rows": 7, "dropped": 3, "by_source": {folder: 3}, "against": [folder], "ngram": 13, "min_words": 4,
        "min_share": 0.0,
    }  # fmt: skip

    trainer = SimpleNamespace(
        args=SimpleNamespace(world_size=1, per_device_train_batch_size=2, gradient_accumulation_steps=1),
        train_dataset=train,
        eval_dataset=dev,
    )
    info = RunRecord.for_script(on, SimpleNamespace(model_name_or_path="m", tiny_model=False),
                                record["decontamination"]).training_info(trainer)  # fmt: skip
    assert info["decontamination"]["dropped"] == 3 and info["num_train_rows"] == len(train)
    assert "decontamination" not in RunRecord(base_model="m").training_info(trainer)


def test_train_command_parses_the_option_and_stops_on_a_missing_path(tmp_path, capsys):
    from e5mistral.cli import train

    data = _rows_file(tmp_path / "rows.jsonl")
    argv = ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"), "--dataset_name", data,
            "--output_dir", str(tmp_path / "out"), "--decontaminate_against", str(tmp_path / "a"), str(tmp_path / "b"),
            "--decontamination_ngram", "8"]  # fmt: skip
    script_args = train.parse_args(argv)[0]
    assert script_args.decontaminate_against == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert script_args.decontamination_ngram == 8
    assert train.main(argv) == 2  # before any model is loaded
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: decontaminate_against: '{tmp_path / 'a'}' does not exist; give a BEIR folder "
                   "(corpus.jsonl, queries.jsonl), a folder of .jsonl/.json/.parquet files, or one such file."]  # fmt: skip


def test_a_training_run_records_the_decontamination(tmp_path, capsys):
    from e5mistral.cli import train

    folder = tmp_path / "toy"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d0", "text": "the answer 3 for item 3 is here"}) + "\n")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "Question 5, about item 5?"}) + "\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(
        json.dumps({"query": f"question {i} about item {i}", "positive": f"the answer {i} for item {i}"}) + "\n"
        for i in range(60)
    ))  # fmt: skip
    out = tmp_path / "out"
    argv = ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"), "--dataset_name", str(rows),
            "--output_dir", str(out), "--max_steps", "1", "--decontaminate_against", str(folder),
            "--decontamination_ngram", "4"]  # fmt: skip
    assert train.run(*train.parse_args(argv)) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"decontamination: dropped 2 of 60 rows (2 sharing an n-gram with {folder})"  # rows 3 and 5, not 30-39
    )
    info = json.loads((out / "training_info.json").read_text())
    assert info["decontamination"]["dropped"] == 2 and info["decontamination"]["ngram"] == 4
    card = (out / "README.md").read_text()
    assert f"| decontaminated against | `{folder}` (4-word n-grams) |" in card
    assert "| rows dropped by decontamination | 2 of 60 |" in card


# ---- the generator's export ----


def _words(text: str) -> str:
    return " " + " ".join(normalize(text)) + " "


def test_generated_export_is_filtered_and_the_summary_says_so(tmp_path, capsys):
    """Generate once (all rows exported), then rerun the same command with --decontaminate-against an
    evaluation file holding texts of some exported rows: nothing is requested again, and the export
    keeps exactly the rows an independent check (word-string containment) finds clean. The scripted
    server's texts are two words ("query 649595734"), hence n = 2 here."""
    import pyarrow.parquet as pq

    from e5mistral.cli import generate as generate_command
    from e5mistral.synthetic.builder import OUTPUT_FIELDS
    from e5mistral.testing import ScriptedServer

    def exported(kind):  # read the Parquet itself (`load_dataset` would serve its cache of the first export)
        return pq.read_table(out / "data" / kind / "train-00000-of-00001.parquet").to_pydict()

    out = tmp_path / "synthetic-data"
    with ScriptedServer() as server:
        argv = ["--base-url", server.url, "--model", "scripted", "--kinds", "short_long,sts",
                "--examples-per-kind", "6", "--languages", "en", "--concurrency", "2", "--seed", "0", "--timeout", "5",
                "--backoff-base", "0.01", "--no-progress", "--output", str(out)]  # fmt: skip
        assert generate_command.main(argv) == 0
        before = {k: exported(k) for k in ("short_long", "sts")}
        evaluation = [f"Is {before['short_long']['user_query'][1].upper()} here?", before["sts"]["S2"][4] + "!"]
        (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in evaluation))
        capsys.readouterr()
        flags = ["--decontaminate-against", str(tmp_path / "eval.jsonl"), "--decontamination-ngram", "2"]
        assert generate_command.main([*argv, *flags]) == 0
    printed = capsys.readouterr().out

    expected = {}
    for kind, rows in before.items():  # independent oracle: a text's 2 words appear in a row in an evaluation text
        texts = [[rows[f][r] for f in OUTPUT_FIELDS[kind]] for r in range(len(rows["id"]))]
        expected[kind] = sum(
            any(_words(" ".join(normalize(t)[i : i + 2])) in _words(e)
                for t in row for i in range(len(normalize(t)) - 1) for e in evaluation)
            for row in texts
        )  # fmt: skip
    assert expected == {"short_long": 1, "sts": 1}
    after = {k: exported(k) for k in ("short_long", "sts")}
    assert {k: len(before[k]["id"]) - len(after[k]["id"]) for k in after} == expected
    assert after["short_long"]["id"] == [i for n, i in enumerate(before["short_long"]["id"]) if n != 1]
    assert after["sts"]["id"] == [i for n, i in enumerate(before["sts"]["id"]) if n != 4]
    assert f"decontamination: dropped 2 of 12 rows (2 sharing an n-gram with {tmp_path / 'eval.jsonl'})" in printed
    assert "dropped per kind: short_long 1, sts 1" in printed
    assert "short_long         5" in printed  # the summary counts the rows exported
    card = (out / "README.md").read_text()
    assert "were dropped: 2 of 12." in card
    assert Counter(after["sts"]["language"]) == {"en": 5}


def test_generate_refuses_a_missing_path_before_generating(tmp_path, capsys):
    from e5mistral.cli import generate as generate_command

    code = generate_command.run(["--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--kinds", "sts",
                                 "--examples-per-kind", "1", "--output", str(tmp_path / "o"),
                                 "--decontaminate-against", str(tmp_path / "nope")])  # fmt: skip
    assert code == 2 and not (tmp_path / "o").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: decontaminate_against: '{tmp_path / 'nope'}' does not exist")
