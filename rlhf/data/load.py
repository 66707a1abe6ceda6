"""Entry points: a source -> canonical records of the kind a recipe needs, with a skip report.

    rows (io.read_rows)  ->  renamed columns  ->  format (given or detected)
        ->  native record per row (formats.CONVERTERS)  ->  records of the requested kind

Which formats can feed which kind (``KIND_FORMATS``):

* ``sft``: sft, messages, alpaca, the preference formats (prompt + chosen), and the labelled
  formats pairwise and unpaired only when ``data.sft_keep`` says which completions to keep;
* ``preference``: preference, hh, conversational_preference, pairwise (winner column), and
  ranked (expanded to all K(K-1)/2 pairs, ties skipped and counted);
* ``ranked``: ranked;
* ``unpaired`` (KTO): unpaired, and the preference formats (chosen -> label true, rejected ->
  label false);
* ``prompt``: every format (its prompt; the row's other columns ride along in
  ``PromptRecord.columns`` for reward functions).

Bad rows are skipped and counted in the returned :class:`SkipReport` (logged once as a
summary), or raise :class:`DataError` at the first one when ``cfg.strict``.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import re
from typing import Any, Literal, overload

from rlhf.config import ConfigError
from rlhf.data.config import DataConfig
from rlhf.data.errors import NOT_KEPT, PROMPT_ONLY, BadRow, DataError, DropRow, SkipReport
from rlhf.data.formats import CONVERTERS, FORMAT_FIELDS, RowSpec, detect_format, prepare_row, winner_key
from rlhf.data.io import read_rows, rename_columns
from rlhf.data.records import (
    PreferenceRecord,
    PromptRecord,
    RankedRecord,
    Record,
    SFTRecord,
    UnpairedRecord,
)
from rlhf.data.template import template_fields

__all__ = ["load_records", "load_prompts", "load_train_eval", "split_eval", "KIND_FORMATS", "Kind"]

log = logging.getLogger("rlhf.data")

Kind = Literal["sft", "preference", "ranked", "unpaired", "prompt"]
_PREF = ("preference", "hh", "conversational_preference")
KIND_FORMATS: dict[str, tuple[str, ...]] = {
    "sft": ("sft", "messages", "alpaca", *_PREF, "pairwise", "unpaired"),
    "preference": (*_PREF, "pairwise", "ranked"),
    "ranked": ("ranked",),
    "unpaired": ("unpaired", *_PREF, "pairwise"),
    "prompt": ("sft", "messages", "alpaca", *_PREF, "pairwise", "ranked", "unpaired", "prompt"),
}
# Formats whose rows carry a label saying which completion is good: SFT must be told which
# completions to learn (data.sft_keep), or it would learn the bad ones too.
_LABELLED = ("unpaired", "pairwise")
# An unused column named like this is probably a label the user meant to use.
_LABEL_NAME = re.compile(r"label|winner|prefer|choice|chosen|vote|better|best|rating|score|rank|win\b|"
                         r"good|bad|accept|reject|safe|harm|helpful|correct|annotat|judg", re.IGNORECASE)
_ID_NAME = re.compile(r"(^|_)(id|idx|index|uuid|hash)$", re.IGNORECASE)
# Bookkeeping that rides along with chosen/rejected (written by rlhf label / iterative DPO, and
# UltraFeedback's scores): it agrees with the pair, it is not a label the format forgot.
_PAIR_BOOKKEEPING = frozenset({"score_chosen", "score_rejected", "flipped", "position_consistent"})


def _prompt_only(data: dict, spec: RowSpec, fmt: str) -> Record | None:
    """The prompt of a row whose responses were refused, when the format names the prompt in
    its own field (not HH, where the prompt is the shared start of the two texts); else None."""
    if fmt == "hh":
        return None
    try:
        prepared = prepare_row(data, spec, fmt)
        if prepared.get("prompt") is None and fmt in ("messages", "conversational_preference"):
            return None  # the prompt is cut from the conversation, which was refused
        return CONVERTERS["prompt"](prepared, [])
    except (BadRow, DropRow):
        return None


def _to_kind(rec: Record, kind: str, report: SkipReport, keep: str) -> list[Record]:
    """Turn a row's native record into the records of ``kind`` (0, 1 or many)."""
    o = rec.origin
    if kind == "prompt":
        return [PromptRecord(rec.prompt, o)]
    if kind == "sft" and isinstance(rec, PreferenceRecord):
        out: list[Record] = [SFTRecord(rec.prompt, rec.chosen, o)]
        return out + [SFTRecord(rec.prompt, rec.rejected, o)] if keep == "all" else out
    if kind == "sft" and isinstance(rec, UnpairedRecord):
        if keep == "preferred" and not rec.label:
            report.skip(NOT_KEPT, *(o or ("<record>", None)))
            return []
        return [SFTRecord(rec.prompt, rec.completion, o)]
    if kind == "preference" and isinstance(rec, RankedRecord):
        return list(rec.to_pairs(report))
    if kind == "unpaired" and isinstance(rec, PreferenceRecord):
        return [UnpairedRecord(rec.prompt, rec.chosen, True, o), UnpairedRecord(rec.prompt, rec.rejected, False, o)]
    return [rec]


