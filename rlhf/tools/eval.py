"""``rlhf eval``: a policy against a reference: reward, win rate, KL, length, diversity.

    rlhf eval --policy runs/ppo/final --reference runs/sft/final --prompts prompts.jsonl \\
              --reward runs/rm/final --reward gold=my_pkg.gold:reward \\
              --num-samples 4 --output eval.json

Prints a table and, with ``--output``, writes the full result as JSON (never overwriting a
file). Every number is explained in docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

__all__ = ["main", "parse_rewards"]

# "name=SPEC" when the text before the first "=" looks like a name (no path or module separators).
_NAMED = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*)=(.+)$")


def parse_rewards(items: list[str]) -> dict[str, str]:
    """``--reward`` values -> {name: spec}. ``name=SPEC`` names a source; a bare SPEC is called
    ``reward`` (then ``reward2``, ``reward3``...)."""
    out: dict[str, str] = {}
    unnamed = 0
    for item in items:
        m = _NAMED.match(item)
        if m and "/" not in m.group(1) and ":" not in m.group(1):
            name, spec = m.group(1), m.group(2)
        else:
            unnamed += 1
            name, spec = ("reward" if unnamed == 1 else f"reward{unnamed}"), item
        if name in out:
            raise ValueError(f"--reward {item!r}: the name {name!r} is used twice")
        out[name] = spec
    return out


def _write_new(path: Path, text: str) -> None:
    """Write ``path`` only if it does not exist (exclusive link of a finished temp file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rlhf eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="the policy checkpoint folder (or hub id)")
    ap.add_argument("--reference", help="the reference policy (e.g. the SFT model); without it "
                                        "only the policy's own metrics are computed")
    ap.add_argument("--prompts", required=True,
                    help="prompts file: .txt one per line, or .jsonl/.json with a 'prompt' field")
    ap.add_argument("--max-prompts", type=int, help="use only the first N prompts")
    ap.add_argument("--reward", action="append", default=[],
                    help="a reward source, optionally named: [NAME=]SPEC where SPEC is a reward-model "
                         "folder, package.module:function or a .yaml/.json spec (repeatable)")
    ap.add_argument("--num-samples", type=int, default=1, help="completions per prompt and model")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0,
                    help="1 (default) gives an unbiased KL(policy || reference); see docs/evaluation.md")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0, help="0 = off")
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", choices=["auto", "lean", "transformers", "vllm"], default="auto",
                    help="rollout engine: the built-in sampler (auto/lean/transformers) or vllm (needs rlhf[vllm])")
    ap.add_argument("--chat-template", choices=["auto", "default", "none"], default="auto",
                    help="how prompts are rendered; use what the models were trained with")
    ap.add_argument("--max-length", type=int, default=512, help="prompts are cut to max_length - 1 tokens")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", help="cpu, cuda, ...; default: cuda if available")
    ap.add_argument("--examples", type=int, default=3, help="sample rows kept in the output")
    ap.add_argument("--output", help="write the result here as JSON (an existing file is never overwritten)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)

    if a.output and Path(a.output).exists():
        print(f"rlhf eval: error: --output {a.output} already exists; it is never overwritten",
              file=sys.stderr)
        return 1
    if a.num_samples < 1 or a.max_new_tokens < 1 or a.temperature < 0 or not 0 < a.top_p <= 1 or a.top_k < 0:
        ap.error("need --num-samples >= 1, --max-new-tokens >= 1, --temperature >= 0, "
                 "0 < --top-p <= 1, --top-k >= 0")

    from rlhf.data.config import DataConfig
    from rlhf.eval.evaluate import evaluate, format_table
    from rlhf.tools.generate import read_prompts

    try:
        prompts = read_prompts(a.prompts)
    except SystemExit as e:  # read_prompts reports bad files as SystemExit("rlhf generate: ...")
        print(str(e).replace("rlhf generate:", "rlhf eval: error:", 1), file=sys.stderr)
        return 1
    if a.max_prompts is not None:
        prompts = prompts[:a.max_prompts]
    if not prompts:
        print(f"rlhf eval: error: --prompts {a.prompts}: no prompts in the file", file=sys.stderr)
        return 1
    try:
        rewards = parse_rewards(a.reward)
        result = evaluate(a.policy, a.reference, prompts, rewards, num_samples=a.num_samples,
                          max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                          top_k=a.top_k, batch_size=a.batch_size, seed=a.seed,
                          data_cfg=DataConfig(chat_template=a.chat_template, max_length=a.max_length),
                          dtype=a.dtype, device=a.device, num_examples=a.examples,
                          progress=not a.no_progress, engine=a.engine)
    except (ValueError, FileNotFoundError) as e:  # bad reward spec, missing folder, bad prompt
        print(f"rlhf eval: error: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    if a.output:
        try:
            _write_new(Path(a.output), json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        except FileExistsError:
            print(f"rlhf eval: error: --output {a.output} appeared while evaluating; not overwritten",
                  file=sys.stderr)
            return 1
        print(f"\nwrote {a.output}")
    return 0
