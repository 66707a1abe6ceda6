"""Reading every source kind gives the same records; row numbers, renames and malformed lines."""

from __future__ import annotations

import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.data import DataConfig, DataError, PreferenceRecord, RankedRecord, SFTRecord, load_records
from rlhf.data.io import read_rows

# Every row has every key: pyarrow and datasets infer the schema from the first row.
ROWS = [
    {"prompt": "hello", "chosen": "good", "rejected": "bad", "margin": None},
    {"prompt": "how are you", "chosen": "fine thanks", "rejected": "bad", "margin": 1.5},
    {"prompt": "hi", "chosen": "hi there", "rejected": "hello world", "margin": None},
]
EXPECTED = [
    PreferenceRecord("hello", "good", "bad", None),
    PreferenceRecord("how are you", "fine thanks", "bad", 1.5),
    PreferenceRecord("hi", "hi there", "hello world", None),
]


def cfg(train, **kw) -> DataConfig:
    # Some sources here hold bad lines on purpose: data.max_skip_fraction is off unless set.
    return DataConfig(train=str(train), **{"max_skip_fraction": 1.0, **kw})


def write_jsonl(path, rows, opener=open):
    with opener(path, "wt") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def write_csv(path, rows):
    cols = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})  # None -> ""


def writers():
    def jsonl(p):
        write_jsonl(p / "d.jsonl", ROWS)
        return p / "d.jsonl", [1, 2, 3]

    def jsonl_gz(p):
        write_jsonl(p / "d.jsonl.gz", ROWS, gzip.open)
        return p / "d.jsonl.gz", [1, 2, 3]

    def json_list(p):
        (p / "d.json").write_text(json.dumps(ROWS))
        return p / "d.json", [1, 2, 3]

    def json_wrapped(p):
        (p / "d.json").write_text(json.dumps({"version": 1, "data": ROWS}))
        return p / "d.json", [1, 2, 3]

    def json_lines_in_json(p):  # what datasets.Dataset.to_json writes
        write_jsonl(p / "d.json", ROWS)
        return p / "d.json", [1, 2, 3]

    def parquet(p):
        pq.write_table(pa.Table.from_pylist(ROWS), p / "d.parquet")
        return p / "d.parquet", [1, 2, 3]

    def csv_file(p):
        write_csv(p / "d.csv", ROWS)
        return p / "d.csv", [2, 3, 4]  # line numbers: the header is line 1

    def saved_dataset(p):
        import datasets
        datasets.Dataset.from_list(ROWS).save_to_disk(str(p / "ds"))
        return p / "ds", [1, 2, 3]

    return [jsonl, jsonl_gz, json_list, json_wrapped, json_lines_in_json, parquet, csv_file, saved_dataset]


@pytest.mark.parametrize("writer", writers(), ids=lambda w: w.__name__)
def test_every_file_format_gives_the_same_records(tmp_path, writer):
    path, numbers = writer(tmp_path)
    recs, report = load_records(cfg(path), "preference")
    assert recs == EXPECTED
    assert [r.origin for r in recs] == [(str(path), n) for n in numbers]
    assert report.rows_read == 3 and report.records == 3 and report.counts == {}


