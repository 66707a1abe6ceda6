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
``unpaired``                     prompt, completion, label (or messages, label)  UnpairedRecord
``pairwise``                     prompt, response_a, response_b, winner column(s) PreferenceRecord
``alpaca``                       instruction [, input], output                   SFTRecord
``prompt``                       prompt                                          PromptRecord
================================ =============================================== ==================

Before conversion every row goes through :func:`prepare_row` (one place for what the
configuration says about all formats): chat messages in other key/role names (ShareGPT's
``{"from": "human", "value": ...}``) become ``{"role", "content"}``, a single message object
where a completion is expected becomes a one-message list, ``data.prompt_template`` builds the
prompt from several columns, and a ``system`` column becomes the first message of the prompt.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
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
    TIE_ROW,
    TOO_FEW_RESPONSES,
    WRONG_TYPE,
    BadRow,
    DataError,
    DropRow,
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

__all__ = ["CONVERTERS", "detect_format", "HH_ASSISTANT", "HH_HUMAN", "split_hh", "RowSpec", "prepare_row",
           "winner_key", "DEFAULT_ROLES", "DEFAULT_WINNER_VALUES", "FORMAT_FIELDS"]

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
    if data.get("prompt") is None and data.get("messages") is not None:
        data = {**data, "prompt": data["messages"]}  # ShareGPT: the conversation so far is the prompt
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
    if data.get("prompt") is None and data.get("messages") is not None:
        data = {**data, "prompt": data["messages"]}  # ShareGPT: the conversation so far is the prompt
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
    """prompt + completion + label, or a whole ``messages`` conversation + label (its last
    assistant turn is the completion, as in the ``messages`` format)."""
    if data.get("prompt") is None and data.get("completion") is None and data.get("messages") is not None:
        sft = convert_messages(data, notes)
        prompt, completion = sft.prompt, sft.completion
    else:
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



# --------------------------------------------------------------------------- row preparation

# The roles chat templates know; any other role must be mapped to one (data.roles).
CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})
# Role names used by published chat data -> the roles chat templates know.
DEFAULT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "bing": "assistant", "bard": "assistant", "model": "assistant", "bot": "assistant", "system": "system",
}
# Pairwise winner values (compared as winner_key: case-insensitive text, 1 == "1" == 1.0).
# true/false and 0 are left out on purpose: whether true means "a" or 0 means "a" differs between
# datasets, so those need data.winner_values.
DEFAULT_WINNER_VALUES: dict[str, tuple[Any, ...]] = {
    "a": (1, "a", "response_a", "response1", "response_1", "model_a", "first"),
    "b": (2, "b", "response_b", "response2", "response_2", "model_b", "second"),
    "tie": ("tie", "tie (bothbad)", "draw", "equal", "same", "both", "neither"),
}
_MESSAGE_FIELDS = ("messages", "prompt", "chosen", "rejected", "completion", "response_a", "response_b")
# The canonical fields each format reads (the rest of a row is reported when it looks used).
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "completion", "system"),
    "messages": ("messages", "system"),
    "preference": ("prompt", "messages", "chosen", "rejected", "margin", "system"),
    "hh": ("chosen", "rejected", "margin"),
    "conversational_preference": ("prompt", "chosen", "rejected", "margin", "system"),
    "ranked": ("prompt", "responses", "scores", "ranks", "system"),
    "unpaired": ("prompt", "completion", "messages", "label", "system"),
    "pairwise": ("prompt", "messages", "response_a", "response_b", "winner", "margin", "system"),
    "alpaca": ("instruction", "input", "output", "system"),
    "prompt": ("prompt", "system"),
}


def winner_key(v: Any) -> str | None:
    """One spelling per winner value: True -> "true", 1 / 1.0 / "1" -> "1", " A " -> "a"."""
    if v is None or isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)) and float(v).is_integer():
        return str(int(v))
    return str(v).strip().lower()


