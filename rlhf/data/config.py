"""The ``data`` section of every stage's config: where the data is, its format, how to tokenize.

See docs/data-formats.md for the accepted formats and the tokenization rules these fields
control.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rlhf.config import ConfigError, opt

__all__ = ["DataConfig", "CANONICAL_FIELDS", "FORMATS"]

# The column names the converters read. ``DataConfig.columns`` maps these to the source's names.
CANONICAL_FIELDS = (
    "prompt", "completion", "messages", "chosen", "rejected", "margin",
    "responses", "scores", "ranks", "label", "system",
    "response_a", "response_b", "winner", "instruction", "input", "output",
)

Format = Literal["auto", "sft", "messages", "preference", "hh", "conversational_preference",
                 "ranked", "unpaired", "pairwise", "alpaca", "prompt"]
FORMATS: tuple[str, ...] = Format.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DataConfig:
    """Input data, its format, and tokenization (truncation, chat template, padding, packing)."""

    train: str = opt("", "training data: a .jsonl/.json/.parquet/.csv file (optionally .gz), a "
                         "datasets.save_to_disk folder, or a Hugging Face hub dataset id")
    train_split: str = opt("train", "split to read from a hub dataset or a saved DatasetDict")
    eval: str | None = opt(None, "evaluation data (same kinds of source as train); "
                                 "null: use eval_split or eval_fraction, or no evaluation")
    eval_split: str | None = opt(None, "split of the eval source (or of the train source when "
                                       "eval is null) to evaluate on")
    eval_fraction: float = opt(0.0, "fraction of the training rows held out for evaluation "
                                    "(shuffled with seed) when neither eval nor eval_split is set",
                               ge=0.0, lt=1.0)
    seed: int = opt(0, "seed for the eval_fraction split")
    format: Format = opt("auto", "input format; auto detects it from the column names")
    columns: dict[str, str] = opt(factory=dict, help="rename source columns to canonical fields, "
                                  "e.g. {prompt: question, completion: answer}")
    max_samples: int | None = opt(None, "use only the first N records of each split (debugging)",
                                  ge=1)
    max_length: int = opt(512, "maximum tokens per sequence (prompt + completion)", ge=2)
    max_prompt_length: int | None = opt(None, "maximum prompt tokens; null: the prompt may use "
                                              "what the completion leaves (see docs)", ge=1)
    prompt_truncation: Literal["left", "right"] = opt(
        "left", "which side of a too-long prompt is cut: left keeps the END of the prompt")
    completion_truncation: Literal["right", "left"] = opt(
        "right", "which side of a too-long completion is cut: right keeps the START")
    completion_only_loss: bool = opt(True, "train only on completion tokens (false: on every "
                                           "token but the first)")
    assistant_turns: Literal["last", "all"] = opt(
        "last", "chat conversations in SFT: last = train on the final assistant turn only (earlier "
                "ones are context); all = train on every assistant turn")
    packing: bool = opt(False, "pack several SFT examples into each row of max_length tokens")
    padding_side: Literal["right", "left"] = opt("right", "pad training batches on this side")
    chat_template: Literal["auto", "default", "none"] = opt(
        "auto", "for chat-message data: auto = the tokenizer's template if it has one, else the "
                "built-in default; default = always the built-in; none = plain text only")
    text_as_chat: bool = opt(False, "also render plain-text prompts as a user message (and the "
                                    "completion as the assistant reply) with the chat template")
    strict: bool = opt(False, "raise at the first bad row instead of skipping and reporting it; "
                              "also makes an unused label- or text-like column an error")
    max_skip_fraction: float = opt(0.01, "stop (error) when more than this fraction of a source's rows "
                                         "is skipped as bad; ties and rows left out on purpose do not "
                                         "count; 1 = never stop", ge=0.0, le=1.0)
    encoding: str = opt("utf-8", "text encoding of .jsonl/.json/.csv files (e.g. latin-1, cp1252)")
    prompt_template: str | None = opt(None, "build the prompt from several columns, e.g. "
                                            "'{instruction}\\n\\n{input}'; a paragraph whose fields "
                                            "are all empty is left out; null: the prompt column")
    message_keys: dict[str, str] = opt(factory=dict, help="keys of a chat message, e.g. {role: from, "
                                       "content: value}; default: role/content, or from/value "
                                       "(ShareGPT) when a message has those")
    roles: dict[str, str] = opt(factory=dict, help="role names -> chat roles, added to the defaults "
                                "{human: user, gpt: assistant, ...}, e.g. {bot: assistant}")
    winner_columns: list[str] = opt(factory=list, help="pairwise format: the column(s) saying which "
                                    "of response_a/response_b won; several = annotators' votes "
                                    "(majority, equal counts dropped as ties); default: winner")
    winner_values: dict[str, list[Any]] = opt(factory=dict, help="pairwise format: {a: [...], b: [...], "
                                              "tie: [...]}, the values meaning response_a won, "
                                              "response_b won, a tie; default: 1/2, A/B, ... (see docs)")
    ignore_columns: list[str] = opt(factory=list, help="source columns known to be unused: not "
                                    "reported as possibly-forgotten labels or text")
    sft_keep: Literal["refuse", "preferred", "all"] = opt(
        "refuse", "SFT on rows with a KTO or winner label: preferred = only the desirable / winning "
                  "completions, all = every completion; refuse (default) = stop and ask")
    add_eos: bool = opt(True, "end every completion with the tokenizer's EOS token")

    def validate(self) -> None:
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ConfigError("max_prompt_length", f"must be < max_length={self.max_length} so that "
                              f"the completion keeps at least one token (got {self.max_prompt_length})")
        if self.eval_fraction > 0 and (self.eval is not None or self.eval_split is not None):
            raise ConfigError("eval_fraction", "give either eval/eval_split or eval_fraction, not "
                              f"both (got eval_fraction={self.eval_fraction}, eval={self.eval!r}, "
                              f"eval_split={self.eval_split!r})")
        for canon, src in self.columns.items():
            if canon not in CANONICAL_FIELDS:
                raise ConfigError(f"columns.{canon}", "keys are canonical field names, values the "
                                  f"source's column names; allowed keys: {', '.join(CANONICAL_FIELDS)}")
            if not isinstance(src, str) or not src:
                raise ConfigError(f"columns.{canon}", f"must be a source column name (got {src!r})")
        for key in self.winner_values:
            if key not in ("a", "b", "tie"):
                raise ConfigError(f"winner_values.{key}", "keys are a, b and tie")
        for key, v in self.winner_values.items():
            if not isinstance(v, list):
                raise ConfigError(f"winner_values.{key}", f"must be a list of values (got {v!r})")
        for key in self.message_keys:
            if key not in ("role", "content"):
                raise ConfigError(f"message_keys.{key}", "keys are role and content")
        if self.prompt_template is not None:
            from rlhf.data.template import template_fields
            try:
                fields = template_fields(self.prompt_template)
            except ValueError as e:
                raise ConfigError("prompt_template", str(e)) from None
            if not fields:
                raise ConfigError("prompt_template", "needs at least one {column} field "
                                  f"(got {self.prompt_template!r})")
        import codecs
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError("encoding", f"unknown text encoding {self.encoding!r}") from None
        sources = list(self.columns.values())
        dup = {s for s in sources if sources.count(s) > 1}
        if dup:
            raise ConfigError("columns", f"one source column cannot feed two fields (got {sorted(dup)})")
