"""Read raw rows from files, saved datasets and the Hugging Face hub.

A *row* is a plain dict plus where it came from (source name and 1-based row number) so that
every later error can point at it. What a source string means:

* an existing file, by extension (a trailing ``.gz`` is decompressed first):
  ``.jsonl``/``.ndjson`` (one JSON object per line), ``.json`` (a list of objects, an object
  holding one such list, or JSON Lines, which is what ``datasets.Dataset.to_json`` writes),
  ``.parquet``, ``.csv``;
* an existing folder: a ``datasets.save_to_disk`` folder (Dataset or DatasetDict), otherwise a
  folder of data files read by ``datasets.load_dataset``;
* anything else: a hub dataset id, read with ``datasets.load_dataset(id, split=split)``.

Row numbers are line numbers for ``.jsonl`` and ``.csv`` (the CSV header is line 1), and the
1-based position for everything else. CSV cells are strings; an empty cell is "no value" and a
cell holding a JSON list is that list (CSV has no other way to hold messages or scores). A JSON
Lines line that does not parse is skipped and counted (reason ``malformed line``), or raises
:class:`DataError` in strict mode; blank lines are ignored.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.data.errors import MALFORMED, DataError, SkipReport

__all__ = ["Row", "read_rows", "rename_columns", "source_kind"]

FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")


@dataclass
class Row:
    """One input row: ``data`` (column -> value), its ``source`` name and 1-based ``number``."""

    source: str
    number: int
    data: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source}:{self.number}"


def _suffix(path: Path) -> str:
    """The data suffix, looking through a trailing .gz (``x.jsonl.gz`` -> ``.jsonl``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def source_kind(source: str) -> str:
    """'file', 'saved' (save_to_disk folder), 'folder' (data files) or 'hub'."""
    p = Path(source)
    if p.is_file():
        return "file"
    if p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            return "saved"
        return "folder"
    return "hub"


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _read_jsonl_lines(lines: Iterable[tuple[int, str]], name: str, strict: bool,
                      report: SkipReport) -> list[Row]:
    rows = []
    for number, line in lines:
        if not line.strip():
            continue  # blank lines (a trailing newline, spacing) are not rows
        report.rows_read += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            err = DataError(name, number, "line", f"a JSON object ({e.msg} at column {e.colno})",
                            MALFORMED)
            if strict:
                raise err from None
            report.skip(MALFORMED, name, number, str(err))
            continue
        if not isinstance(obj, dict):
            err = DataError(name, number, "line", f"a JSON object (got {type(obj).__name__})", MALFORMED)
            if strict:
                raise err
            report.skip(MALFORMED, name, number, str(err))
            continue
        rows.append(Row(name, number, obj))
    return rows


def _read_json(path: Path, name: str, strict: bool, report: SkipReport) -> list[Row]:
    with _open_text(path) as f:
        text = f.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: it is JSON Lines in a .json file
            # split on "\n" only: str.splitlines would also split at U+2028, which JSON allows
            # unescaped inside strings.
            return _read_jsonl_lines(enumerate(text.split("\n"), 1), name, strict, report)
        raise DataError(name, None, "file", f"valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(obj, dict):
        # {"data": [...]}: accept an object whose only list-of-objects value holds the rows.
        lists = [v for v in obj.values() if isinstance(v, list) and all(isinstance(x, dict) for x in v)]
        if len(lists) == 1:
            obj = lists[0]
        else:
            obj = [obj]  # a single JSON object: one row (also what JSON Lines with one line is)
    if not isinstance(obj, list):
        raise DataError(name, None, "file", f"a JSON list of objects (got {type(obj).__name__})")
    rows = []
    for i, item in enumerate(obj, 1):
        report.rows_read += 1
        if not isinstance(item, dict):
            err = DataError(name, i, "row", f"a JSON object (got {type(item).__name__})", MALFORMED)
            if strict:
                raise err
            report.skip(MALFORMED, name, i, str(err))
            continue
        rows.append(Row(name, i, item))
    return rows


def _csv_cell(v: str | None) -> Any:
    """A CSV cell: "" -> None (no value); a JSON list (``[...]``) -> that list, since CSV has no
    other way to hold messages, responses or scores; anything else stays a string (numbers and
    labels are parsed by the converters, which know which fields are numeric)."""
    if v is None or v == "":
        return None
    if v.lstrip().startswith("["):
        try:
            parsed = json.loads(v)
        except json.JSONDecodeError:
            return v
        if isinstance(parsed, list):
            return parsed
    return v


def _read_csv(path: Path, name: str, report: SkipReport) -> list[Row]:
    rows = []
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        start = 2  # the header is line 1; line_num is the reader's line *after* a row
        for record in reader:
            report.rows_read += 1
            data = {k: _csv_cell(v) for k, v in record.items() if k is not None}
            rows.append(Row(name, start, data))
            start = reader.line_num + 1
    return rows


def _read_parquet(path: Path, name: str, columns: list[str] | None, report: SkipReport) -> list[Row]:
    import pyarrow.parquet as pq

    schema_names = pq.read_schema(path).names
    cols = [c for c in columns if c in schema_names] if columns is not None else None
    # to_pylist gives Python lists/floats (pandas would give numpy arrays for list columns).
    table = pq.read_table(path, columns=cols)
    rows = [Row(name, i, d) for i, d in enumerate(table.to_pylist(), 1)]
    report.rows_read += len(rows)
    return rows


def _read_datasets(source: str, kind: str, split: str, columns: list[str] | None,
                   report: SkipReport) -> list[Row]:
    import datasets

    if kind == "saved":
        ds = datasets.load_from_disk(source)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(source, None, "split", f"one of {sorted(ds)} (got {split!r})")
            ds = ds[split]
            name = f"{source}[{split}]"
        else:
            name = source  # a single saved Dataset has no split to choose
    else:
        try:
            ds = datasets.load_dataset(source, split=split)
        except FileNotFoundError as e:
            raise DataError(source, None, "source", f"an existing file or folder, or a hub dataset "
                            f"id ({e})") from None
        except ValueError as e:  # unknown split and similar
            raise DataError(source, None, "split", str(e)) from None
        name = f"{source}[{split}]"
    if columns is not None:
        keep = [c for c in columns if c in ds.column_names]
        if keep:
            ds = ds.select_columns(keep)
    rows = [Row(name, i, d) for i, d in enumerate(ds, 1)]
    report.rows_read += len(rows)
    return rows


def read_rows(source: str, split: str = "train", *, columns: list[str] | None = None,
              strict: bool = False, report: SkipReport | None = None) -> list[Row]:
    """All rows of ``source`` (file, saved dataset folder or hub id; see the module doc).

    ``split`` matters only for hub ids and saved DatasetDicts. ``columns`` (when given) is the
    set of column names that may be used; other columns are not read where the format allows
    (parquet, datasets). Malformed lines are skipped into ``report`` or raise in strict mode.
    """
    report = report if report is not None else SkipReport()
    if not source:
        raise DataError("<data>", None, "source", "a file path, save_to_disk folder or hub id (got an empty string)")
    kind = source_kind(source)
    path = Path(source)
    if kind == "file":
        suffix = _suffix(path)
        if suffix in (".jsonl", ".ndjson"):
            with _open_text(path) as f:
                return _read_jsonl_lines(enumerate(f, 1), source, strict, report)
        if suffix == ".json":
            return _read_json(path, source, strict, report)
        if suffix == ".csv":
            return _read_csv(path, source, report)
        if suffix == ".parquet":
            return _read_parquet(path, source, columns, report)
        raise DataError(source, None, "file", f"a file ending in {', '.join(FILE_SUFFIXES)} "
                        f"(optionally .gz) (got {path.name!r})")
    if kind == "hub" and (_suffix(path) in FILE_SUFFIXES or source.startswith((".", "/", "~"))):
        # Looks like a path, not a hub id: do not send a typo to the network.
        raise DataError(source, None, "source", "an existing file (no such file or folder)")
    return _read_datasets(source, kind, split, columns, report)


def rename_columns(rows: list[Row], columns: dict[str, str], source: str) -> None:
    """Rename source columns to canonical fields in place (``{canonical: source_column}``).

    A mapped column that no row has is a configuration mistake, reported at once with the
    columns that do exist.
    """
    if not columns:
        return
    present: set[str] = set()
    for r in rows:
        present.update(r.data)
    for canon, src in columns.items():
        if src not in present:
            raise DataError(source, None, f"columns.{canon}",
                            f"column {src!r} not found; the source has columns {sorted(present)}")
    for r in rows:
        d = r.data
        moved = {canon: d.pop(src) for canon, src in columns.items() if src in d}
        d.update(moved)