@dataclass(frozen=True)
class RowSpec:
    """What the configuration says about every row (built once per source by the loader)."""

    role_key: str | None = None  # None: "role", or "from" when a message has no "role"
    content_key: str | None = None  # None: "content", or "value"
    roles: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLES))
    template: str | None = None
    renamed: dict[str, str] = field(default_factory=dict)  # source column -> canonical field
    winner_columns: tuple[str, ...] = ("winner",)
    winner_values: dict[str, str] = field(default_factory=dict)  # winner_key -> "a" | "b" | "tie"

    @classmethod
    def from_config(cls, cfg: Any, fmt: str, renamed: dict[str, str] | None = None) -> RowSpec:
        from rlhf.data.template import ALPACA_TEMPLATE

        values: dict[str, str] = {}
        given = cfg.winner_values or DEFAULT_WINNER_VALUES
        for side, vals in given.items():
            for v in vals:
                values[winner_key(v) or ""] = side
        template = cfg.prompt_template or (ALPACA_TEMPLATE if fmt == "alpaca" else None)
        return cls(role_key=cfg.message_keys.get("role"), content_key=cfg.message_keys.get("content"),
                   roles={**DEFAULT_ROLES, **{k.lower(): v for k, v in cfg.roles.items()}}, template=template,
                   renamed=dict(renamed or {}), winner_columns=tuple(cfg.winner_columns) or ("winner",),
                   winner_values=values)

    def message(self, m: Any, name: str) -> Any:
        """One chat message in {"role", "content"} form (anything else is left for the
        converter to reject with its field name)."""
        if not isinstance(m, dict):
            return m
        rk = self.role_key or ("role" if "role" in m or "from" not in m else "from")
        ck = self.content_key or ("content" if "content" in m or "value" not in m else "value")
        if rk == "role" and ck == "content" and m.get("role") in self.roles.values():
            return m
        if rk not in m or ck not in m:
            return m  # the converter says which key is missing
        role = m[rk]
        out = {k: v for k, v in m.items() if k not in (rk, ck)}
        out["role"] = self.roles.get(role.lower(), role) if isinstance(role, str) else role
        if isinstance(role, str) and out["role"] not in CHAT_ROLES and out["role"] not in self.roles.values():
            # A role the mapping does not know (ShareGPT's function_call/observation, a typo) would
            # reach the chat template as is: refuse the row, saying how to map it.
            raise BadRow(BAD_MESSAGES, name, f"messages whose roles data.roles maps to chat roles (got role "
                         f"{role!r}; map it, e.g. data.roles={{{role}: user}}, or fix the data)")
        out["content"] = m[ck]
        return out

    def lookup(self, data: dict, column: str) -> Any:
        """A column's value by its source name (or canonical name, if it was renamed)."""
        if column in data:
            return data[column]
        return data.get(self.renamed.get(column, column))


def _is_message(v: Any) -> bool:
    return isinstance(v, dict) and bool({"role", "from", "content", "value"} & set(v))


def prepare_row(data: dict, spec: RowSpec, fmt: str) -> dict:
    """The row as the converters expect it (see the module doc); raises :class:`BadRow`."""
    from rlhf.data.template import render_template

    out = dict(data)
    for name in _MESSAGE_FIELDS:
        v = out.get(name)
        if _is_message(v):  # a single message object, e.g. ShareGPT's chosen/rejected
            v = [v]
        if isinstance(v, list):
            v = [spec.message(m, name) for m in v]
        if v is not None:
            out[name] = v
    if isinstance(out.get("responses"), list):
        out["responses"] = [[spec.message(m, "responses") for m in r] if isinstance(r, list)
                            else [spec.message(r, "responses")] if _is_message(r) else r
                            for r in out["responses"]]
    for a, b in (("chosen", "rejected"), ("rejected", "chosen"), ("response_a", "response_b"),
                 ("response_b", "response_a")):
        if isinstance(out.get(a), str) and isinstance(out.get(b), list):  # one side a message, one text
            out[a] = [{"role": "assistant", "content": out[a]}]
    if spec.template is not None:
        view = {**{src: out.get(canon) for src, canon in spec.renamed.items()}, **out}
        out["prompt"] = render_template(spec.template, view)
    if fmt == "alpaca":
        out["completion"] = out.get("output")
    system = out.get("system")
    if isinstance(system, str) and system.strip():
        key = "messages" if fmt in ("messages",) or (out.get("prompt") is None and out.get("messages") is not None) \
            else "prompt"
        p = out.get(key)
        if isinstance(p, str):
            p = [{"role": "user", "content": p}]
        if isinstance(p, list) and not (p and isinstance(p[0], dict) and p[0].get("role") == "system"):
            out[key] = [{"role": "system", "content": system}, *p]
    return out


# --------------------------------------------------------------------------- label columns


def _vote(v: Any, column: str, spec: RowSpec) -> str | None:
    k = winner_key(v)
    if k is None:
        return None
    side = spec.winner_values.get(k)
    if side is None:
        known = ", ".join(repr(x) for x in sorted(spec.winner_values))
        raise BadRow(BAD_LABEL, column, f"a winner value: one of {known} (got {v!r}); set "
                     "data.winner_values {a: [...], b: [...], tie: [...]} to say what the values mean")
    return side


