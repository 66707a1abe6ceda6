"""``rlhf label``: turn prompts and two responses into a preference file with a judge.

    # pairs from a file (columns prompt / response_a / response_b, names configurable)
    rlhf label --pairs pairs.jsonl --judge runs/rm/final --output prefs.jsonl
    # pairs sampled from a policy (two completions per prompt)
    rlhf label --policy runs/sft/final --prompts prompts.jsonl --judge my_pkg.checks:reward \\
        --output prefs.jsonl
    # an LM judge (AI feedback): any causal LM reading a rubric or constitution
    rlhf label --pairs pairs.jsonl --lm-judge Qwen/Qwen2.5-1.5B-Instruct \\
        --rubric-file constitution.txt --output prefs.jsonl
    # the same judge from a spec file ({type: lm, model: ..., rubric: ..., template: ...})
    rlhf label --pairs pairs.jsonl --judge judge.yaml --output prefs.jsonl

The output is a standard preference file (prompt, chosen, rejected, judge_probability; plus
score_chosen / score_rejected from a reward judge, position_consistent from an LM judge, and
the input row's other columns) that ``rlhf rm`` and ``rlhf dpo`` read. It is written to a
temporary file and linked into place only when complete, and an existing output is never
overwritten. Bad input rows stop the run with ``file:row: field: expected ...``; pairs with
identical responses, and pairs the judge gave no usable answer on, are dropped and counted in
the summary printed as JSON. See docs/ai-feedback.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "read_pairs", "write_new_jsonl"]


def read_pairs(path: str, prompt_column: str = "prompt", a_column: str = "response_a",
               b_column: str = "response_b", limit: int | None = None
               ) -> tuple[list[Any], list[Any], list[Any], list[dict[str, Any]]]:
    """(prompts, responses_a, responses_b, other columns per row) from a .jsonl/.json/.csv/
    .parquet file (or dataset). A row without usable text in one of the three columns raises
    :class:`~rlhf.data.errors.DataError` naming the file, the row and the column."""
    from rlhf.data.errors import BadRow
    from rlhf.data.formats import _completion, _text_or_messages
    from rlhf.data.io import read_rows

    rows = read_rows(path, strict=True)
    prompts, a, b, extra = [], [], [], []
    for row in rows[:limit]:
        try:
            prompts.append(_text_or_messages(row.data, prompt_column))
            a.append(_completion(row.data, a_column))
            b.append(_completion(row.data, b_column))
        except BadRow as bad:
            raise bad.at(row.source, row.number) from None
        extra.append({k: v for k, v in row.data.items() if k not in (prompt_column, a_column, b_column)})
    if not prompts:
        from rlhf.data.errors import DataError
        raise DataError(path, None, "rows", "at least one row with a prompt and two responses (the file is empty)")
    return prompts, a, b, extra


def write_new_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON lines into a temporary file, then link it to ``path``: a reader
    never sees half a file, and a file that exists (or appeared meanwhile) is never replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails if path exists
    finally:
        tmp.unlink(missing_ok=True)


def _judge_spec(a: argparse.Namespace) -> Any:
    if a.lm_judge is None:
        if a.rubric or a.rubric_file or a.template_file or a.letters or a.min_mass is not None or a.one_order:
            raise ValueError("--rubric/--rubric-file/--template-file/--letters/--min-mass/--one-order "
                             "apply to --lm-judge only")
        return a.judge
    spec: dict[str, Any] = {"type": "lm", "model": a.lm_judge, "trust_remote_code": a.trust_remote_code,
                            "batch_size": a.batch_size, "both_orders": not a.one_order}
    if a.rubric and a.rubric_file:
        raise ValueError("give --rubric or --rubric-file, not both")
    if a.rubric:
        spec["rubric"] = a.rubric
    if a.rubric_file:
        spec["rubric_file"] = a.rubric_file
    if a.template_file:
        spec["template_file"] = a.template_file
    if a.letters:
        spec["letters"] = a.letters.split(",")
    if a.min_mass is not None:
        spec["min_mass"] = a.min_mass
    return spec


def run(a: argparse.Namespace) -> dict[str, Any]:
    from rlhf.judge import load_judge
    from rlhf.label import label_pairs, sample_pairs, split_rows

    outputs = [Path(a.output)] + ([Path(a.eval_output)] if a.eval_output else [])
    for p in outputs:
        if p.exists():
            raise FileExistsError(f"{p} already exists; rlhf label never overwrites a file "
                                  "(choose another name or delete it yourself)")
    if a.eval_fraction > 0 and not a.eval_output:
        raise ValueError("--eval-fraction needs --eval-output (where the held-out pairs go)")
    judge = load_judge(_judge_spec(a))  # before any sampling: a bad judge fails fast
    if a.pairs:
        prompts, ra, rb, extra = read_pairs(a.pairs, a.prompt_column, a.a_column, a.b_column, a.max_rows)
    else:
        from rlhf.data.load import load_prompts
        prompts = load_prompts(a.prompts, a.max_rows)
        ra, rb = sample_pairs(a.policy, prompts, max_new_tokens=a.max_new_tokens,
                              sampling_temperature=a.sampling_temperature, batch_size=a.batch_size,
                              seed=a.seed, chat_template=a.chat_template, engine=a.engine)
        extra = None
    rows, stats = label_pairs(prompts, ra, rb, judge, temperature=a.temperature, seed=a.seed,
                              batch_size=max(a.batch_size, 1) * 8, extra=extra)
    train, held_out = split_rows(rows, a.eval_fraction, a.seed) if a.eval_fraction > 0 else (rows, [])
    if a.eval_output:
        write_new_jsonl(a.eval_output, held_out)
    write_new_jsonl(a.output, train)
    return {**stats, "output": a.output, "output_pairs": len(train),
            **({"eval_output": a.eval_output, "eval_pairs": len(held_out)} if a.eval_output else {})}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rlhf label", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help="file (or dataset) of rows with a prompt and two responses")
    src.add_argument("--policy", help="a policy folder to sample two completions per prompt from (with --prompts)")
    ap.add_argument("--prompts", help="with --policy: the prompts (any file with a prompt column)")
    ap.add_argument("--prompt-column", default="prompt", help="--pairs: column of the prompt (default prompt)")
    ap.add_argument("--a-column", default="response_a",
                    help="--pairs: column of the first response (default response_a)")
    ap.add_argument("--b-column", default="response_b",
                    help="--pairs: column of the second response (default response_b)")
    ap.add_argument("--max-rows", type=int, default=None, help="use only the first N rows / prompts")
    judge = ap.add_mutually_exclusive_group(required=True)
    judge.add_argument("--judge", help="a reward source (folder, package.module:function, spec file) or a "
                                       ".yaml/.json LM-judge spec {type: lm, model: ..., rubric: ...}")
    judge.add_argument("--lm-judge", help="a causal-LM folder or hub id to judge with (AI feedback)")
    ap.add_argument("--rubric", help="--lm-judge: the rubric or constitution text")
    ap.add_argument("--rubric-file", help="--lm-judge: read the rubric from this file")
    ap.add_argument("--template-file", help="--lm-judge: prompt template with {rubric} {prompt} {a} {b}")
    ap.add_argument("--letters", help="--lm-judge: the two answer letters, comma-separated (default ' A,  B')")
    ap.add_argument("--min-mass", type=float, default=None,
                    help="--lm-judge: least probability the two letters must get together (default 0.01)")
    ap.add_argument("--one-order", action="store_true", help="--lm-judge: ask in one order only (keeps position bias)")
    ap.add_argument("--trust-remote-code", action="store_true",
                    help="--lm-judge: run code shipped with the checkpoint (only for checkpoints you trust)")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="label noise τ: 0 = always the judge's favourite; > 0 = drawn with σ(Δ/τ) (default 0)")
    ap.add_argument("--output", required=True, help="the preference file to write (.jsonl; never overwritten)")
    ap.add_argument("--eval-fraction", type=float, default=0.0,
                    help="hold this fraction of pairs out (with --eval-output)")
    ap.add_argument("--eval-output", help="where the held-out pairs go (.jsonl)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="--policy: completion length limit")
    ap.add_argument("--engine", choices=["auto", "lean", "transformers", "vllm"], default="auto",
                    help="--policy: rollout engine, the built-in sampler or vllm (needs rlhf[vllm])")
    ap.add_argument("--sampling-temperature", type=float, default=1.0, help="--policy: sampling temperature")
    ap.add_argument("--chat-template", default="auto", choices=("auto", "default", "none"),
                    help="--policy: how prompts are rendered (as in training)")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str]) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.policy and not a.prompts:
        ap.error("--policy needs --prompts")
    if a.pairs and a.prompts:
        ap.error("--prompts goes with --policy; --pairs files hold their own prompts")
    if not 0.0 <= a.eval_fraction < 1.0:
        ap.error(f"--eval-fraction must be in [0, 1) (got {a.eval_fraction})")
    try:
        summary = run(a)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"rlhf label: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0
