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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.data.errors import MALFORMED, UNDECODABLE, DataError, SkipReport

__all__ = ["Row", "read_rows", "rename_columns", "source_kind", "json_reason", "ALIASES"]

# Column names read as a canonical field when the source has no column of that name and
# data.columns does not map it (ShareGPT's "conversations", Chatbot Arena's "model_a").
ALIASES: dict[str, tuple[str, ...]] = {
    "messages": ("conversations", "conversation"),
    "response_a": ("response1", "response_1", "completion_a", "answer_a"),
    "response_b": ("response2", "response_2", "completion_b", "answer_b"),
    "system": ("system_prompt",),
}

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


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _undecodable(name: str, line: int, column: int, byte: int, encoding: str) -> DataError:
    return DataError(name, line, "line", f"text in {encoding} (byte 0x{byte:02x} at column {column} "
                     f"cannot be decoded; if the file is in another encoding, set data.encoding, "
                     f"e.g. latin-1 or cp1252)", UNDECODABLE)


def _read_text(path: Path, name: str, encoding: str) -> str:
    """The whole file as text; undecodable bytes raise :class:`DataError` at their line."""
    with _open_binary(path) as f:
        raw = f.read()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        raise _undecodable(name, raw.count(b"\n", 0, e.start) + 1, e.start - line_start + 1,
                           raw[e.start], encoding) from None
    return text[1:] if text.startswith("\ufeff") else text  # a byte-order mark is not data


def _decoded_lines(path: Path, name: str, encoding: str, strict: bool,
                   report: SkipReport) -> Iterable[tuple[int, str]]:
    """(line number, text) of a JSON Lines file, split at b"\\n" only; a line that does not
    decode is skipped and counted (reason ``undecodable bytes``), or raises in strict mode."""
    with _open_binary(path) as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as e:
                report.rows_read += 1
                err = _undecodable(name, number, e.start + 1, raw[e.start], encoding)
                if strict:
                    raise err from None
                report.skip(UNDECODABLE, name, number, str(err))
                continue
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]  # a byte-order mark is not data
            yield number, line


# json's messages read badly out of context ("Invalid control character at: line 1 column 52");
# say what is wrong in words, and what usually causes it.
_JSON_REASONS = {
    "Unterminated string starting at": "a string that starts at column {col} is never closed",
    "Invalid control character at": "a raw control character (newline, tab, ...) inside a string at "
                                    "column {col}; JSON needs it escaped (\\n, \\t)",
    "Expecting value": "a JSON value at column {col}",
    "Expecting property name enclosed in double quotes": "a property name in double quotes at column {col}",
    "Expecting ',' delimiter": "a ',' between items at column {col}",
    "Expecting ':' delimiter": "a ':' after the property name at column {col}",
    "Extra data": "one JSON value per line (more text follows it at column {col})",
    "Invalid \\escape": "a valid escape (\\n, \\\", \\\\, \\uXXXX) at column {col}",
}


def json_reason(e: json.JSONDecodeError, line: str) -> str:
    """A readable reason for a line that is not JSON, with the text around the error, e.g.
    ``a string that starts at column 12 is never closed (the line ends at column 40: cut
    short?) near '"chosen": "The ans'``."""
    template = _JSON_REASONS.get(e.msg)
    col = e.colno
    reason = template.format(col=col) if template else f"{e.msg} (column {col})"
    stripped = line.rstrip("\r\n")
    at_end = e.msg == "Unterminated string starting at" or e.pos >= len(stripped.rstrip())
    if at_end and e.msg != "Extra data":
        reason += f" (the line ends at column {len(stripped)}: cut short?)"
    near = stripped[max(0, e.pos - 20): e.pos + 20]
    return f"{reason} near {near!r}" if near.strip() else reason


def _read_jsonl_lines(lines: Iterable[tuple[int, str]], name: str, strict: bool,
                      report: SkipReport, limit: int | None = None) -> list[Row]:
    rows: list[Row] = []
    for number, line in lines:
        if limit is not None and len(rows) >= limit:
            break  # lines is a generator over the open file: nothing after this is read
        if not line.strip():
            continue  # blank lines (a trailing newline, spacing) are not rows
        report.rows_read += 1
        line = line.rstrip("\r\n")  # so that an error at the end of the line is on this line
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            err = DataError(name, number, "line", f"a JSON object: {json_reason(e, line)}", MALFORMED)
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
    close = getattr(lines, "close", None)
    if close is not None:
        close()  # a generator stopped early: close its file now
    return rows


def _read_json(path: Path, name: str, strict: bool, report: SkipReport, encoding: str) -> list[Row]:
    text = _read_text(path, name, encoding)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: it is JSON Lines in a .json file
            # split on "\n" only: str.splitlines would also split at U+2028, which JSON allows
            # unescaped inside strings.
            return _read_jsonl_lines(enumerate(text.split("\n"), 1), name, strict, report)
        line = text.split("\n")[e.lineno - 1] if e.lineno - 1 < text.count("\n") + 1 else ""
        e_line = json.JSONDecodeError(e.msg, line, e.colno - 1)
        raise DataError(name, e.lineno, "file", f"valid JSON: {json_reason(e_line, line)}") from None
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