def convert_pairwise(data: dict, notes: list[str], spec: RowSpec) -> PreferenceRecord:
    """Two responses and the column(s) saying which won. One column: its value; several
    (annotators): the response with more votes, equal counts (tie votes included) are a tie.
    A tie carries no preference: the row is dropped and counted (reason ``tie (row dropped)``)."""
    votes = []
    for col in spec.winner_columns:
        side = _vote(spec.lookup(data, col), col, spec)
        if side is not None:
            votes.append(side)
    if not votes:
        raise BadRow(MISSING, spec.winner_columns[0], "which response won (the winner column(s) "
                     f"{list(spec.winner_columns)} are all empty)")
    a, b = votes.count("a"), votes.count("b")
    if a == b:
        raise DropRow(TIE_ROW)
    chosen, rejected = ("response_a", "response_b") if a > b else ("response_b", "response_a")
    row = {"prompt": data.get("prompt") if data.get("prompt") is not None else data.get("messages"),
           "chosen": data.get(chosen), "rejected": data.get(rejected), "margin": data.get("margin")}
    for src, dst in ((chosen, "chosen"), (rejected, "rejected")):
        if row[dst] is None:
            raise BadRow(MISSING, src, f"{TEXT_OR_MESSAGES} (the field is missing)")
    try:
        return convert_preference(row, notes)
    except BadRow as bad:  # name the source's field, not the one it was moved to
        if bad.field.startswith(("chosen", "rejected")):
            src = chosen if bad.field.startswith("chosen") else rejected
            bad.field = src + bad.field[len("chosen" if bad.field.startswith("chosen") else "rejected"):]
        raise


def convert_alpaca(data: dict, notes: list[str]) -> SFTRecord:
    """instruction [+ input] -> prompt (by the template, see :func:`prepare_row`), output -> completion."""
    if data.get("prompt") is None:
        raise BadRow(MISSING, "instruction", f"{TEXT} (the field is missing)")
    try:
        return SFTRecord(_text_or_messages(data, "prompt"), _completion(data, "completion"))
    except BadRow as bad:
        if bad.field == "completion":
            bad.field = "output"
        raise

CONVERTERS: dict[str, Callable[..., Any]] = {
    "sft": convert_sft,
    "messages": convert_messages,
    "preference": convert_preference,
    "hh": convert_hh,
    "conversational_preference": convert_conversational_preference,
    "ranked": convert_ranked,
    "unpaired": convert_unpaired,
    "pairwise": convert_pairwise,  # also takes the RowSpec (the winner columns and values)
    "alpaca": convert_alpaca,
    "prompt": convert_prompt,
}


# --------------------------------------------------------------------------- detection


def detect_format(rows: list, source: str, extra: tuple[str, ...] = ()) -> str:
    """The format implied by the column names (after renames) present in any row.

    Checked in this order: ``chosen``+``rejected`` (message lists -> conversational_preference;
    text with a ``prompt`` or ``messages`` -> preference; text alone -> hh);
    ``response_a``+``response_b`` -> pairwise; ``messages``+``label`` -> unpaired;
    ``messages``; ``responses`` -> ranked; ``completion``+``label`` -> unpaired;
    ``instruction``+``output`` -> alpaca; ``prompt``+``completion`` -> sft; ``prompt`` -> prompt.
    ``extra`` names fields that will exist after preparation (``prompt`` with a prompt template).
    """
    cols: set[str] = set(extra)
    for r in rows:
        cols.update(k for k, v in r.data.items() if v is not None)
    if {"chosen", "rejected"} <= cols:
        sample = next(r.data["chosen"] for r in rows if r.data.get("chosen") is not None)
        if isinstance(sample, list):
            return "conversational_preference"
        return "preference" if {"prompt", "messages"} & cols or isinstance(sample, (list, dict)) else "hh"
    if {"response_a", "response_b"} <= cols:
        return "pairwise"
    if {"messages", "label"} <= cols:
        return "unpaired"
    if "messages" in cols:
        return "messages"
    if "responses" in cols:
        return "ranked"
    if {"completion", "label"} <= cols:
        return "unpaired"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "completion"} <= cols:
        return "sft"
    if "prompt" in cols:
        return "prompt"
    if not rows:
        raise DataError(source, None, "rows", "at least one row (the source is empty)")
    raise DataError(source, None, "columns", f"columns that name a format (got {sorted(cols)}); "
                    "expected e.g. prompt+completion, messages, prompt+chosen+rejected, "
                    "chosen+rejected (HH), prompt+responses+scores, prompt+completion+label, "
                    "response_a+response_b+winner, instruction+output or prompt; rename columns "
                    "with data.columns or set data.format")