def _looks_used(name: str, values: list[Any]) -> str | None:
    """Why an unused column looks like one the user meant to use (a label or text), or None."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals or _ID_NAME.search(name):
        return None
    if all(isinstance(v, bool) for v in vals):
        return "it looks like a label (true/false values)"
    if _LABEL_NAME.search(name):
        return "it looks like a label (its name)"
    if all(isinstance(v, list) for v in vals):
        return "it looks like text (lists of messages or texts)"
    if all(isinstance(v, dict) for v in vals) and any({"role", "from", "content", "value"} & set(v) for v in vals):
        return "it looks like text (chat messages)"
    strs = [v for v in vals if isinstance(v, str)]
    if len(strs) == len(vals) and sum(map(len, strs)) / len(strs) >= 20 \
            and sum(" " in v.strip() for v in strs) >= len(strs) / 2:
        return "it looks like text (several words per row)"
    return None


def _check_unused(rows: list, fmt: str, kind: str, cfg: DataConfig, spec: RowSpec, name: str,
                  report: SkipReport) -> None:
    """Report once each column the format does not read that looks like a label or text
    (strict: a DataError), so that nothing in a file is silently ignored."""
    if kind == "prompt":  # every other column reaches the reward functions (rlhf.rewards)
        return
    used = set(FORMAT_FIELDS[fmt]) | set(spec.winner_columns if fmt == "pairwise" else ())
    if spec.template is not None:
        fields = template_fields(spec.template)
        used |= set(fields) | {spec.renamed.get(f, f) for f in fields}
        if fmt == "alpaca":
            used -= {"instruction", "input"} - set(fields) - {spec.renamed.get(f, f) for f in fields}
    ignored = set(cfg.ignore_columns) | {spec.renamed.get(c, c) for c in cfg.ignore_columns}
    if fmt in ("preference", "conversational_preference", "hh"):
        ignored |= _PAIR_BOOKKEEPING
    back = {canon: src for src, canon in spec.renamed.items()}
    present: dict[str, list[Any]] = {}
    for r in rows[:200]:
        for k, v in r.data.items():
            present.setdefault(k, []).append(v)
    for col, values in present.items():
        if col in used or col in ignored:
            continue
        why = _looks_used(col, values)
        if why is None:
            continue
        src = back.get(col, col)
        msg = (f"the {fmt} format does not read it and {why}; use it (data.columns, "
               f"data.prompt_template, data.winner_columns) or list it in data.ignore_columns")
        if cfg.strict:
            raise DataError(name, None, f"column {src!r}", msg)
        report.unused[src] = msg


def _check_source(rows: list, fmt: str, cfg: DataConfig, spec: RowSpec, name: str) -> None:
    """Source-level checks of the configuration against the columns the rows have."""
    present: set[str] = set()
    for r in rows:
        present.update(r.data)
    if spec.template is not None:
        missing = [f for f in template_fields(spec.template) if f not in present and spec.renamed.get(f) not in present]
        # Alpaca's input is optional: a file may have no input column at all.
        missing = [f for f in missing if not (fmt == "alpaca" and cfg.prompt_template is None and f == "input")]
        if missing:
            raise DataError(name, None, "prompt_template", f"fields that are columns of the source: "
                            f"{missing} not found; the source has columns {sorted(present)}")
    if fmt == "pairwise":
        missing = [c for c in spec.winner_columns if c not in present and spec.renamed.get(c) not in present]
        if missing:
            raise DataError(name, None, "winner_columns", f"the column(s) saying which response won: "
                            f"{missing} not found (the source has columns {sorted(present)}); set "
                            "data.winner_columns, e.g. [label] or [vote1, vote2, vote3]")
        if not cfg.winner_values:
            seen = {k for r in rows for c in spec.winner_columns
                    if (k := winner_key(spec.lookup(r.data, c))) is not None}
            if seen and seen <= {"0", "1", "true", "false"}:
                raise DataError(name, None, "winner_values", f"to be told what the winner values "
                                f"{sorted(seen)} mean: whether 1/true means response_a or response_b "
                                "won differs between datasets; set e.g. data.winner_values: "
                                "{a: [0], b: [1]}")


# The kinds a recipe asks for by name come back as their record type (for the type checker).
@overload
def load_records(cfg: DataConfig, kind: Literal["preference"], source: str | None = ...,
                 split: str | None = ...) -> tuple[list[PreferenceRecord], SkipReport]: ...
@overload
def load_records(cfg: DataConfig, kind: Literal["prompt"], source: str | None = ...,
                 split: str | None = ...) -> tuple[list[PromptRecord], SkipReport]: ...
@overload
def load_records(cfg: DataConfig, kind: Kind, source: str | None = ...,
                 split: str | None = ...) -> tuple[list[Record], SkipReport]: ...
def load_records(cfg: DataConfig, kind: Kind, source: str | None = None,
                 split: str | None = None) -> tuple[list[Any], SkipReport]:  # list[Any]: see the overloads
    """Records of ``kind`` from ``source`` (default ``cfg.train``), split ``split`` (default
    ``cfg.train_split``), at most ``cfg.max_samples`` of them, and the report of what was skipped.

    Raises :class:`DataError` when more than ``cfg.max_skip_fraction`` of the rows is bad.
    """
    if kind not in KIND_FORMATS:
        raise ValueError(f"kind must be one of {', '.join(KIND_FORMATS)} (got {kind!r})")
    source = source if source is not None else cfg.train
    split = split if split is not None else cfg.train_split
    if not source:
        raise ConfigError("data.train", "no data source set: give a .jsonl/.json/.parquet/.csv file, "
                          "a save_to_disk folder or a hub dataset id")
    if cfg.max_samples is not None:
        # Read only as many rows as records are wanted (JSON Lines and CSV stop there: a large
        # file is not loaded for a 16-example debug run); when rows were skipped or dropped on
        # the way and the file has more, read it all.
        try:
            out, report, n_rows = _load_records(cfg, kind, source, split, limit=cfg.max_samples)
        except DataError:
            out, report, n_rows = [], SkipReport(), cfg.max_samples
        if len(out) >= cfg.max_samples or (out and n_rows < cfg.max_samples):
            return out, report
    out, report, _ = _load_records(cfg, kind, source, split, limit=None)
    return out, report


def _load_records(cfg: DataConfig, kind: Kind, source: str, split: str,
                  limit: int | None) -> tuple[list[Any], SkipReport, int]:
    """:func:`load_records` from the first ``limit`` rows (all: None); also returns how many
    rows were read."""
    report = SkipReport()
    # Every column is read: the unused ones are checked (nothing silently ignored) and, for
    # prompts, passed on to reward functions.
    rows = read_rows(source, split, strict=cfg.strict, report=report, encoding=cfg.encoding, limit=limit)
    renames = rename_columns(rows, cfg.columns, source)
    name = rows[0].source if rows else source
    template_cols = ("prompt",) if cfg.prompt_template is not None else ()
    fmt = cfg.format if cfg.format != "auto" else detect_format(rows, name, template_cols)
    if fmt not in KIND_FORMATS[kind]:
        raise DataError(name, None, "format", f"a format that provides {kind} records: "
                        f"{', '.join(KIND_FORMATS[kind])} (the source is {fmt!r}"
                        f"{', detected from its columns' if cfg.format == 'auto' else ''})")
    if kind == "sft" and fmt in _LABELLED and cfg.sft_keep == "refuse":
        what = "a KTO label (desirable or not)" if fmt == "unpaired" else "a winner label"
        raise DataError(name, None, "sft_keep", f"to be told which rows to train on: the rows carry "
                        f"{what} ({fmt} format), and SFT would otherwise learn the bad completions too; "
                        "set data.sft_keep: preferred (only the desirable / winning completions) or "
                        "all (every completion, label ignored)")
    spec = RowSpec.from_config(cfg, fmt, {src: canon for canon, src in renames.items()})
    _check_source(rows, fmt, cfg, spec, name)
    _check_unused(rows, fmt, kind, cfg, spec, name, report)
    convert = CONVERTERS[fmt]
    if fmt == "pairwise":
        convert = functools.partial(convert, spec=spec)
    back = {canon: src for canon, src in renames.items()}
    out: list[Record] = []
    bad_before, seen = report.bad_rows, 0
    for row in rows:
        seen += 1
        notes: list[str] = []
        try:
            native = convert(prepare_row(row.data, spec, fmt), notes)
        except (BadRow, DropRow) as failure:
            # Prompts from a file of responses (PPO on preference data): what is wrong with the
            # responses (a tie, identical texts) does not make the prompt unusable.
            prompt_only = _prompt_only(row.data, spec, fmt) if kind == "prompt" else None
            if prompt_only is not None:
                native = prompt_only
                notes.append(PROMPT_ONLY)
            elif isinstance(failure, BadRow):
                report.reject(failure, row.source, row.number, cfg.strict)
                continue
            else:
                report.skip(failure.reason, row.source, row.number)
                continue
        for reason in notes:
            report.note(reason, row.source, row.number)
        native.origin = (row.source, row.number)
        recs = _to_kind(native, kind, report, cfg.sft_keep)
        if kind == "prompt":
            # The row's other columns, by their source names, for reward functions.
            extra = {back.get(k, k): v for k, v in row.data.items() if k != "prompt"}
            for r in recs:
                r.columns = extra  # type: ignore[union-attr]
        out.extend(recs)
        if cfg.max_samples is not None and len(out) >= cfg.max_samples:
            del out[cfg.max_samples:]
            break
    if limit is not None and len(out) < limit and len(rows) >= limit:
        return out, report, len(rows)  # short of records and the source may have more: read it all
    report.records = len(out)
    n_bad, considered = report.bad_rows, bad_before + seen
    if considered and n_bad / considered > cfg.max_skip_fraction:
        raise DataError(name, None, "rows", f"at most {cfg.max_skip_fraction:.1%} of the rows to be "
                        f"skipped as bad (data.max_skip_fraction), but {n_bad} of {considered} "
                        f"({n_bad / considered:.1%}) were: fix the data or its mapping (data.columns, "
                        f"data.format), or raise data.max_skip_fraction\n{report.summary()}")
    if not out:
        # An empty dataset would only fail later, obscurely (an empty data loader).
        raise DataError(name, None, "rows", f"at least one usable row ({report.summary()})")
    if report.counts or report.notes or report.unused:
        log.warning("%s (%s, %s records): %s", name, fmt, kind, report.summary())
    else:
        log.info("%s (%s, %s records): %s", name, fmt, kind, report.summary())
    return out, report, len(rows)


def load_prompts(source: str, limit: int | None = None) -> list[Any]:
    """The prompts of any source that has them (a prompt file, SFT or preference data), in
    order, at most ``limit``. Strict: a bad row stops with ``file:row: field: expected ...``."""
    cfg = DataConfig(train=str(source), strict=True, max_samples=limit)
    return [r.prompt for r in load_records(cfg, "prompt")[0]]


def split_eval(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out ``fraction`` of the input *rows* (shuffled with ``seed``) as an eval set.

    Records from one row (the pairs of a ranked row, the two halves of an unpaired pair) stay
    together, so no prompt leaks from eval into train. Both sides keep the input order. At
    least one row goes to each side.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1) (got {fraction})")
    keys = list(dict.fromkeys(r.origin if r.origin is not None else ("", i) for i, r in enumerate(records)))
    if len(keys) < 2:
        where = records[0].origin[0] if records and records[0].origin else "<records>"
        raise DataError(where, None, "eval_fraction", f"at least 2 rows to hold some out (got {len(keys)})")
    n_eval = min(max(1, round(fraction * len(keys))), len(keys) - 1)
    order = keys[:]
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])

    def key(i: int, r: Record):
        return r.origin if r.origin is not None else ("", i)

    train = [r for i, r in enumerate(records) if key(i, r) not in held]
    ev = [r for i, r in enumerate(records) if key(i, r) in held]
    return train, ev


@overload
def load_train_eval(cfg: DataConfig, kind: Literal["preference"]
                    ) -> tuple[list[PreferenceRecord], list[PreferenceRecord] | None, SkipReport]: ...
@overload
def load_train_eval(cfg: DataConfig, kind: Kind) -> tuple[list[Record], list[Record] | None, SkipReport]: ...
def load_train_eval(cfg: DataConfig, kind: Kind) -> tuple[list[Any], list[Any] | None, SkipReport]:
    """Train and eval records and one report covering both.

    Eval comes from, in order: ``cfg.eval`` (split ``cfg.eval_split`` or ``cfg.train_split``);
    the train source's ``cfg.eval_split``; ``cfg.eval_fraction`` of the train rows (see
    :func:`split_eval`; after ``max_samples``); otherwise there is no eval set (None).
    """
    train, report = load_records(cfg, kind)
    ev: list[Record] | None = None
    if cfg.eval is not None:
        ev, r2 = load_records(cfg, kind, cfg.eval, cfg.eval_split or cfg.train_split)
        report.merge(r2)
    elif cfg.eval_split is not None:
        ev, r2 = load_records(cfg, kind, cfg.train, cfg.eval_split)
        report.merge(r2)
    elif cfg.eval_fraction > 0:
        train, ev = split_eval(train, cfg.eval_fraction, cfg.seed)
    return train, ev, report
