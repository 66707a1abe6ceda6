"""``rlhf score``: score every prompt/response of a file with any reward source.

    rlhf score --model runs/rm/final --data samples.jsonl --output scored.jsonl
    rlhf score --reward my_pkg.checks:reward --data samples.jsonl --output scored.jsonl
    rlhf score --reward gating.yaml --data pairs.jsonl --output scored.jsonl

The output is a copy of the input rows (every column kept) plus the rewards:

* prompt/completion rows (``sft``), chat ``messages`` rows: ``reward``;
* preference rows (``preference``, ``hh``, ``conversational_preference``): ``reward_chosen``
  and ``reward_rejected``;
* ranked rows: ``rewards``, one per response.

Rows the data layer cannot read are reported and left out (``--strict``: stop at the first).
An existing output file is never overwritten. The output format follows its extension
(.jsonl, .json, .csv, .parquet).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "score_file"]


def _write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    suffix = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.tmp")
    if suffix in (".jsonl", ".ndjson"):
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    elif suffix == ".json":
        tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
    elif suffix in (".csv", ".parquet"):
        import pandas as pd
        df = pd.DataFrame(rows)
        df.to_csv(tmp, index=False) if suffix == ".csv" else df.to_parquet(tmp, index=False)
    else:
        raise ValueError(f"--output {path}: expected a .jsonl, .json, .csv or .parquet file name")
    # Exclusive create of the final name: never replace a file that appeared meanwhile.
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def score_file(source: Any, data: str, output: str | Path, *, data_cfg: Any = None,
               batch_size: int = 64) -> dict[str, Any]:
    """Score ``data`` with reward source ``source`` and write ``output``; returns a summary."""
    from rlhf.data.config import DataConfig
    from rlhf.data.errors import BadRow, DropRow, SkipReport
    from rlhf.data.formats import CONVERTERS, RowSpec, detect_format, prepare_row
    from rlhf.data.io import read_rows, rename_columns
    from rlhf.data.records import PreferenceRecord, RankedRecord, SFTRecord, UnpairedRecord
    from rlhf.rewards import call_reward, row_columns

    output = Path(output)
    if output.exists():
        raise FileExistsError(f"--output {output} already exists; rlhf score never overwrites a file "
                              "(choose another name or delete it yourself)")
    cfg = data_cfg or DataConfig()
    report = SkipReport()
    rows = read_rows(data, cfg.train_split, strict=cfg.strict, report=report, encoding=cfg.encoding)
    originals = [dict(r.data) for r in rows]  # before renaming: the copy keeps the user's columns
    renames = rename_columns(rows, cfg.columns, data)
    fmt = cfg.format if cfg.format != "auto" else detect_format(
        rows, data, ("prompt",) if cfg.prompt_template is not None else ())
    if fmt not in ("sft", "messages", "alpaca", "preference", "hh", "conversational_preference", "pairwise",
                   "ranked", "unpaired"):
        raise ValueError(f"{data}: rlhf score needs completions to score; a {fmt!r} source has none")
    # The same row preparation as training (ShareGPT keys, templates, system column).
    spec = RowSpec.from_config(cfg, fmt, {src: canon for canon, src in renames.items()})
    convert = CONVERTERS[fmt] if fmt != "pairwise" else functools.partial(CONVERTERS[fmt], spec=spec)
    # Flatten every (prompt, completion) to score into one list, remembering where it goes.
    prompts, completions, slots = [], [], []  # slots: (row index, key, position or None)
    columns: list[dict[str, Any]] = []  # each completion's row, for reward functions
    kept = []
    for i, row in enumerate(rows):
        try:
            rec = convert(prepare_row(row.data, spec, fmt), [])
        except BadRow as bad:
            report.reject(bad, row.source, row.number, cfg.strict)
            continue
        except DropRow as drop:  # a pairwise tie: nothing to say which is chosen
            report.skip(drop.reason, row.source, row.number)
            continue
        kept.append(i)
        items: list[tuple[str, int | None, Any]]
        if isinstance(rec, (SFTRecord, UnpairedRecord)):
            items = [("reward", None, rec.completion)]
        elif isinstance(rec, PreferenceRecord):
            items = [("reward_chosen", None, rec.chosen), ("reward_rejected", None, rec.rejected)]
        elif isinstance(rec, RankedRecord):
            items = [("rewards", k, c) for k, c in enumerate(rec.responses)]
        for key, pos, completion in items:
            prompts.append(rec.prompt)
            completions.append(completion)
            slots.append((i, key, pos))
            columns.append({k: v for k, v in originals[i].items() if k != renames.get("prompt", "prompt")})
    values: list[float] = []
    for k in range(0, len(prompts), batch_size):
        values += call_reward(source, prompts[k:k + batch_size], completions[k:k + batch_size],
                              **row_columns(columns[k:k + batch_size])).tolist()
    out_rows = {i: originals[i] for i in kept}
    for (i, key, pos), v in zip(slots, values):
        if pos is None:
            out_rows[i][key] = v
        else:
            out_rows[i].setdefault(key, []).append(v)
    _write_rows([out_rows[i] for i in kept], output)
    return {"rows_read": len(rows), "rows_scored": len(kept), "completions_scored": len(values),
            "format": fmt, "skipped": dict(report.counts), "output": str(output)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rlhf score", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a reward-model folder (e.g. runs/rm/final)")
    src.add_argument("--reward", help="any reward source: a folder, package.module:function, or a "
                                      ".yaml/.json spec (see docs/reward-models.md)")
    ap.add_argument("--data", required=True, help="file (or dataset) of rows to score")
    ap.add_argument("--output", required=True, help="where to write the scored copy (never overwritten)")
    ap.add_argument("--normalize", action="store_true",
                    help="with --model: report (r - mean) / std using the model's reward_stats.json")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default=None, help="cpu, cuda, ...; default: cuda if available")
    ap.add_argument("--format", default="auto", help="input format (default: detect from columns)")
    ap.add_argument("--strict", action="store_true", help="stop at the first bad row")
    args = ap.parse_args(argv)

    from rlhf.data.config import DataConfig
    from rlhf.rewards import ModelReward, RewardSource, load_reward_source

    if Path(args.output).exists():
        print(f"rlhf score: error: --output {args.output} already exists; it is never overwritten",
              file=sys.stderr)
        return 1
    try:
        source: RewardSource
        if args.model:
            source = ModelReward(args.model, normalize=args.normalize, batch_size=args.batch_size,
                                 device=args.device)
        else:
            if args.normalize:
                print("rlhf score: error: --normalize applies to --model only", file=sys.stderr)
                return 2
            source = load_reward_source(args.reward, device=args.device)
        summary = score_file(source, args.data, args.output,
                             data_cfg=DataConfig(format=args.format, strict=args.strict),
                             batch_size=args.batch_size)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"rlhf score: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0
