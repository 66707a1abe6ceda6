"""``rlhf generate``: sample completions from any checkpoint, for a quick look at a stage's output.

Prompts are rendered exactly as training renders them (same chat-template rule, see
docs/data-formats.md), left-padded into batches, and sampled with the KV cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "read_prompts"]


def __getattr__(name: str) -> Any:
    """``generate`` moved to rlhf.rollout.rows; importable from here still (lazily: ``rlhf
    generate --help`` imports no torch)."""
    if name == "generate":
        from rlhf.rollout.rows import generate
        return generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .txt file (one per line) or a .jsonl/.json file with a ``prompt`` field."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"rlhf generate: --prompts {path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise SystemExit(f"rlhf generate: {path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); convert "
                         f"the file to UTF-8") from None
    if path.suffix == ".txt":
        return [line for line in text.splitlines() if line.strip()]
    out = []
    try:
        rows = json.loads(text) if path.suffix == ".json" else [line for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise SystemExit(f"rlhf generate: {path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(rows, list):
        raise SystemExit(f"rlhf generate: {path}: expected a list of objects with a 'prompt' field")
    for i, row in enumerate(rows, 1):
        try:
            rec = row if isinstance(row, dict) else json.loads(row)
        except json.JSONDecodeError as e:
            raise SystemExit(f"rlhf generate: {path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), (str, list)):
            raise SystemExit(f"rlhf generate: {path}:{i}: prompt: expected a string or a message list")
        out.append(rec["prompt"])
    return out


def rendering_line(as_chat: bool, chat_template: str, has_messages: bool, raw: bool) -> str:
    """The one line ``rlhf generate`` prints about how plain-text prompts reach the model."""
    if as_chat:
        which = "the tokenizer's chat template" if chat_template == "auto" else "the default chat template"
        return f"rlhf generate: prompts rendered as a user message in {which} (--raw sends raw text)"
    why = ("--raw" if raw else "--chat-template none" if chat_template == "none"
           else "the tokenizer has no chat template")
    extra = "; message-list prompts still use a chat template" if has_messages and chat_template != "none" else ""
    return f"rlhf generate: plain-text prompts sent as raw text ({why}){extra}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rlhf generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint folder (e.g. runs/sft/final) or hub id")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="file of prompts: .txt one per line, or .jsonl/.json with a 'prompt' field")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--num-samples", type=int, default=1, help="completions per prompt")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=["auto", "lean", "transformers", "vllm"], default="auto",
                   help="rollout engine: the built-in sampler (auto/lean/transformers) or vllm (needs rlhf[vllm])")
    p.add_argument("--chat-template", choices=["auto", "default", "none"], default="auto",
                   help="how prompts are rendered; use what the model was trained with. auto: a plain "
                        "--prompt is sent as a user message in the tokenizer's chat template when it has "
                        "one (instruct models), else as raw text")
    p.add_argument("--raw", action="store_true",
                   help="send plain-text prompts as raw text even when the tokenizer has a chat template")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run custom code from the model folder (off by default)")
    p.add_argument("--output", help="also write the samples to this .jsonl file")
    a = p.parse_args(argv)
    prompts = list(a.prompt) + (read_prompts(a.prompts) if a.prompts else [])
    if not prompts:
        p.error("give at least one --prompt or a --prompts file")
    if a.temperature < 0 or not 0 < a.top_p <= 1 or a.num_samples < 1 or a.max_new_tokens < 1:
        p.error("need temperature >= 0, 0 < top-p <= 1, num-samples >= 1, max-new-tokens >= 1")
    if a.output:  # before the model is loaded and anything sampled
        out = Path(a.output)
        if out.exists():
            print(f"rlhf generate: --output {out} exists; not overwriting it", file=sys.stderr)
            return 1
        if not out.parent.is_dir():
            print(f"rlhf generate: --output {out}: folder {out.parent} does not exist", file=sys.stderr)
            return 1

    from rlhf.data.config import DataConfig
    from rlhf.data.records import readable
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_causal_lm, load_tokenizer
    from rlhf.rollout.rows import generate

    mcfg = ModelConfig(name_or_path=a.model, dtype=a.dtype, trust_remote_code=a.trust_remote_code)
    tok = load_tokenizer(mcfg)
    model = load_causal_lm(mcfg, for_training=False)
    as_chat = not a.raw and (a.chat_template == "default"
                             or a.chat_template == "auto" and bool(getattr(tok, "chat_template", None)))
    print(rendering_line(as_chat, a.chat_template, any(isinstance(p, list) for p in prompts),
                         a.raw), file=sys.stderr)
    rows = generate(model, tok, prompts, data_cfg=DataConfig(chat_template=a.chat_template, text_as_chat=as_chat),
                    max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                    top_k=a.top_k, num_samples=a.num_samples, batch_size=a.batch_size, seed=a.seed,
                    engine=a.engine)
    for r in rows:
        r.pop("prompt_ids"), r.pop("completion_ids")
        print(f"### prompt: {readable(r['prompt'])!r}\n{r['completion']}\n")
    if a.output:
        from rlhf.train.run import write_jsonl_atomic
        write_jsonl_atomic(Path(a.output), rows)
        print(f"wrote {len(rows)} samples to {a.output}")
    return 0