def test_saved_datasetdict_reads_the_requested_split(tmp_path):
    import datasets
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2]),
                               "test": datasets.Dataset.from_list(ROWS[2:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    train, _ = load_records(cfg(tmp_path / "dd"), "preference")
    test, _ = load_records(cfg(tmp_path / "dd"), "preference", split="test")
    assert train == EXPECTED[:2] and test == EXPECTED[2:]
    assert test[0].origin == (f"{tmp_path / 'dd'}[test]", 1)
    with pytest.raises(DataError, match=r"split: one of \['test', 'train'\] \(got 'valid'\)"):
        load_records(cfg(tmp_path / "dd"), "preference", split="valid")


def test_jsonl_row_numbers_are_line_numbers_and_blank_lines_are_not_rows(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n" + json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n   \n")
    rows = read_rows(str(p))
    assert [r.number for r in rows] == [2, 4]


def test_csv_row_numbers_follow_multiline_cells(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('prompt,completion\n"two\nlines",x\nhello,world\n')
    rows = read_rows(str(p))
    assert [(r.number, r.data["prompt"]) for r in rows] == [(2, "two\nlines"), (4, "hello")]


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [json.dumps(ROWS[0]), '{"prompt": "x", "chosen": ', json.dumps(ROWS[1]), "[1, 2]", json.dumps(ROWS[2])]
    p.write_text("\n".join(lines) + "\n")
    recs, report = load_records(cfg(p), "preference")
    assert recs == EXPECTED
    assert report.counts == {"malformed line": 2}
    assert report.examples["malformed line"] == [(str(p), 2), (str(p), 4)]
    assert report.rows_read == 5
    with pytest.raises(DataError) as e:
        load_records(cfg(p, strict=True), "preference")
    assert str(e.value) == (f"{p}:2: line: a JSON object: a JSON value at column 27 (the line ends at "
                            "column 26: cut short?) near 'pt\": \"x\", \"chosen\": '")


def test_column_renames(tmp_path):
    p = tmp_path / "d.jsonl"
    write_jsonl(p, [{"question": "hello", "answer": "hi there", "id": 7}])
    recs, _ = load_records(cfg(p, columns={"prompt": "question", "completion": "answer"}), "sft")
    assert recs == [SFTRecord("hello", "hi there")]


def test_rename_of_a_missing_column_is_an_error_naming_the_columns(tmp_path):
    p = tmp_path / "d.jsonl"
    write_jsonl(p, [{"question": "hello", "answer": "hi"}])
    with pytest.raises(DataError) as e:
        load_records(cfg(p, columns={"prompt": "query", "completion": "answer"}), "sft")
    assert str(e.value) == (f"{p}: columns.prompt: column 'query' not found; "
                            "the source has columns ['answer', 'question']")


def test_csv_cells_hold_json_lists_and_numbers(tmp_path):
    p = tmp_path / "d.csv"
    write_csv(p, [{"prompt": "hi", "responses": ["a", "b", "c"], "scores": [1, 3, 2]}])
    (rec,), _ = load_records(cfg(p), "ranked")
    assert rec == RankedRecord("hi", ["a", "b", "c"], [1.0, 3.0, 2.0])


def test_parquet_list_columns_are_python_lists(tmp_path):
    # Arrow gives every message the keys of all messages ("name": None here); they are dropped.
    msgs = [{"role": "user", "content": "hello", "name": "ann"}, {"role": "assistant", "content": "hi"}]
    pq.write_table(pa.Table.from_pylist([{"messages": msgs}]), tmp_path / "m.parquet")
    (rec,), _ = load_records(cfg(tmp_path / "m.parquet"), "sft")
    assert rec == SFTRecord(msgs[:1], msgs[1:])


@pytest.mark.parametrize("name, fragment", [
    ("d.txt", "file: a file ending in .jsonl, .ndjson, .json, .parquet, .csv (optionally .gz) (got 'd.txt')"),
])
def test_unknown_extension(tmp_path, name, fragment):
    (tmp_path / name).write_text("x")
    with pytest.raises(DataError) as e:
        load_records(cfg(tmp_path / name), "sft")
    assert str(e.value) == f"{tmp_path / name}: {fragment}"


def test_a_missing_file_is_not_sent_to_the_hub(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as e:
        load_records(cfg(missing), "sft")
    assert str(e.value) == f"{missing}: source: an existing file (no such file or folder)"


def test_unrecognised_columns_say_what_is_expected(tmp_path):
    p = tmp_path / "d.jsonl"
    write_jsonl(p, [{"question": "hello", "answer": "hi"}])
    with pytest.raises(DataError) as e:
        load_records(cfg(p), "sft")
    assert str(e.value).startswith(f"{p}: columns: columns that name a format (got ['answer', 'question'])")
