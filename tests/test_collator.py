"""The collator: instruction on queries only, EOS kept under truncation, layout, errors naming the column."""

from __future__ import annotations

import json

import pytest
import torch

from e5mistral import format_query
from e5mistral.testing import make_tiny_tokenizer
from e5mistral.training.collator import E5Collator
from e5mistral.training.data import load_rows, load_training_data, parse_mixture
from e5mistral.training.loss import text_ids

TOKENIZER = make_tiny_tokenizer()

ROWS = [
    {
        "query": "how tall is mont blanc",
        "positive": "Mont Blanc is 4,806 m high.",
        "negatives": ["Everest is taller.", "x"],
        "instruction": "Given a question, find the passage",
        "task": "short_long",
        "language": "en",
    },
    {
        "query": "chat noir",
        "positive": "black cat",
        "negatives": [],
        "instruction": "",
        "task": "bitext",
        "language": "fr",
    },
]


def decode(ids, mask):
    return TOKENIZER.decode([i for i, m in zip(ids.tolist(), mask.tolist()) if m], skip_special_tokens=True)


def test_queries_carry_the_instruction_documents_do_not_and_layout_is_positives_then_negatives():
    batch = E5Collator(TOKENIZER, num_negatives=1)(ROWS)
    queries = [decode(i, m) for i, m in zip(batch["query"]["input_ids"], batch["query"]["attention_mask"])]
    documents = [decode(i, m) for i, m in zip(batch["document"]["input_ids"], batch["document"]["attention_mask"])]
    assert queries == [format_query(ROWS[0]["instruction"], ROWS[0]["query"]), "chat noir"]
    assert queries[0].startswith("Instruct: Given a question, find the passage\nQuery: ")
    assert documents == ["Mont Blanc is 4,806 m high.", "black cat", "Everest is taller."]  # 1 negative kept
    assert batch["document_ids"].tolist() == text_ids(documents).tolist()
    assert len(E5Collator(TOKENIZER, num_negatives=None)(ROWS)["document"]["input_ids"]) == 4


def test_every_text_ends_with_eos_even_when_truncated_and_sides_have_their_own_lengths():
    batch = E5Collator(TOKENIZER, query_max_length=6, passage_max_length=9)(ROWS)
    for side, limit in (("query", 6), ("document", 9)):
        ids, mask = batch[side]["input_ids"], batch[side]["attention_mask"]
        assert ids.shape[1] <= limit
        last = mask.sum(1) - 1  # right padding
        assert ids.gather(1, last[:, None]).squeeze(1).tolist() == [TOKENIZER.eos_token_id] * ids.shape[0]
    assert batch["query"]["input_ids"].shape[1] == 6  # the long instruction was truncated, EOS kept


def test_single_negative_column_is_accepted():
    rows = [{"query": "a", "positive": "b", "negative": "c"}, {"query": "d", "positive": "e", "negative": None}]
    batch = E5Collator(TOKENIZER)(rows)
    assert batch["document"]["input_ids"].shape[0] == 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"positive": "b"}, "batch row 1: column 'query' is missing"),
        ({"query": "a", "positive": ""}, "batch row 1: column 'positive' must be a non-empty str"),
        ({"query": "a", "positive": "b", "negatives": "c"}, "batch row 1: column 'negatives' must be a list"),
    ],
)
def test_malformed_rows_name_the_row_and_column(row, message):
    with pytest.raises(ValueError, match=message):
        E5Collator(TOKENIZER)([ROWS[0], row])


def test_loading_files_folders_and_mixtures(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text(
        "".join(json.dumps({"query": f"qa{i}", "positive": f"pa{i}", "negative": f"na{i}"}) + "\n" for i in range(30))
    )
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    (b_dir / "part.json").write_text(
        json.dumps(
            [
                {
                    "query": f"qb{i}",
                    "positive": f"pb{i}",
                    "negatives": [],
                    "task": "tb",
                    "instruction": "Find the passage",
                    "language": "de",
                }
                for i in range(10)
            ]
        )
    )
    rows = load_rows(str(a))
    assert rows.column_names == ["query", "positive", "negatives", "instruction", "task", "language"]
    assert rows[0]["negatives"] == ["na0"] and rows[0]["task"] == "a"
    mixture = load_training_data(f"{a}=3,{b_dir}=1")
    tasks = list(mixture["task"])
    assert (tasks.count("a"), tasks.count("tb")) == (30, 10)  # 3:1, the largest mix with no row repeated
    mixture = load_training_data(f"{a}=1,{b_dir}=1")
    assert (list(mixture["task"]).count("a"), list(mixture["task"]).count("tb")) == (10, 10)
    assert parse_mixture("x") == [("x", None)]
    with pytest.raises(ValueError, match="ratio to every source"):
        parse_mixture("x=1,y")


def test_schema_errors_name_source_column_and_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"query": "q", "positive": "p"}) + "\n" + json.dumps({"query": "q2", "positive": ""}) + "\n"
    )
    with pytest.raises(ValueError, match=r"bad.jsonl: column 'positive', row 1: expected a non-empty string"):
        load_rows(str(bad))
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"question": "q", "positive": "p"}) + "\n")
    with pytest.raises(ValueError, match="required column 'query' is missing"):
        load_rows(str(missing))


def test_batches_are_right_padded_whatever_the_tokenizer_side():
    """Length-sorted chunks trim trailing padding; a left-padding tokenizer must not defeat that."""
    left = make_tiny_tokenizer(padding_side="left")
    batch = E5Collator(left, query_max_length=32, passage_max_length=32)(ROWS)
    for side in ("query", "document"):
        mask = batch[side]["attention_mask"]
        assert bool(mask[:, 0].all())  # every row starts with a real token
        assert int(mask.sum()) < mask.numel()  # there is padding, and it is at the end of each row
        assert torch.equal(mask, (torch.arange(mask.shape[1]) < mask.sum(1, keepdim=True)).long())
    assert left.padding_side == "left"  # the tokenizer itself is left as it was
    right = E5Collator(TOKENIZER, query_max_length=32, passage_max_length=32)(ROWS)
    assert torch.equal(batch["document"]["input_ids"], right["document"]["input_ids"])


def test_a_folder_is_split_by_file_names_as_on_the_hub(tmp_path):
    """A folder with train-*/validation-* files must not train on its validation rows."""
    folder = tmp_path / "rows"
    (folder / "data").mkdir(parents=True)
    for split, n in (("train", 5), ("validation", 2)):
        lines = [json.dumps({"query": f"{split} q{i}", "positive": f"{split} p{i}"}) for i in range(n)]
        (folder / "data" / f"{split}-00000-of-00001.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "raw").mkdir()
    (folder / "raw" / "log.jsonl").write_text('{"not": "a row"}\n')  # matches no split: never read
    train = load_rows(str(folder), "train")
    dev = load_rows(str(folder), "validation")
    assert sorted(train["query"]) == [f"train q{i}" for i in range(5)]
    assert sorted(dev["query"]) == ["validation q0", "validation q1"]
    with pytest.raises(ValueError, match=r"splits \['train', 'validation'\].*not 'test'"):
        load_rows(str(folder), "test")

    plain = tmp_path / "plain"  # no split in any name: every split is the whole folder, as before
    plain.mkdir()
    (plain / "rows.jsonl").write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
    assert len(load_rows(str(plain), "train")) == len(load_rows(str(plain), "validation")) == 1
