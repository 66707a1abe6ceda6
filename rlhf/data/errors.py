"""Bad input: the error raised in strict mode, and the report of rows skipped otherwise.

Every rule that rejects a row has a short *reason* string (the constants below). In the
default mode the loader skips the row and counts it in a :class:`SkipReport`, which is
summarised once at the end of loading. With ``data.strict: true`` the first bad row raises
:class:`DataError` instead, whose message names the file, the row and the field and says
what was expected (house rule 9)::

    data/train.jsonl:17: chosen: a non-empty string or list of messages (got an empty string)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DataError",
    "BadRow",
    "SkipReport",
    "MALFORMED",
    "MISSING",
    "EMPTY",
    "WRONG_TYPE",
    "BAD_MESSAGES",
    "IDENTICAL",
    "NO_COMMON_PREFIX",
    "EMPTY_COMPLETION",
    "NAN_SCORE",
    "NAN_MARGIN",
    "LENGTH_MISMATCH",
    "TOO_FEW_RESPONSES",
    "TIE",
    "IDENTICAL_RESPONSES",
    "BAD_LABEL",
    "ENCODING",
    "UNDECODABLE",
    "TIE_ROW",
    "NOT_KEPT",
    "CONTINUES",
    "PROMPT_ONLY",
    "PAIR_REASONS",
    "DROP_REASONS",
    "DropRow",
]

# --------------------------------------------------------------------------- reasons
# Reasons for skipping a whole row.
MALFORMED = "malformed line"  # not valid JSON, or not a JSON object
MISSING = "missing field"
EMPTY = "empty field"  # empty or whitespace-only text, empty list
WRONG_TYPE = "wrong type"  # e.g. a number where text was expected
BAD_MESSAGES = "bad messages"  # a chat message without role/content, or turns in the wrong order
IDENTICAL = "chosen identical to rejected"
NO_COMMON_PREFIX = "no common prompt prefix"  # HH / conversational pair that does not share a prompt
EMPTY_COMPLETION = "empty completion"  # after splitting off the shared prompt
NAN_SCORE = "NaN score"
NAN_MARGIN = "NaN margin"
LENGTH_MISMATCH = "scores/ranks length differs from responses"
TOO_FEW_RESPONSES = "fewer than 2 responses"
BAD_LABEL = "bad label"
ENCODING = "cannot be tokenized"  # raised while tokenizing (see rlhf.data.tokenize)
UNDECODABLE = "undecodable bytes"  # a line that is not valid text in data.encoding
# Rows left out on purpose, not for being bad: never raised in strict mode and not counted
# towards data.max_skip_fraction (a pairwise file can hold a third of ties, by design).
TIE_ROW = "tie (row dropped)"  # pairwise data whose winner is a tie, or an equal vote
NOT_KEPT = "left out by data.sft_keep"  # SFT on labelled data: an undesirable / losing completion
DROP_REASONS = frozenset({TIE_ROW, NOT_KEPT})
# Reasons for skipping one *pair* of a ranked row (the row's other pairs are kept).
TIE = "tie (pair skipped)"
IDENTICAL_RESPONSES = "identical responses (pair skipped)"
PAIR_REASONS = frozenset({TIE, IDENTICAL_RESPONSES})
# Notes: the row is kept, but looks unusual enough that the user should know.
CONTINUES = "completion holds further dialogue turns (kept)"
# PPO's prompts from a file of pairs: a row whose pair is unusable (a tie, identical responses)
# still has a good prompt, which is kept.
PROMPT_ONLY = "prompt kept, its responses unusable"


class DataError(ValueError):
    """A bad input row (strict mode) or an unusable source.

    ``str(err)`` is ``"{file}:{row}: {field}: {expected}"``; ``row`` is None for errors about
    the whole source (unknown format, missing column), giving ``"{file}: {field}: {expected}"``.
    """

    def __init__(self, file: str, row: int | None, field: str, expected: str, reason: str = ""):
        self.file = file
        self.row = row
        self.field = field
        self.expected = expected
        self.reason = reason
        where = f"{file}:{row}" if row is not None else f"{file}"
        super().__init__(f"{where}: {field}: {expected}")


class DropRow(Exception):
    """Raised by a converter for a row that is fine but carries nothing to learn (a tie): it is
    counted under ``reason`` and never raised, even in strict mode."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class BadRow(Exception):
    """Raised by a row converter; the loader turns it into a skip or a :class:`DataError`.

    Converters do not know the file or row number, so they raise this and the loader, which
    does, adds them.
    """

    def __init__(self, reason: str, field: str, expected: str):
        self.reason = reason
        self.field = field
        self.expected = expected
        super().__init__(f"{field}: {expected}")

    def at(self, file: str, row: int | None) -> DataError:
        return DataError(file, row, self.field, self.expected, self.reason)