def _read_csv(path: Path, name: str, report: SkipReport, encoding: str, limit: int | None = None) -> list[Row]:
    rows: list[Row] = []
    if limit is None:
        f: io.TextIOBase = io.StringIO(_read_text(path, name, encoding), newline="")
    else:  # read lazily, only as far as needed; undecodable bytes are still named by line
        bom = "utf-8-sig" if encoding.lower().replace("-", "").replace("_", "") == "utf8" else encoding
        f = io.TextIOWrapper(_open_binary(path), encoding=bom, newline="")  # type: ignore[type-var]
    with f:
        reader = csv.DictReader(f)
        start = 2  # the header is line 1; line_num is the reader's line *after* a row
        for record in _decoding(reader, path, name, encoding):
            if limit is not None and len(rows) >= limit:
                break
            report.rows_read += 1
            data = {k: _csv_cell(v) for k, v in record.items() if k is not None}
            rows.append(Row(name, start, data))
            start = reader.line_num + 1
    return rows


def _decoding(reader: Iterable[dict], path: Path, name: str, encoding: str) -> Iterator[dict]:
    """The reader's records; a decoding error met while streaming is reported at its line, as
    :func:`_read_text` does for a whole file."""
    try:
        yield from reader
    except UnicodeDecodeError:
        _read_text(path, name, encoding)  # raises the DataError naming line and column
        raise


def _read_parquet(path: Path, name: str, columns: list[str] | None, report: SkipReport) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema_names = pq.read_schema(path).names
        cols = [c for c in columns if c in schema_names] if columns is not None else None
        # to_pylist gives Python lists/floats (pandas would give numpy arrays for list columns).
        table = pq.read_table(path, columns=cols)
    except (pa.ArrowException, OSError) as e:
        raise DataError(name, None, "file", f"a readable Parquet file ({' '.join(str(e).split())})") from None
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
              strict: bool = False, report: SkipReport | None = None, encoding: str = "utf-8",
              limit: int | None = None) -> list[Row]:
    """All rows of ``source`` (file, saved dataset folder or hub id; see the module doc).

    ``split`` matters only for hub ids and saved DatasetDicts. ``columns`` (when given) is the
    set of column names that may be used; other columns are not read where the format allows
    (parquet, datasets). Malformed lines are skipped into ``report`` or raise in strict mode.
    ``encoding`` decodes text files; bytes that do not decode name their line and column.
    ``limit``: stop after that many rows where the format is read line by line (JSON Lines,
    CSV): the rest of the file is not read at all (``data.max_samples`` on a large file);
    other formats return every row.
    """
    report = report if report is not None else SkipReport()
    rows = _read_rows(source, split, columns, strict, report, encoding, limit)
    if not rows and report.counts:
        # Every row was there but unreadable: say why, not that the source is empty.
        why = "; ".join(f"{n} {reason}" for reason, n in report.counts.items())
        first = next(iter(report.details.values()), "")
        raise DataError(source, None, "rows", f"at least one readable row: all {report.rows_read} were skipped "
                        f"({why}){f'; the first: {first}' if first else ''}")
    return rows


def _read_rows(source: str, split: str, columns: list[str] | None, strict: bool, report: SkipReport,
               encoding: str, limit: int | None) -> list[Row]:
    if not source:
        raise DataError("<data>", None, "source", "a file path, save_to_disk folder or hub id (got an empty string)")
    kind = source_kind(source)
    path = Path(source)
    if kind == "file":
        suffix = _suffix(path)
        if suffix in (".jsonl", ".ndjson"):
            return _read_jsonl_lines(_decoded_lines(path, source, encoding, strict, report), source,
                                     strict, report, limit)
        if suffix == ".json":
            return _read_json(path, source, strict, report, encoding)
        if suffix == ".csv":
            return _read_csv(path, source, report, encoding, limit)
        if suffix == ".parquet":
            return _read_parquet(path, source, columns, report)
        raise DataError(source, None, "file", f"a file ending in {', '.join(FILE_SUFFIXES)} "
                        f"(optionally .gz) (got {path.name!r})")
    if kind == "hub" and (_suffix(path) in FILE_SUFFIXES or source.startswith((".", "/", "~"))):
        # Looks like a path, not a hub id: do not send a typo to the network.
        raise DataError(source, None, "source", "an existing file (no such file or folder)")
    return _read_datasets(source, kind, split, columns, report)


def rename_columns(rows: list[Row], columns: dict[str, str], source: str) -> dict[str, str]:
    """Rename source columns to canonical fields in place (``{canonical: source_column}``),
    plus the :data:`ALIASES` the source has; returns the renames applied.

    A mapped column that no row has is a configuration mistake, reported at once with the
    columns that do exist.
    """
    present: set[str] = set()
    for r in rows:
        present.update(r.data)
    columns = dict(columns)
    for canon, names in ALIASES.items():
        if canon in present or canon in columns:
            continue
        alias = next((a for a in names if a in present and a not in columns.values()), None)
        if alias is not None and canon == "messages":
            # only a column of chat lists is a conversation (not, say, a conversation id)
            first = next((r.data[alias] for r in rows if r.data.get(alias) is not None), None)
            alias = alias if isinstance(first, list) else None
        if alias is not None:
            columns[canon] = alias
    if not columns:
        return {}
    for canon, src in columns.items():
        if src not in present:
            raise DataError(source, None, f"columns.{canon}",
                            f"column {src!r} not found; the source has columns {sorted(present)}")
    for r in rows:
        d = r.data
        moved = {canon: d.pop(src) for canon, src in columns.items() if src in d}
        d.update(moved)
    return columns
