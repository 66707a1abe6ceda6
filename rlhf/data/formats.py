"""Converters from the common public row formats to canonical records, and format detection.

Each converter takes one row's dict (columns already renamed to canonical names) and returns
its *native* record, or raises :class:`BadRow` naming the field and what was expected. It may
append note reasons to ``notes`` for rows that are kept but unusual. The formats
(docs/data-formats.md has an example of each):

================================ =============================================== ==================
format                           columns                                         native record
================================ =============================================== ==================
``sft``                          prompt, completion (text or messages)           SFTRecord
``messages``                     messages (chat; last assistant turn = target)   SFTRecord
``preference``                   prompt, chosen, rejected [, margin]             PreferenceRecord
``hh``                           chosen, rejected (whole HH-RLHF dialogues)      PreferenceRecord
``conversational_preference``    chosen, rejected message lists [, prompt]       PreferenceRecord
``ranked``                       prompt, responses, scores or ranks              RankedRecord
``unpaired``                     prompt, completion, label                       UnpairedRecord
``prompt``                       prompt                                          PromptRecord
================================ =============================================== ==================
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from rlhf.data.errors import (
    BAD_LABEL,
    BAD_MESSAGES,
    CONTINUES,
    EMPTY,
    EMPTY_COMPLETION,
    IDENTICAL,
    LENGTH_MISMATCH,
    MISSING,
    NAN_MARGIN,
    NAN_SCORE,
    NO_COMMON_PREFIX,
    TOO_FEW_RESPONSES,
    WRONG_TYPE,
    BadRow,
    DataError,
)
from rlhf.data.records import (
    Message,
    PreferenceRecord,
    PromptRecord,
    RankedRecord,
    SFTRecord,
    Text,
    UnpairedRecord,
)

__all__ = ["CONVERTERS", "detect_format", "HH_ASSISTANT", "HH_HUMAN", "split_hh"]

HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"

TEXT = "a non-empty string"
TEXT_OR_MESSAGES = "a non-empty string or list of chat messages"


# --------------------------------------------------------------------------- field helpers


def _type(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _get(data: dict, name: str, expected: str) -> Any:
    v = data.get(name)
    if v is None or (isinstance(v, float) and math.isnan(v)):  # pandas writes NaN for "no value"
        raise BadRow(MISSING, name, f"{expected} (the field is missing)")
    return v


def _text(data: dict, name: str) -> str:
    v = _get(data, name, TEXT)
    if not isinstance(v, str):
        raise BadRow(WRONG_TYPE, name, f"{TEXT} (got {_type(v)})")
    if not v.strip():
        raise BadRow(EMPTY, name, f"{TEXT} (got an empty string)")
    return v


def _messages(v: Any, name: str) -> list[Message]:
    """Check a chat message list: a non-empty list of {role: str, content: str} dicts."""
    if not isinstance(v, list):
        raise BadRow(WRONG_TYPE, name, f"a list of chat messages (got {_type(v)})")
    if not v:
        raise BadRow(EMPTY, name, "a non-empty list of chat messages (got [])")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRow(BAD_MESSAGES, f"{name}[{i}]",
                         f'a message {{"role": str, "content": str}} (got {json.dumps(m, default=str)[:80]})')
        # Arrow-backed sources (parquet, datasets) give every message every key seen in the
        # column, None where absent; drop those so a template's "is defined" tests still work.
        out.append({k: x for k, x in m.items() if x is not None})
    return out


def _text_or_messages(data: dict, name: str) -> Text:
    v = _get(data, name, TEXT_OR_MESSAGES)
    if isinstance(v, str):
        if not v.strip():
            raise BadRow(EMPTY, name, f"{TEXT_OR_MESSAGES} (got an empty string)")
        return v
    if isinstance(v, list):
        return _messages(v, name)
    raise BadRow(WRONG_TYPE, name, f"{TEXT_OR_MESSAGES} (got {_type(v)})")


def _completion_messages(msgs: list[Message], name: str) -> list[Message]:
    """A completion given as messages must be assistant turn(s) with non-empty content."""
    if msgs[0]["role"] != "assistant":
        raise BadRow(BAD_MESSAGES, name, f"messages starting with an assistant turn (got role {msgs[0]['role']!r})")
    if not msgs[-1]["content"].strip():
        raise BadRow(EMPTY_COMPLETION, name, "a non-empty last assistant message")
    return msgs


def _completion(data: dict, name: str) -> Text:
    v = _text_or_messages(data, name)
    return _completion_messages(v, name) if isinstance(v, list) else v


def _number(v: Any, name: str, nan_reason: str) -> float:
    if isinstance(v, bool):
        raise BadRow(WRONG_TYPE, name, f"a number (got {v!r})")
    if isinstance(v, str):  # CSV cell
        try:
            v = float(v)
        except ValueError:
            raise BadRow(WRONG_TYPE, name, f"a number (got {v!r})") from None
    if not isinstance(v, (int, float)):
        raise BadRow(WRONG_TYPE, name, f"a number (got {_type(v)})")
    v = float(v)
    if math.isnan(v):
        raise BadRow(nan_reason, name, "a number (got NaN)")
    return v


def _margin(data: dict) -> float | str | None:
    """A number, or a text rating label ("significantly better", Llama 2's scale) kept as text
    for ``loss.margin: mapping`` to translate; a blank cell is no margin."""
    v = data.get("margin")
    if v is None or isinstance(v, str) and not v.strip():
        return None
    if isinstance(v, str):
        try:
            float(v)
        except ValueError:
            return v.strip()
    return _number(v, "margin", NAN_MARGIN)


def _same(a: Text, b: Text) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return a == b


# --------------------------------------------------------------------------- converters


def convert_sft(data: dict, notes: list[str]) -> SFTRecord:
    return SFTRecord(_text_or_messages(data, "prompt"), _completion(data, "completion"))


def convert_messages(data: dict, notes: list[str]) -> SFTRecord:
    """Chat ``messages``: the last assistant turn is the completion, everything before it the
    prompt (earlier assistant turns are context, not targets)."""
    msgs = _messages(_get(data, "messages", "a list of chat messages"), "messages")
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        raise BadRow(BAD_MESSAGES, "messages", "a conversation with an assistant turn (got roles "
                     f"{[m['role'] for m in msgs]})")
    if last != len(msgs) - 1:
        raise BadRow(BAD_MESSAGES, "messages", "a conversation that ends with an assistant turn "
                     f"(got trailing role {msgs[-1]['role']!r})")
    if last == 0:
        raise BadRow(EMPTY, "messages", "at least one message (the prompt) before the assistant turn")
    if not msgs[last]["content"].strip():
        raise BadRow(EMPTY_COMPLETION, f"messages[{last}]", "a non-empty assistant message")
    return SFTRecord(msgs[:last], [msgs[last]])


def convert_preference(data: dict, notes: list[str]) -> PreferenceRecord:
    """prompt/chosen/rejected. Message-list chosen/rejected go through the conversational rule."""
    chosen, rejected = data.get("chosen"), data.get("rejected")
    if isinstance(chosen, list) or isinstance(rejected, list):
        return convert_conversational_preference(data, notes)
    prompt = _text_or_messages(data, "prompt")
    chosen = _text(data, "chosen")
    rejected = _text(data, "rejected")
    if _same(chosen, rejected):
        raise BadRow(IDENTICAL, "rejected", "a completion different from chosen (got the same text)")
    return PreferenceRecord(prompt, chosen, rejected, _margin(data))


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two whole HH-RLHF dialogues into (prompt, chosen completion, rejected completion).

    The prompt is their common prefix up to and including its last ``"\\n\\nAssistant:"``; the
    completions are what follows (with their leading space, so ``prompt + completion`` is the
    original dialogue). Raises :class:`BadRow` when there is no such prefix or a completion is
    empty; never guesses another split.
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(HH_ASSISTANT, 0, n)
    # rfind(sub, 0, n) only finds occurrences that END within the prefix: the whole marker is shared.
    if cut < 0:
        raise BadRow(NO_COMMON_PREFIX, "chosen", 'chosen and rejected to share a prompt ending in '
                     '"\\n\\nAssistant:" (they have no such common prefix)')
    end = cut + len(HH_ASSISTANT)
    prompt, c, r = chosen[:end], chosen[end:], rejected[end:]
    for name, text in (("chosen", c), ("rejected", r)):
        if not text.strip():
            raise BadRow(EMPTY_COMPLETION, name, 'a non-empty reply after the last common '
                         '"\\n\\nAssistant:" (got an empty one)')
    return prompt, c, r


def convert_hh(data: dict, notes: list[str]) -> PreferenceRecord:
    chosen = _text(data, "chosen")
    rejected = _text(data, "rejected")
    if _same(chosen, rejected):
        raise BadRow(IDENTICAL, "rejected", "a dialogue different from chosen (got the same text)")
    prompt, c, r = split_hh(chosen, rejected)
    if any(m in t for t in (c, r) for m in (HH_HUMAN, HH_ASSISTANT)):
        # The two dialogues diverge before their last turn (or one runs on): the split is still
        # the rule's, but the completion holds more than one reply.
        notes.append(CONTINUES)
    return PreferenceRecord(prompt, c, r, _margin(data))


def convert_conversational_preference(data: dict, notes: list[str]) -> PreferenceRecord:
    """chosen/rejected message lists, either whole conversations sharing the prompt turns
    (UltraFeedback style; the optional prompt column is then ignored) or assistant replies to a
    separate ``prompt`` column (TRL style).

    The prompt is the longest common message prefix, shortened so that both completions start
    with an assistant turn.
    """
    chosen = _messages(_get(data, "chosen", "a list of chat messages"), "chosen")
    rejected = _messages(_get(data, "rejected", "a list of chat messages"), "rejected")
    if chosen == rejected:
        raise BadRow(IDENTICAL, "rejected", "a conversation different from chosen (got the same messages)")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == 0:
        if data.get("prompt") is None:
            raise BadRow(NO_COMMON_PREFIX, "chosen", "chosen and rejected to share the prompt messages, "
                         "or a prompt column (they share no message and there is no prompt)")
        prompt = _text_or_messages(data, "prompt")
        c, r = chosen, rejected
    else:
        if k == len(chosen) or k == len(rejected):
            name = "chosen" if k == len(chosen) else "rejected"
            raise BadRow(EMPTY_COMPLETION, name, "a reply after the shared prompt messages (got none)")
        j = k
        while j > 0 and not (chosen[j]["role"] == "assistant" and rejected[j]["role"] == "assistant"):
            j -= 1
        if j == 0:
            raise BadRow(NO_COMMON_PREFIX, "chosen", "chosen and rejected to share the prompt up to an "
                         "assistant turn (they diverge before any assistant turn)")
        if j < k or len(chosen) - j > 1 or len(rejected) - j > 1:
            notes.append(CONTINUES)
        prompt, c, r = chosen[:j], chosen[j:], rejected[j:]
    c = _completion_messages(c, "chosen")
    r = _completion_messages(r, "rejected")
    return PreferenceRecord(prompt, c, r, _margin(data))


def convert_ranked(data: dict, notes: list[str]) -> RankedRecord:
    prompt = _text_or_messages(data, "prompt")
    raw = _get(data, "responses", "a list of at least 2 responses")
    if not isinstance(raw, list):
        raise BadRow(WRONG_TYPE, "responses", f"a list of at least 2 responses (got {_type(raw)})")
    if len(raw) < 2:
        raise BadRow(TOO_FEW_RESPONSES, "responses", f"a list of at least 2 responses (got {len(raw)})")
    responses: list[Text] = []
    for i, resp in enumerate(raw):
        name = f"responses[{i}]"
        if isinstance(resp, str):
            if not resp.strip():
                raise BadRow(EMPTY, name, f"{TEXT} (got an empty string)")
            responses.append(resp)
        else:
            responses.append(_completion_messages(_messages(resp, name), name))
    key = "scores" if data.get("scores") is not None else "ranks"
    vals = data.get(key)
    if vals is None:
        raise BadRow(MISSING, "scores", "a list of scores (higher is better) or ranks (1 is best) "
                     "(neither field is present)")
    if not isinstance(vals, list):
        raise BadRow(WRONG_TYPE, key, f"a list of numbers (got {_type(vals)})")
    if len(vals) != len(responses):
        raise BadRow(LENGTH_MISMATCH, key, f"one number per response ({len(responses)}) (got {len(vals)})")
    nums = [_number(v, f"{key}[{i}]", NAN_SCORE) for i, v in enumerate(vals)]
    return RankedRecord(prompt, responses, nums if key == "scores" else None, nums if key == "ranks" else None)


_TRUE = {"true", "1", "yes", "1.0"}
_FALSE = {"false", "0", "no", "0.0"}


def convert_unpaired(data: dict, notes: list[str]) -> UnpairedRecord:
    prompt = _text_or_messages(data, "prompt")
    completion = _completion(data, "completion")
    v = _get(data, "label", "true (desirable) or false (undesirable)")
    if isinstance(v, bool):
        label = v
    elif isinstance(v, (int, float)) and v in (0, 1):
        label = bool(v)
    elif isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        label = v.strip().lower() in _TRUE
    else:
        raise BadRow(BAD_LABEL, "label", f"true (desirable) or false (undesirable) (got {v!r})")
    return UnpairedRecord(prompt, completion, label)


def convert_prompt(data: dict, notes: list[str]) -> PromptRecord:
    return PromptRecord(_text_or_messages(data, "prompt"))


CONVERTERS: dict[str, Callable[[dict, list[str]], Any]] = {
    "sft": convert_sft,
    "messages": convert_messages,
    "preference": convert_preference,
    "hh": convert_hh,
    "conversational_preference": convert_conversational_preference,
    "ranked": convert_ranked,
    "unpaired": convert_unpaired,
    "prompt": convert_prompt,
}


# --------------------------------------------------------------------------- detection


def detect_format(rows: list, source: str) -> str:
    """The format implied by the column names (after renames) present in any row.

    Checked in this order: ``messages``; ``chosen``+``rejected`` (message lists ->
    conversational_preference, text with a ``prompt`` -> preference, text without -> hh);
    ``responses`` -> ranked; ``completion``+``label`` -> unpaired; ``prompt``+``completion`` ->
    sft; ``prompt`` -> prompt.
    """
    cols: set[str] = set()
    for r in rows:
        cols.update(k for k, v in r.data.items() if v is not None)
    if "messages" in cols:
        return "messages"
    if {"chosen", "rejected"} <= cols:
        sample = next(r.data["chosen"] for r in rows if r.data.get("chosen") is not None)
        if isinstance(sample, list):
            return "conversational_preference"
        return "preference" if "prompt" in cols else "hh"
    if "responses" in cols:
        return "ranked"
    if {"completion", "label"} <= cols:
        return "unpaired"
    if {"prompt", "completion"} <= cols:
        return "sft"
    if "prompt" in cols:
        return "prompt"
    if not rows:
        raise DataError(source, None, "rows", "at least one row (the source is empty)")
    raise DataError(source, None, "columns", f"columns that name a format (got {sorted(cols)}); "
                    "expected e.g. prompt+completion, messages, prompt+chosen+rejected, "
                    "chosen+rejected (HH), prompt+responses+scores, prompt+completion+label or "
                    "prompt; rename columns with data.columns or set data.format")