@dataclass
class SkipReport:
    """Counts of skipped rows by reason, with the first few row references of each.

    ``counts[reason]`` is the number of rows skipped for that reason, except for the reasons
    in :data:`PAIR_REASONS` (ties in ranked data), which count skipped *pairs*. ``notes`` counts
    rows that were kept but look suspicious. ``rows_read`` is the number of input rows seen
    (malformed lines included) and ``records`` the number of records produced.
    """

    max_examples: int = 5
    rows_read: int = 0
    records: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[tuple[str, int | None]]] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)  # reason -> first full message
    # Truncation at encoding, per part ("prompt", "completion"): [sequences cut, tokens cut,
    # most tokens cut from one sequence], and the sequences encoded.
    truncated: dict[str, list[int]] = field(default_factory=dict)
    encoded: int = 0
    truncated_examples: int = 0  # examples (a pair is one) with any part cut
    # Source columns the format does not read that look like a label or text: column -> why.
    unused: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, file: str, row: int | None, detail: str = "") -> None:
        """Count one skipped row (or pair, for :data:`PAIR_REASONS`)."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self._example(reason, file, row)
        if detail and reason not in self.details:
            self.details[reason] = detail

    def reject(self, bad: BadRow, file: str, row: int | None, strict: bool) -> None:
        """A converter rejected a row: raise it as a :class:`DataError` in strict mode, else
        count it as skipped (the one place where that rule lives)."""
        err = bad.at(file, row)
        if strict:
            raise err from None
        self.skip(bad.reason, file, row, str(err))

    def note(self, reason: str, file: str, row: int | None) -> None:
        """Count one kept-but-unusual row."""
        self.notes[reason] = self.notes.get(reason, 0) + 1
        self._example(reason, file, row)

    def _example(self, reason: str, file: str, row: int | None) -> None:
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append((file, row))

    def truncate(self, part: str, cut: int) -> None:
        """Count one sequence whose ``part`` lost ``cut`` > 0 tokens to ``data.max_length``."""
        t = self.truncated.setdefault(part, [0, 0, 0])
        t[0] += 1
        t[1] += cut
        t[2] = max(t[2], cut)

    def truncation_summary(self) -> str:
        """E.g. ``truncated 3 of 40 sequences: prompt: 2 (51 tokens cut, at most 40); completion:
        1 (7 tokens cut, at most 7)``; empty when nothing was cut."""
        if not self.truncated:
            return ""
        parts = [f"{part}: {n} ({tok} tokens cut, at most {mx})"
                 for part, (n, tok, mx) in sorted(self.truncated.items(), key=lambda kv: kv[0] != "prompt")]
        of = f" of {self.encoded}" if self.encoded else ""
        return f"truncated to data.max_length: {self.truncated_examples}{of} examples; " + "; ".join(parts)

    @property
    def bad_rows(self) -> int:
        """Rows skipped for being bad (what ``data.max_skip_fraction`` limits): skipped rows
        less those left out on purpose (:data:`DROP_REASONS`)."""
        return sum(n for r, n in self.counts.items() if r not in PAIR_REASONS and r not in DROP_REASONS)

    @property
    def skipped_rows(self) -> int:
        """Rows dropped entirely (skipped pairs of ranked rows are not rows)."""
        return sum(n for r, n in self.counts.items() if r not in PAIR_REASONS)

    @property
    def skipped_pairs(self) -> int:
        return sum(n for r, n in self.counts.items() if r in PAIR_REASONS)

    def merge(self, other: SkipReport) -> SkipReport:
        """Add ``other``'s counts into this report (train + eval) and return self."""
        self.rows_read += other.rows_read
        self.records += other.records
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
        for reason, n in other.notes.items():
            self.notes[reason] = self.notes.get(reason, 0) + n
        for reason, ex in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(ex[: max(0, self.max_examples - len(mine))])
        for reason, d in other.details.items():
            self.details.setdefault(reason, d)
        for part, (n, tok, mx) in other.truncated.items():
            t = self.truncated.setdefault(part, [0, 0, 0])
            t[0], t[1], t[2] = t[0] + n, t[1] + tok, max(t[2], mx)
        self.encoded += other.encoded
        self.truncated_examples += other.truncated_examples
        for col, why in other.unused.items():
            self.unused.setdefault(col, why)
        return self

    def _refs(self, reason: str, n: int) -> str:
        ex = self.examples.get(reason, [])
        files = {f for f, _ in ex}
        if len(files) == 1:  # one source: just the row numbers
            refs = ", ".join(str(r) for _, r in ex)
            word = "rows" if len(ex) > 1 else "row"
            refs = f"{word} {refs}"
        else:
            refs = ", ".join(f"{f}:{r}" if r is not None else f for f, r in ex)
        more = ", ..." if n > len(ex) else ""
        return f"({refs}{more})"

    def summary(self) -> str:
        """One paragraph: how many rows were read, kept and skipped, and why.

        Example: ``read 2312 rows, 2308 records; skipped 4 rows: empty completion: 4 (rows 87,
        517, 926, 1104)``.
        """
        head = f"read {self.rows_read} rows, {self.records} records"
        parts = []
        if self.skipped_rows:
            parts.append(f"skipped {self.skipped_rows} row{'s' if self.skipped_rows != 1 else ''}")
        if self.skipped_pairs:
            parts.append(f"skipped {self.skipped_pairs} ranked pair{'s' if self.skipped_pairs != 1 else ''}")
        if not parts:
            parts.append("skipped nothing")
        lines = [f"{head}; {', '.join(parts)}"]
        for reason, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            line = f"  {reason}: {n} {self._refs(reason, n)}"
            if reason in self.details:
                line += f"; e.g. {self.details[reason]}"
            lines.append(line)
        for reason, n in sorted(self.notes.items(), key=lambda kv: -kv[1]):
            lines.append(f"  note: {reason}: {n} {self._refs(reason, n)}")
        for col, why in self.unused.items():
            lines.append(f"  note: column {col!r} is not used: {why}")
        if self.truncated:
            lines.append(f"  {self.truncation_summary()}")
        return "\n".join(lines)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.summary()
