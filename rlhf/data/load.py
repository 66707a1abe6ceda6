"""Entry points: a source -> canonical records of the kind a recipe needs, with a skip report.

    rows (io.read_rows)  ->  renamed columns  ->  format (given or detected)
        ->  native record per row (formats.CONVERTERS)  ->  records of the requested kind

Which formats can feed which kind (``KIND_FORMATS``):

* ``sft``: sft, messages, and the preference formats (prompt + chosen);
* ``preference``: preference, hh, conversational_preference, and ranked (expanded to all
  K(K-1)/2 pairs, ties skipped and counted);
* ``ranked``: ranked;
* ``unpaired`` (KTO): unpaired, and the preference formats (chosen -> label true, rejected ->
  label false);
* ``prompt``: every format (its prompt).

Bad rows are skipped and counted in the returned :class:`SkipReport` (logged once as a
summary), or raise :class:`DataError` at the first one when ``cfg.strict``.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Literal, overload

from rlhf.config import ConfigError
from rlhf.data.config import CANONICAL_FIELDS, DataConfig
from rlhf.data.errors import BadRow, DataError, SkipReport
from rlhf.data.formats import CONVERTERS, detect_format
from rlhf.data.io import read_rows, rename_columns
from rlhf.data.records import (
    PreferenceRecord,
    PromptRecord,
    RankedRecord,
    Record,
    SFTRecord,
    UnpairedRecord,
)

__all__ = ["load_records", "load_prompts", "load_train_eval", "split_eval", "KIND_FORMATS", "Kind"]

log = logging.getLogger("rlhf.data")

Kind = Literal["sft", "preference", "ranked", "unpaired", "prompt"]
_PREF = ("preference", "hh", "conversational_preference")
KIND_FORMATS: dict[str, tuple[str, ...]] = {
    "sft": ("sft", "messages", *_PREF),
    "preference": (*_PREF, "ranked"),
    "ranked": ("ranked",),
    "unpaired": ("unpaired", *_PREF),
    "prompt": ("sft", "messages", *_PREF, "ranked", "unpaired", "prompt"),
}


def _to_kind(rec: Record, kind: str, report: SkipReport) -> list[Record]:
    """Turn a row's native record into the records of ``kind`` (0, 1 or many)."""
    o = rec.origin
    if kind == "prompt":
        return [PromptRecord(rec.prompt, o)]
    if kind == "sft" and isinstance(rec, PreferenceRecord):
        return [SFTRecord(rec.prompt, rec.chosen, o)]
    if kind == "preference" and isinstance(rec, RankedRecord):
        return [*rec.to_pairs(report)]
    if kind == "unpaired" and isinstance(rec, PreferenceRecord):
        return [UnpairedRecord(rec.prompt, rec.chosen, True, o), UnpairedRecord(rec.prompt, rec.rejected, False, o)]
    return [rec]


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
    """
    if kind not in KIND_FORMATS:
        raise ValueError(f"kind must be one of {', '.join(KIND_FORMATS)} (got {kind!r})")
    source = source if source is not None else cfg.train
    split = split if split is not None else cfg.train_split
    if not source:
        raise ConfigError("data.train", "no data source set: give a .jsonl/.json/.parquet/.csv file, "
                          "a save_to_disk folder or a hub dataset id")
    report = SkipReport()
    # Only the columns a converter may read (after renaming) are loaded where the format allows it.
    wanted = [cfg.columns.get(c, c) for c in CANONICAL_FIELDS]
    rows = read_rows(source, split, columns=wanted, strict=cfg.strict, report=report)
    rename_columns(rows, cfg.columns, source)
    name = rows[0].source if rows else source
    fmt = cfg.format if cfg.format != "auto" else detect_format(rows, name)
    if fmt not in KIND_FORMATS[kind]:
        raise DataError(name, None, "format", f"a format that provides {kind} records: "
                        f"{', '.join(KIND_FORMATS[kind])} (the source is {fmt!r}"
                        f"{', detected from its columns' if cfg.format == 'auto' else ''})")
    convert = CONVERTERS[fmt]
    out: list[Record] = []
    for row in rows:
        notes: list[str] = []
        try:
            native = convert(row.data, notes)
        except BadRow as bad:
            report.reject(bad, row.source, row.number, cfg.strict)
            continue
        for reason in notes:
            report.note(reason, row.source, row.number)
        native.origin = (row.source, row.number)
        out.extend(_to_kind(native, kind, report))
        if cfg.max_samples is not None and len(out) >= cfg.max_samples:
            del out[cfg.max_samples:]
            break
    report.records = len(out)
    if not out:
        # An empty dataset would only fail later, obscurely (an empty data loader).
        raise DataError(name, None, "rows", f"at least one usable row ({report.summary()})")
    if report.counts or report.notes:
        log.warning("%s (%s, %s records): %s", name, fmt, kind, report.summary())
    else:
        log.info("%s (%s, %s records): %s", name, fmt, kind, report.summary())
    return out, report


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
